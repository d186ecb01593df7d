//! The hook's modifiers (`services=`, `deployment_profile=`, `git_ref=`) from a
//! query string and a form body: the input is the query, a NUL byte, then the
//! body (no NUL: a query only).
#![no_main]

use fuzz_support::{Modifiers, parse_modifiers, two_strings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (query, body) = two_strings(data, 0);
    let body = body.as_deref().map(str::as_bytes);
    let query = Some(query.as_str());
    let parsed = parse_modifiers(query, body);
    assert_eq!(parsed, parse_modifiers(query, body), "parsing is deterministic");
    let modifiers = match parsed {
        Ok(modifiers) => modifiers,
        Err(message) => {
            assert!(!message.trim().is_empty(), "a refusal says why");
            return;
        }
    };
    check(&modifiers);

    // A leading `?` is not part of the query.
    if let Some(query) = query.filter(|q| !q.starts_with('?')) {
        assert_eq!(
            parse_modifiers(Some(&format!("?{query}")), body),
            Ok(modifiers.clone()),
            "a leading ? changes nothing"
        );
    }
    // The body contributes only git_ref, and only when the query has none.
    if let Ok(from_query) = parse_modifiers(query, None) {
        assert_eq!(modifiers.services, from_query.services, "services= comes from the query only");
        assert_eq!(modifiers.profile, from_query.profile, "deployment_profile= comes from the query only");
        if from_query.git_ref.is_some() {
            assert_eq!(modifiers.git_ref, from_query.git_ref, "the query's git_ref wins");
        } else if let Ok(from_body) = parse_modifiers(None, body) {
            assert_eq!(modifiers.git_ref, from_body.git_ref, "the body's git_ref when the query has none");
        }
    }
});

/// Values are trimmed and never empty; `services` are single names without repeats.
fn check(modifiers: &Modifiers) {
    for (i, name) in modifiers.services.iter().enumerate() {
        assert!(!name.is_empty() && name.trim() == name && !name.contains(','), "service name {name:?}");
        assert!(!modifiers.services[..i].contains(name), "{name:?} listed twice");
    }
    for value in [&modifiers.profile, &modifiers.git_ref].into_iter().flatten() {
        assert!(!value.is_empty() && value.trim() == value, "modifier value {value:?}");
    }
}
