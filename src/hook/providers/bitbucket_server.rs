//! Bitbucket Server / Data Center `repo:refs_changed` (`X-Event-Key`).

use serde::Deserialize;

use super::Definition;
use super::{Handling, Json, ParseError, Push, RefName, Shape, deserialize, event, first, is_zero_sha, missing, urls};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};
use crate::hook::signature::SignatureCheck;

const PROVIDER: Provider = Provider::BitbucketServer;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "Bitbucket Server",
    metrics_label: "bitbucket_server",
    signature: Some(SignatureCheck::BitbucketSha256),
    handling,
    parse: |_, event, payload| parse(event, payload),
    detect: |headers| super::bitbucket(headers).filter(|(_, cloud)| !*cloud).map(|(named, _)| named),
};

pub(super) fn handling(event: &str) -> Handling {
    match event {
        "repo:refs_changed" => Handling::Parse,
        // "Test connection" in the webhook settings.
        "diagnostics:ping" => Handling::Ping,
        _ => Handling::Ignore,
    }
}

/// A header-less body naming its own `eventKey` next to `changes` or a
/// `repository` is a Bitbucket Server event.
pub(super) fn event_from_shape(shape: &Shape) -> Option<String> {
    let key = shape.event_key.as_deref()?;
    let looks_right = shape.changes.is_array() || shape.repository.is_object() || key == "diagnostics:ping";
    looks_right.then(|| key.to_owned())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    changes: Option<Vec<Change>>,
    repository: Option<Repository>,
    actor: Option<Actor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    #[serde(rename = "ref")]
    git_ref: Option<Ref>,
    ref_id: Option<String>,
    to_hash: Option<String>,
    #[serde(rename = "type")]
    change_type: Option<String>,
}

impl Change {
    fn is_delete(&self) -> bool {
        self.change_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("DELETE"))
            || self.to_hash.as_deref().is_some_and(is_zero_sha)
    }

    fn ref_name(&self) -> Option<RefName> {
        let git_ref = self.git_ref.as_ref();
        if let Some(id) = first([git_ref.and_then(|r| r.id.as_deref()), self.ref_id.as_deref()]) {
            return Some(RefName::parse(&id));
        }
        let display_id = first([git_ref.and_then(|r| r.display_id.as_deref())])?;
        Some(match git_ref.and_then(|r| r.kind.as_deref()) {
            Some(kind) if kind.eq_ignore_ascii_case("TAG") => RefName::Tag(display_id),
            _ => RefName::Branch(display_id),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    id: Option<String>,
    display_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    links: Option<Links>,
}

#[derive(Debug, Deserialize)]
struct Links {
    clone: Option<Vec<Link>>,
    #[serde(rename = "self")]
    self_links: Option<Vec<Link>>,
}

#[derive(Debug, Deserialize)]
struct Link {
    href: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Actor {
    name: Option<String>,
    slug: Option<String>,
    display_name: Option<String>,
}

/// The last change that is not a deletion is the one deployed; when every
/// change deleted its ref, the push is a deletion of the last one.
pub(super) fn parse(event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    match handling(event_name) {
        Handling::Parse => {}
        Handling::Ping => return Ok(event(PROVIDER, event_name, EventKind::Ping)),
        Handling::Ignore => return Ok(event(PROVIDER, event_name, EventKind::Ignored)),
    }
    let payload: Payload = deserialize(PROVIDER, event_name, payload)?;
    let changes = payload.changes.unwrap_or_default();
    let change = changes
        .iter()
        .rev()
        .find(|change| !change.is_delete())
        .or(changes.last())
        .ok_or_else(|| missing(PROVIDER, event_name, "changes"))?;
    let ref_name = change.ref_name().ok_or_else(|| missing(PROVIDER, event_name, "changes[].ref.id"))?;
    let links = payload.repository.as_ref().and_then(|r| r.links.as_ref());
    let clone = links.and_then(|l| l.clone.as_deref()).unwrap_or_default();
    let self_links = links.and_then(|l| l.self_links.as_deref()).unwrap_or_default();
    let is_http = |link: &&Link| link.name.as_deref().is_some_and(|name| name.starts_with("http"));
    let actor = payload.actor.as_ref();
    Ok(Push {
        provider: PROVIDER,
        event: event_name,
        ref_name,
        sha: change.to_hash.as_deref(),
        deleted: change.is_delete(),
        // HTTP clone URLs first, then the others, then the web page.
        repository_urls: urls(
            clone
                .iter()
                .filter(is_http)
                .chain(clone.iter().filter(|link| !is_http(link)))
                .chain(self_links)
                .map(|link| link.href.as_deref()),
        ),
        sender: first([
            actor.and_then(|a| a.name.as_deref()),
            actor.and_then(|a| a.slug.as_deref()),
            actor.and_then(|a| a.display_name.as_deref()),
        ]),
    }
    .into_event())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const REFS_CHANGED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/bitbucket-server/repo-refs-changed.json");

    fn server(event: &str) -> http::HeaderMap {
        headers(&[
            ("X-Event-Key", event),
            ("X-Request-Id", "d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d"),
            ("Content-Type", "application/json; charset=utf-8"),
        ])
    }

    const WEBHOOK_TEST: [&str; 3] = [
        "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
        "ssh://git@server.bitbucket.local:7999/~gopher/webhook-test.git",
        "https://server.bitbucket.local/users/gopher/repos/webhook-test/browse",
    ];

    /// The fixture's only change deletes `feature/wip`.
    #[test]
    fn refs_changed_deleting_a_branch() {
        let event = parse_ok(&server("repo:refs_changed"), REFS_CHANGED);
        assert_eq!(event.provider, Provider::BitbucketServer);
        assert_eq!(event.event, "repo:refs_changed");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d"));
        assert_eq!(event.repository_urls, WEBHOOK_TEST);
        assert_eq!(event.branch.as_deref(), Some("feature/wip"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha, None);
        assert!(event.deleted);
        assert_eq!(event.sender.as_deref(), Some("gopher"));
    }

    #[test]
    fn refs_changed_without_headers_is_recognised_by_shape() {
        let event = parse_ok(&headers(&[]), REFS_CHANGED);
        assert_eq!((event.provider, event.kind), (Provider::BitbucketServer, EventKind::Push));
        assert_eq!(event.repository_urls, WEBHOOK_TEST);
        assert!(event.deleted);
    }

    #[test]
    fn the_last_change_that_is_not_a_deletion_wins() {
        let body = br#"{"changes": [
            {"ref": {"id": "refs/tags/v1", "displayId": "v1", "type": "TAG"},
             "toHash": "32a0b8a740c2963c6f56bd8baf3dc05683d299e0", "type": "ADD"},
            {"ref": {"id": "refs/heads/old"}, "toHash": "0000000000000000000000000000000000000000", "type": "DELETE"}]}"#;
        let event = parse_ok(&server("repo:refs_changed"), body);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!((event.branch, event.tag.as_deref()), (None, Some("v1")));
        assert_eq!(event.sha.as_deref(), Some("32a0b8a740c2963c6f56bd8baf3dc05683d299e0"));
        assert!(!event.deleted);
        assert!(event.repository_urls.is_empty());
    }

    #[test]
    fn diagnostics_ping_is_a_ping() {
        let event = parse_ok(&server("diagnostics:ping"), br#"{"test": true}"#);
        assert_eq!((event.provider, event.kind), (Provider::BitbucketServer, EventKind::Ping));
    }

    #[test]
    fn other_events_are_ignored() {
        let event = parse_ok(&server("pr:opened"), REFS_CHANGED);
        assert_eq!((event.provider, event.kind), (Provider::BitbucketServer, EventKind::Ignored));
        assert_eq!(event.delivery_id.as_deref(), Some("d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d"));
    }
}
