//! Tests of [`parse`](super::parse) that are about no single provider, and
//! helpers the provider tests share.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{ParseError, parse};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};

/// A header map from `(name, value)` pairs.
pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
        headers.append(name, HeaderValue::from_str(value).expect("test header value"));
    }
    headers
}

/// Parses a body that must parse, reporting the error otherwise.
pub(super) fn parse_ok(headers: &HeaderMap, body: &[u8]) -> HookEvent {
    match parse(headers, body) {
        Ok(event) => event,
        Err(error) => panic!("parse failed: {error}"),
    }
}

fn json() -> HeaderMap {
    headers(&[("Content-Type", "application/json")])
}

fn form() -> HeaderMap {
    headers(&[("Content-Type", "application/x-www-form-urlencoded")])
}

fn is_empty_call(event: &HookEvent) -> bool {
    event.provider == Provider::Empty && event.kind == EventKind::NoGitInfo && !event.has_git_info()
}

/// Every fixture has a test that parses it; a new fixture needs one too.
#[test]
fn every_fixture_has_a_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    let mut found = Vec::new();
    for folder in std::fs::read_dir(&root).expect("fixtures folder") {
        let folder = folder.expect("fixtures folder entry").path();
        for file in std::fs::read_dir(&folder).expect("fixture folder") {
            let file = file.expect("fixture file").path();
            let relative = file.strip_prefix(&root).expect("under the fixtures folder");
            found.push(relative.to_string_lossy().into_owned());
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            "azure-devops/git-push.json",
            "bitbucket-cloud/repo-push.json",
            "bitbucket-server/repo-refs-changed.json",
            "dockerhub/push.json",
            "gitea/push-event.json",
            "github/deployment-status.json",
            "github/deployment.json",
            "github/ping.json",
            "github/push-new-branch.json",
            "github/push-tag-deleted.json",
            "gitlab/push-event.json",
            "gitlab/tag-event.json",
            "gogs/push-event.json",
        ]
    );
}

#[test]
fn empty_body_is_an_empty_call() {
    let event = parse_ok(&headers(&[]), b"");
    assert!(is_empty_call(&event));
    assert_eq!(event, HookEvent::default());
}

#[test]
fn whitespace_body_is_an_empty_call() {
    assert!(is_empty_call(&parse_ok(&json(), b" \r\n\t \n")));
}

#[test]
fn form_body_is_an_empty_call() {
    assert!(is_empty_call(&parse_ok(&form(), b"git_ref=v1.2.3")));
    let with_charset = headers(&[("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=UTF-8")]);
    assert!(is_empty_call(&parse_ok(&with_charset, b"git_ref=main&x=%20")));
}

#[test]
fn form_payload_that_is_not_json_is_an_error() {
    let error = parse(&form(), b"payload=%7Bnope").unwrap_err();
    assert!(matches!(error, ParseError::FormPayloadNotJson(_)));
    assert!(error.to_string().starts_with("the `payload` form field is not valid JSON: "), "{error}");
}

#[test]
fn json_sent_as_a_form_is_read_as_json() {
    // `curl -d '{...}'` says form-urlencoded.
    let event = parse_ok(&form(), br#"{"repository": "https://github.com/o/r", "branch": "main"}"#);
    assert_eq!((event.provider, event.kind), (Provider::Generic, EventKind::Push));
    assert_eq!(event.branch.as_deref(), Some("main"));
}

#[test]
fn garbage_is_an_error() {
    let error = parse(&json(), b"<html>not json</html>").unwrap_err();
    assert!(matches!(error, ParseError::NotJson(_)));
    assert_eq!(error.to_string(), "the body is not valid JSON: expected value at line 1 column 1");
    let without_content_type = parse(&headers(&[]), b"git_ref=main").unwrap_err();
    assert!(matches!(without_content_type, ParseError::NotJson(_)));
    assert!(parse(&json(), b"\xff\xfe\x00garbage").is_err());
    assert!(parse(&json(), br#"{"repository": "x""#).is_err());
}

#[test]
fn unknown_json_carries_no_git_info() {
    for body in [&br#"{"hello": "world"}"#[..], b"{}", b"[1, 2]", b"42", b"null", br#""main""#] {
        let event = parse_ok(&json(), body);
        assert_eq!((event.provider, event.kind), (Provider::Generic, EventKind::NoGitInfo), "{body:?}");
        assert!(!event.has_git_info());
    }
    // Generic fields that are all blank carry nothing either.
    let event = parse_ok(&json(), br#"{"repository": " ", "branch": ""}"#);
    assert_eq!(event, HookEvent { provider: Provider::Generic, ..HookEvent::default() });
    // A `repository` object of an unknown shape is not a repository URL.
    let event = parse_ok(&json(), br#"{"repository": {"name": "r"}, "branch": "main"}"#);
    assert_eq!((event.provider, event.kind), (Provider::Generic, EventKind::NoGitInfo));
}

#[test]
fn generic_json_with_repository_branch_and_sha() {
    let body = br#"{"repository": "https://github.com/acme/shop.git", "branch": "main",
        "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "extra": [1, 2, 3]}"#;
    let event = parse_ok(&json(), body);
    assert_eq!(event.provider, Provider::Generic);
    assert_eq!(event.kind, EventKind::Push);
    assert_eq!(event.delivery_id, None);
    assert_eq!(event.repository_urls, ["https://github.com/acme/shop.git"]);
    assert_eq!(event.branch.as_deref(), Some("main"));
    assert_eq!(event.tag, None);
    assert_eq!(event.sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert!(!event.deleted);
    assert!(event.has_git_info());
}

#[test]
fn generic_json_with_ref() {
    let branch = parse_ok(&json(), br#"{"repository": "git@github.com:acme/shop.git", "ref": "refs/heads/dev"}"#);
    assert_eq!((branch.branch.as_deref(), branch.tag.as_deref()), (Some("dev"), None));
    let tag = parse_ok(&json(), br#"{"repository": "git@github.com:acme/shop.git", "ref": "refs/tags/v1"}"#);
    assert_eq!((tag.branch.as_deref(), tag.tag.as_deref()), (None, Some("v1")));
    let bare = parse_ok(&json(), br#"{"repository": "git@github.com:acme/shop.git", "ref": "release"}"#);
    assert_eq!(bare.branch.as_deref(), Some("release"));
    let commit = parse_ok(&json(), br#"{"ref": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#);
    assert_eq!(commit.branch, None);
    assert_eq!(commit.sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(commit.kind, EventKind::Push);
    let notes = parse_ok(&json(), br#"{"repository": "git@github.com:acme/shop.git", "ref": "refs/notes/x"}"#);
    assert_eq!(notes.kind, EventKind::Ignored);
    let repository_only = parse_ok(&json(), br#"{"repository": "https://github.com/acme/shop"}"#);
    assert_eq!(repository_only.kind, EventKind::Push);
    assert_eq!(repository_only.branch, None);
}

#[test]
fn generic_json_with_a_field_of_the_wrong_type_is_an_error() {
    let error = parse(&json(), br#"{"repository": "https://github.com/acme/shop", "sha": 5}"#).unwrap_err();
    assert!(
        error.to_string().starts_with("generic JSON push payload does not have the expected shape: invalid type"),
        "{error}"
    );
}

#[test]
fn header_less_github_push_is_generic_with_git_info() {
    let body = include_bytes!("../../../tests/fixtures/webhooks/github/push-new-branch.json");
    let event = parse_ok(&json(), body);
    assert_eq!(event.provider, Provider::Generic);
    assert_eq!(event.event, "push");
    assert_eq!(event.kind, EventKind::Push);
    assert_eq!(event.delivery_id, None);
    assert_eq!(event.repository_urls[0], "https://github.com/Codertocat/Hello-World.git");
    assert_eq!(event.branch.as_deref(), Some("master"));
    assert_eq!(event.sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    assert_eq!(event.sender.as_deref(), Some("Codertocat"));
    let deleted = parse_ok(&json(), include_bytes!("../../../tests/fixtures/webhooks/github/push-tag-deleted.json"));
    assert_eq!(
        (deleted.provider, deleted.tag.as_deref(), deleted.deleted),
        (Provider::Generic, Some("simple-tag"), true)
    );
}

#[test]
fn provider_header_with_an_empty_body_is_an_empty_call() {
    let headers = headers(&[("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-1")]);
    assert!(is_empty_call(&parse_ok(&headers, b"")));
}

#[test]
fn byte_order_mark_is_skipped() {
    let event = parse_ok(&json(), b"\xEF\xBB\xBF{\"repository\": \"https://github.com/acme/shop\"}");
    assert_eq!(event.repository_urls, ["https://github.com/acme/shop"]);
}

#[test]
fn recorded_strings_are_bounded() {
    let long_event = "e".repeat(300);
    let long_delivery = "d".repeat(300);
    let headers = headers(&[("X-GitHub-Event", &long_event), ("X-GitHub-Delivery", &long_delivery)]);
    let event = parse_ok(&headers, b"{}");
    assert_eq!(event.kind, EventKind::Ignored);
    assert_eq!(event.event.chars().count(), 128);
    assert_eq!(event.delivery_id, None);
}

#[test]
fn bitbucket_flavour_is_told_by_headers() {
    let cloud = headers(&[("X-Event-Key", "repo:fork"), ("X-Request-UUID", "u-1"), ("X-Hook-UUID", "h-1")]);
    let event = parse_ok(&cloud, b"{}");
    assert_eq!((event.provider, event.kind), (Provider::BitbucketCloud, EventKind::Ignored));
    assert_eq!(event.delivery_id.as_deref(), Some("u-1"));
    let server = headers(&[("X-Event-Key", "repo:modified"), ("X-Request-Id", "r-1")]);
    let event = parse_ok(&server, b"{}");
    assert_eq!((event.provider, event.kind), (Provider::BitbucketServer, EventKind::Ignored));
    assert_eq!(event.delivery_id.as_deref(), Some("r-1"));
}

/// Found by the `provider_by_shape` fuzz target: `refs/heads/ main` was read
/// as the branch ` main`. Git refuses white space in ref names, so it is
/// neither a branch nor a tag: the push is acknowledged and ignored.
#[test]
fn a_ref_name_starting_with_white_space_is_no_branch_or_tag() {
    for git_ref in ["refs/heads/ main", "refs/tags/\tv1", "refs/heads/ "] {
        let body =
            format!(r#"{{"repository":"https://github.com/o/r","ref":"{}","sha":""}}"#, git_ref.escape_default());
        let event = parse_ok(&json(), body.as_bytes());
        assert_eq!((event.branch.as_deref(), event.tag.as_deref()), (None, None), "{git_ref:?}: {event:?}");
    }
    let event = parse_ok(&json(), br#"{"repository":"https://github.com/o/r","ref":"refs/heads/main","sha":""}"#);
    assert_eq!(event.branch.as_deref(), Some("main"));
}

/// Every value of the CRD's `Provider` enum (read from its schema, so a new
/// variant is seen without being listed here) has exactly one definition,
/// and metrics labels are distinct and stay `snake_case`.
#[test]
fn every_provider_has_one_definition() {
    let schema = serde_json::to_value(schemars::schema_for!(Provider)).expect("schema");
    // The schema lists the values under `enum` (or `const`, for documented variants under `oneOf`).
    fn collect(schema: &serde_json::Value, values: &mut Vec<serde_json::Value>) {
        match schema {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("enum", serde_json::Value::Array(items)) => values.extend(items.iter().cloned()),
                        ("const", item) => values.push(item.clone()),
                        _ => collect(value, values),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect(item, values)),
            _ => {}
        }
    }
    let mut values = Vec::new();
    collect(&schema, &mut values);
    assert!(values.len() >= 12, "{schema}");
    for value in &values {
        let provider: Provider = serde_json::from_value(value.clone()).expect("a Provider value");
        let found: Vec<_> = super::DEFINITIONS.iter().filter(|d| d.provider == provider).collect();
        assert_eq!(found.len(), 1, "{provider:?} has {} definitions", found.len());
        assert_eq!(super::definition(provider).provider, provider);
    }
    assert_eq!(super::DEFINITIONS.len(), values.len(), "a definition of no Provider value");
    let mut labels: Vec<&str> = super::DEFINITIONS.iter().map(|d| d.metrics_label).collect();
    assert!(labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')), "{labels:?}");
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), values.len(), "two providers share a metrics label");
    // The list makes the enum and the definitions together: each in its place.
    let listed: Vec<Provider> = super::DEFINITIONS.iter().map(|d| d.provider).collect();
    assert_eq!(listed, Provider::ALL, "a definition listed against another Provider value");
    let mut names: Vec<&str> = super::DEFINITIONS.iter().map(|d| d.display_name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), values.len(), "two providers share a display name");
}

/// Header detection is part of each definition, and at most one answers:
/// the more specific header wins whatever the order of the definitions
/// (Forgejo also sends `X-Gitea-*`, Gitea `X-Gogs-*` and `X-GitHub-*`).
#[test]
fn at_most_one_definition_detects_a_call_by_its_headers() {
    let detected = |pairs: &[(&str, &str)]| {
        let headers = headers(pairs);
        let found: Vec<Provider> =
            super::DEFINITIONS.iter().filter(|d| (d.detect)(&headers).is_some()).map(|d| d.provider).collect();
        assert!(found.len() <= 1, "{pairs:?}: {found:?}");
        found.first().copied()
    };
    let all = [
        ("x-event-key", "repo:push"),
        ("x-gitlab-event", "Push Hook"),
        ("x-github-event", "push"),
        ("x-gogs-event", "push"),
        ("x-gitea-event", "push"),
        ("x-forgejo-event", "push"),
    ];
    let expected = [
        Provider::BitbucketCloud,
        Provider::GitLab,
        Provider::GitHub,
        Provider::Gogs,
        Provider::Gitea,
        Provider::Forgejo,
    ];
    // Each header alone names its provider; with those before it in the
    // list (less specific ones), still it.
    for (index, provider) in expected.iter().enumerate() {
        assert_eq!(detected(&all[index..=index]), Some(*provider), "{:?}", all[index]);
        assert_eq!(detected(&all[..=index]), Some(*provider), "{:?}", &all[..=index]);
    }
    assert_eq!(detected(&[("x-event-key", "repo:refs_changed")]), Some(Provider::BitbucketServer));
    assert_eq!(detected(&[("x-github-event", "  ")]), None, "a blank header names nothing");
    assert_eq!(detected(&[("content-type", "application/json")]), None);
}
