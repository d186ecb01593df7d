//! Pure planning: which Services a hook call redeploys, and how.
