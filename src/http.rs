//! The operator's one HTTP client, for registries and the GitHub API: built
//! once by [`crate::operator::start`] into the [`crate::context::Context`],
//! shared by cheap clones (one connection pool, one TLS setup). What differs
//! per caller (timeouts, where credentials may go) is set per request.

use std::time::Duration;

/// Redirects followed per request. Registries rarely redirect a manifest
/// request, GitHub a renamed repository once; a longer chain is refused.
pub const MAX_REDIRECTS: usize = 3;

/// Time to open a connection; each request also sets its own overall timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the client; fails only when the TLS backend cannot be initialised.
pub fn build_client() -> reqwest::Result<reqwest::Client> {
    // reqwest drops the Authorization header on a redirect to another host or
    // port; the policy bounds the chain and refuses a downgrade from https to
    // plain http (but to loopback).
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().last().is_some_and(|previous| previous.scheme() == "https")
            && !crate::registry::may_carry_credentials(attempt.url());
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if downgrade {
            attempt.error("a redirect from https to plain http")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .user_agent(concat!("redeploy-operator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(redirects)
        .build()
}
