//! Gitea, Forgejo and Gogs `push` (`X-Gitea-Event`, `X-Forgejo-Event`,
//! `X-Gogs-Event`): the GitHub-like push shape with their own fields.

use super::Definition;
use super::github::PushPayload;
use super::{Handling, Json, ParseError, deserialize, event, first};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};
use crate::hook::signature::SignatureCheck;

pub(super) const GITEA: Definition = Definition {
    provider: Provider::Gitea,
    display_name: "Gitea",
    metrics_label: "gitea",
    signature: Some(SignatureCheck::Gitea),
    handling,
    parse,
    detect: |headers| super::named_by(headers, "x-gitea-event", &["x-gitea-delivery"]),
};

/// Forgejo signs as Gitea does (`X-Gitea-Signature`, also sent as `X-Forgejo-Signature`).
pub(super) const FORGEJO: Definition = Definition {
    provider: Provider::Forgejo,
    display_name: "Forgejo",
    metrics_label: "forgejo",
    signature: Some(SignatureCheck::Gitea),
    handling,
    parse,
    detect: |headers| super::named_by(headers, "x-forgejo-event", &["x-forgejo-delivery", "x-gitea-delivery"]),
};

pub(super) const GOGS: Definition = Definition {
    provider: Provider::Gogs,
    display_name: "Gogs",
    metrics_label: "gogs",
    signature: Some(SignatureCheck::Gogs),
    handling,
    parse,
    detect: |headers| super::named_by(headers, "x-gogs-event", &["x-gogs-delivery"]),
};

pub(super) fn handling(event: &str) -> Handling {
    match event {
        "push" => Handling::Parse,
        _ => Handling::Ignore,
    }
}

/// `provider` is Gitea, Forgejo or Gogs, as the headers said.
pub(super) fn parse(provider: Provider, event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    if handling(event_name) != Handling::Parse {
        return Ok(event(provider, event_name, EventKind::Ignored));
    }
    let push: PushPayload = deserialize(provider, event_name, payload)?;
    let pusher = push.pusher.as_ref();
    let sender = first([
        pusher.and_then(|p| p.login.as_deref()),
        pusher.and_then(|p| p.username.as_deref()),
        push.sender.as_ref().and_then(|s| s.login.as_deref()),
    ]);
    push.into_event(provider, event_name, sender)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const GITEA_PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitea/push-event.json");
    const GOGS_PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gogs/push-event.json");

    const GITEA_URLS: [&str; 3] = [
        "http://localhost:3000/example/example.git",
        "git@localhost:example/example.git",
        "http://localhost:3000/example/example",
    ];

    /// The headers Gitea sends: its own, and Gogs' and GitHub's for compatibility.
    fn gitea_headers(event: &str) -> http::HeaderMap {
        headers(&[
            ("X-Gitea-Event", event),
            ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-Gogs-Event", event),
            ("X-Gogs-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn gitea_push() {
        let event = parse_ok(&gitea_headers("push"), GITEA_PUSH);
        assert_eq!(event.provider, Provider::Gitea);
        assert_eq!(event.event, "push");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("f6266f16-1bf3-46a5-9ea4-602e06ead473"));
        assert_eq!(event.repository_urls, GITEA_URLS);
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("67b56589a45103f891bdee7c0546e5d40bc02001"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("example"));
    }

    #[test]
    fn forgejo_push() {
        let mut headers = gitea_headers("push");
        headers.insert("x-forgejo-event", http::HeaderValue::from_static("push"));
        headers.insert("x-forgejo-delivery", http::HeaderValue::from_static("0b1ec6b4-9fe4-4a2c-9d8e-1f0e3c2b7a55"));
        let event = parse_ok(&headers, GITEA_PUSH);
        assert_eq!(event.provider, Provider::Forgejo);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("0b1ec6b4-9fe4-4a2c-9d8e-1f0e3c2b7a55"));
        assert_eq!(event.repository_urls, GITEA_URLS);
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.sha.as_deref(), Some("67b56589a45103f891bdee7c0546e5d40bc02001"));
        assert!(!event.deleted);
    }

    #[test]
    fn gogs_push() {
        let headers = headers(&[
            ("X-Gogs-Event", "push"),
            ("X-Gogs-Delivery", "1a2f8c3e-5b7d-4e0f-9a6b-3c4d5e6f7a8b"),
            ("Content-Type", "application/json"),
        ]);
        let event = parse_ok(&headers, GOGS_PUSH);
        assert_eq!(event.provider, Provider::Gogs);
        assert_eq!(event.event, "push");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("1a2f8c3e-5b7d-4e0f-9a6b-3c4d5e6f7a8b"));
        assert_eq!(
            event.repository_urls,
            [
                "http://localhost:3000/unknwon/webhooks.git",
                "ssh://unknwon@localhost:2222/unknwon/webhooks.git",
                "http://localhost:3000/unknwon/webhooks",
            ]
        );
        assert_eq!(event.branch.as_deref(), Some("develop"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("bffeb74224043ba2feb48d137756c8a9331c449a"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("unknwon"));
    }

    #[test]
    fn other_gitea_events_are_ignored() {
        let event = parse_ok(&gitea_headers("create"), GITEA_PUSH);
        assert_eq!((event.provider, event.kind), (Provider::Gitea, EventKind::Ignored));
        assert_eq!(event.event, "create");
    }

    #[test]
    fn branch_deletion_is_deleted() {
        let body = br#"{"ref": "refs/heads/feature", "before": "67b56589a45103f891bdee7c0546e5d40bc02001",
            "after": "0000000000000000000000000000000000000000",
            "repository": {"clone_url": "http://localhost:3000/example/example.git"}}"#;
        let event = parse_ok(&gitea_headers("push"), body);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.branch.as_deref(), Some("feature"));
        assert_eq!(event.sha, None);
        assert!(event.deleted);
    }
}
