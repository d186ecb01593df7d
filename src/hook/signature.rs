//! Signatures beyond the URL token: HMAC over the exact body bytes, or a shared token.
