//! Bitbucket Cloud `repo:push` (`X-Event-Key`).

use serde::Deserialize;

use super::Definition;
use super::{Handling, Json, ParseError, Push, RefName, Shape, deserialize, event, first, missing, urls};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};
use crate::hook::signature::SignatureCheck;

const PROVIDER: Provider = Provider::BitbucketCloud;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "Bitbucket Cloud",
    metrics_label: "bitbucket_cloud",
    signature: Some(SignatureCheck::BitbucketSha256),
    handling,
    parse: |_, event, payload| parse(event, payload),
    detect: |headers| super::bitbucket(headers).filter(|(_, cloud)| *cloud).map(|(named, _)| named),
};
pub(super) const PUSH: &str = "repo:push";

pub(super) fn handling(event: &str) -> Handling {
    match event {
        PUSH => Handling::Parse,
        _ => Handling::Ignore,
    }
}

/// A header-less body with `push.changes` is a Bitbucket Cloud push.
pub(super) fn matches(shape: &Shape) -> bool {
    shape.push_changes.is_array()
}

#[derive(Debug, Deserialize)]
struct Payload {
    push: Option<PushData>,
    repository: Option<Repository>,
    actor: Option<Actor>,
}

#[derive(Debug, Deserialize)]
struct PushData {
    changes: Option<Vec<Change>>,
}

#[derive(Debug, Deserialize)]
struct Change {
    new: Option<RefState>,
    old: Option<RefState>,
}

#[derive(Debug, Deserialize)]
struct RefState {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    hash: Option<String>,
    /// The head commit's message (skip markers).
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: Option<String>,
    links: Option<Links>,
}

#[derive(Debug, Deserialize)]
struct Links {
    html: Option<Link>,
}

#[derive(Debug, Deserialize)]
struct Link {
    href: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Actor {
    nickname: Option<String>,
    username: Option<String>,
    display_name: Option<String>,
}

/// The last change that leaves a ref behind (`new` set) is the one deployed;
/// when every change removed its ref (`new: null`, `closed: true`), the push
/// is a deletion of the last one.
pub(super) fn parse(event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    if handling(event_name) != Handling::Parse {
        return Ok(event(PROVIDER, event_name, EventKind::Ignored));
    }
    let payload: Payload = deserialize(PROVIDER, event_name, payload)?;
    let changes = payload.push.and_then(|push| push.changes).unwrap_or_default();
    let (state, deleted) = match changes.iter().rev().find_map(|change| change.new.as_ref()) {
        Some(new) => (new, false),
        None => {
            let old = changes.iter().rev().find_map(|change| change.old.as_ref());
            (old.ok_or_else(|| missing(PROVIDER, event_name, "push.changes[].new"))?, true)
        }
    };
    let name = state
        .name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| missing(PROVIDER, event_name, "push.changes[].new.name"))?;
    let ref_name = match state.kind.as_deref() {
        Some("tag") => RefName::Tag(name.to_owned()),
        _ => RefName::Branch(name.to_owned()),
    };
    let sha = if deleted { None } else { state.target.as_ref().and_then(|t| t.hash.as_deref()) };
    let repository = payload.repository.as_ref();
    let clone_url = repository
        .and_then(|r| r.full_name.as_deref())
        .map(str::trim)
        .filter(|full_name| !full_name.is_empty())
        .map(|full_name| format!("https://bitbucket.org/{full_name}"));
    let actor = payload.actor.as_ref();
    let head_commit_message = if deleted { None } else { state.target.as_ref().and_then(|t| t.message.clone()) };
    let event = Push {
        provider: PROVIDER,
        event: event_name,
        ref_name,
        sha,
        deleted,
        repository_urls: urls([
            clone_url.as_deref(),
            repository.and_then(|r| r.links.as_ref()?.html.as_ref()?.href.as_deref()),
        ]),
        sender: first([
            actor.and_then(|a| a.nickname.as_deref()),
            actor.and_then(|a| a.username.as_deref()),
            actor.and_then(|a| a.display_name.as_deref()),
        ]),
    }
    .into_event();
    Ok(HookEvent { head_commit_message, ..event })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const REPO_PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/bitbucket-cloud/repo-push.json");

    fn cloud(event: &str) -> http::HeaderMap {
        headers(&[
            ("X-Event-Key", event),
            ("X-Request-UUID", "afe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f"),
            ("X-Hook-UUID", "cb1e8b0c-63ea-4a2c-8d2b-4f2b0e4a1c11"),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn repo_push() {
        let event = parse_ok(&cloud("repo:push"), REPO_PUSH);
        assert_eq!(event.provider, Provider::BitbucketCloud);
        assert_eq!(event.event, "repo:push");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("afe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f"));
        // Atlassian's sample disagrees with itself: `full_name` is
        // `team_name/repo_name`, `links.html` points at `bitbucket/bitbucket`.
        assert_eq!(
            event.repository_urls,
            ["https://bitbucket.org/team_name/repo_name", "https://api.bitbucket.org/bitbucket/bitbucket",]
        );
        assert_eq!(event.branch.as_deref(), Some("name-of-branch"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("709d658dc5b6d6afcd46049c2f332ee3f515a67d"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("emmap1"));
        // The new head's message (not the old head's), where skip markers are read.
        assert_eq!(event.head_commit_message.as_deref(), Some("new commit message\n"));
    }

    #[test]
    fn repo_push_without_headers_is_recognised_by_shape() {
        let event = parse_ok(&headers(&[]), REPO_PUSH);
        assert_eq!((event.provider, event.kind), (Provider::BitbucketCloud, EventKind::Push));
        assert_eq!(event.delivery_id, None);
        assert_eq!(event.branch.as_deref(), Some("name-of-branch"));
    }

    #[test]
    fn deleted_branch() {
        let body = br#"{"repository": {"full_name": "team/repo"},
            "push": {"changes": [{"new": null, "closed": true,
                "old": {"type": "branch", "name": "gone", "target": {"hash": "1e65c05c1d5171631d92438a13901ca7dae9618c"}}}]}}"#;
        let event = parse_ok(&cloud("repo:push"), body);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.branch.as_deref(), Some("gone"));
        assert_eq!(event.sha, None);
        assert!(event.deleted);
        assert_eq!(event.repository_urls, ["https://bitbucket.org/team/repo"]);
    }

    #[test]
    fn tag_push() {
        let body = br#"{"push": {"changes": [{"new": {"type": "tag", "name": "v2",
            "target": {"hash": "709d658dc5b6d6afcd46049c2f332ee3f515a67d"}}}]}}"#;
        let event = parse_ok(&cloud("repo:push"), body);
        assert_eq!((event.branch, event.tag.as_deref()), (None, Some("v2")));
    }

    #[test]
    fn push_without_changes_is_an_error() {
        let error = super::super::parse(&cloud("repo:push"), br#"{"push": {"changes": []}}"#).unwrap_err();
        assert_eq!(error.to_string(), "Bitbucket Cloud repo:push payload has no `push.changes[].new`");
    }

    #[test]
    fn other_events_are_ignored() {
        let event = parse_ok(&cloud("pullrequest:created"), b"{}");
        assert_eq!((event.provider, event.kind), (Provider::BitbucketCloud, EventKind::Ignored));
    }
}
