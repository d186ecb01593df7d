//! Repository URL matching: every spelling of one repository compares equal.
