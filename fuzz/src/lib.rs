//! What the fuzz targets share: the library's public entry points they call,
//! named here once (a rename in the library touches this file only), how a
//! fuzz input becomes a hook call, and the invariants every target checks.
//!
//! No panic is the baseline; each check below is a promise of the code under
//! test (its docs or the schema of what it feeds), cheap enough to run on
//! every input.

use http::{HeaderMap, HeaderName, HeaderValue};

pub use redeploy_operator::api::Provider;
pub use redeploy_operator::build::{buildkit_remote, parse_termination_message};
pub use redeploy_operator::hook::event::{EventKind, HookEvent};
pub use redeploy_operator::hook::providers::parse as parse_hook;
pub use redeploy_operator::plan::Modifiers;
pub use redeploy_operator::repo::RepoId;

// ---- hook bodies ----

/// One way a provider calls the hook: the provider its headers name, and the
/// headers. `None` for the providers recognised by the body's shape.
pub type Call = (Option<Provider>, &'static [(&'static str, &'static str)]);

/// Fuzzes one provider's parser: the input's first byte picks one of `calls`
/// (low 7 bits) and whether the body is sent as a form (high bit); the rest
/// is the body.
pub fn fuzz_provider(calls: &[Call], data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (provider, pairs) = calls[usize::from(selector & 0x7f) % calls.len()];
    let mut headers = header_map(pairs.iter().map(|(name, value)| (name.as_bytes(), value.as_bytes())));
    let content_type = if selector & 0x80 == 0 { "application/json" } else { "application/x-www-form-urlencoded" };
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let event = check_hook_call(&headers, body);
    if let Some(event) = event {
        match provider {
            // A header names the provider; a body without a payload is an empty call.
            Some(named) => assert!(
                event.provider == named || event.provider == Provider::Empty,
                "headers name {named:?}, the event says {:?}",
                event.provider
            ),
            // Only headers name these.
            None => assert!(
                !matches!(
                    event.provider,
                    Provider::GitHub | Provider::Gitea | Provider::Forgejo | Provider::Gogs | Provider::Manual
                ),
                "a call without provider headers was read as {:?}",
                event.provider
            ),
        }
    }
}

/// Fuzzes the headers too: the input is `Name: value` lines, an empty line,
/// then the body (as an HTTP request writes them). Lines that are not a valid
/// header are skipped.
pub fn fuzz_any_headers(data: &[u8]) {
    let (head, body) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let pairs = head.split(|&b| b == b'\n').filter_map(|line| {
        let at = line.iter().position(|&b| b == b':')?;
        Some((&line[..at], line[at + 1..].trim_ascii_start()))
    });
    check_hook_call(&header_map(pairs), body);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn header_map<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// Parses a hook call and checks what every parsed event promises; the event, if any.
pub fn check_hook_call(headers: &HeaderMap, body: &[u8]) -> Option<HookEvent> {
    let first = parse_hook(headers, body);
    let again = parse_hook(headers, body);
    match (first, again) {
        (Ok(event), Ok(again)) => {
            assert_eq!(event, again, "parsing is deterministic");
            check_event(&event);
            Some(event)
        }
        (Err(error), Err(again)) => {
            let message = error.to_string();
            assert_eq!(message, again.to_string(), "parsing is deterministic");
            assert!(!message.trim().is_empty(), "a refusal says why");
            None
        }
        (first, again) => panic!("parsing is deterministic: {first:?} then {again:?}"),
    }
}

/// What a Redeployment records of an event fits its schema (`trigger.event`
/// at most 128 characters, `deliveryId` and `sender` at most 256), and the
/// Git information planning compares is never blank.
pub fn check_event(event: &HookEvent) {
    let chars = |s: &str| s.chars().count();
    assert!(chars(&event.event) <= 128, "event name of {} characters", chars(&event.event));
    if let Some(id) = &event.delivery_id {
        assert!(chars(id) <= 256, "delivery id of {} characters", chars(id));
        assert!(!id.trim().is_empty(), "blank delivery id");
    }
    if let Some(sender) = &event.sender {
        assert!(chars(sender) <= 256, "sender of {} characters", chars(sender));
    }
    assert_eq!(event.git_info().is_some(), event.has_git_info());
    for (what, value) in [("branch", &event.branch), ("tag", &event.tag), ("sha", &event.sha)] {
        if let Some(value) = value {
            assert_trimmed(what, value);
        }
    }
    for url in &event.repository_urls {
        assert_trimmed("repository URL", url);
    }
}

fn assert_trimmed(what: &str, value: &str) {
    assert!(!value.is_empty() && value.trim() == value, "{what} {value:?} is blank or not trimmed");
}

// ---- the other parsers ----

/// Splits an input at its first `separator`: two strings, lossily decoded.
pub fn two_strings(data: &[u8], separator: u8) -> (String, Option<String>) {
    match data.iter().position(|&b| b == separator) {
        Some(at) => (
            String::from_utf8_lossy(&data[..at]).into_owned(),
            Some(String::from_utf8_lossy(&data[at + 1..]).into_owned()),
        ),
        None => (String::from_utf8_lossy(data).into_owned(), None),
    }
}

/// The hook's modifiers, from the query string and the form body.
pub fn parse_modifiers(query: Option<&str>, body: Option<&[u8]>) -> Result<Modifiers, String> {
    Modifiers::parse(query, body).map_err(|error| error.to_string())
}
