//! GitLab `Push Hook` and `Tag Push Hook` (`X-Gitlab-Event`).

use serde::Deserialize;

use super::Definition;
use super::github::Commits;
use super::{Handling, Json, ParseError, Push, RefName, Shape, commit_sha, deserialize, event, first, missing, urls};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};
use crate::hook::signature::SignatureCheck;

const PROVIDER: Provider = Provider::GitLab;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "GitLab",
    metrics_label: "gitlab",
    signature: Some(SignatureCheck::GitLabToken),
    handling,
    parse: |_, event, payload| parse(event, payload),
    detect: |headers| super::named_by(headers, "x-gitlab-event", &["x-gitlab-event-uuid"]),
};

pub(super) fn handling(event: &str) -> Handling {
    match event {
        "Push Hook" | "Tag Push Hook" => Handling::Parse,
        _ => Handling::Ignore,
    }
}

/// A header-less body with `object_kind` and a `project` is a GitLab event;
/// returns the event name GitLab would have put in `X-Gitlab-Event`.
pub(super) fn event_from_shape(shape: &Shape) -> Option<String> {
    let kind = shape.object_kind.as_deref()?;
    if !shape.project.is_object() {
        return None;
    }
    Some(match kind {
        "push" => "Push Hook".to_owned(),
        "tag_push" => "Tag Push Hook".to_owned(),
        other => other.to_owned(),
    })
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    checkout_sha: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
    project: Option<Project>,
    repository: Option<Repository>,
    commits: Option<Commits>,
    /// The push's real number of commits; `commits` holds at most 20 of them.
    total_commits_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Project {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    homepage: Option<String>,
    url: Option<String>,
}

/// The commit is `checkout_sha` (null when the ref was deleted), else
/// `after`; `after` all zeros means the ref was deleted.
pub(super) fn parse(event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    if handling(event_name) != Handling::Parse {
        return Ok(event(PROVIDER, event_name, EventKind::Ignored));
    }
    let payload: Payload = deserialize(PROVIDER, event_name, payload)?;
    let git_ref = first([payload.git_ref.as_deref()]).ok_or_else(|| missing(PROVIDER, event_name, "ref"))?;
    let sha = if commit_sha(payload.checkout_sha.as_deref()).is_some() {
        payload.checkout_sha.as_deref()
    } else {
        payload.after.as_deref()
    };
    let project = payload.project.as_ref();
    let repository = payload.repository.as_ref();
    let mut commits = payload.commits.unwrap_or_default();
    let changed_files = commits.changed_files(payload.total_commits_count);
    let head_commit_message = commits.head_message(None, sha);
    let event = Push {
        provider: PROVIDER,
        event: event_name,
        ref_name: RefName::parse(&git_ref),
        sha,
        deleted: false,
        repository_urls: urls([
            project.and_then(|p| p.git_http_url.as_deref()),
            project.and_then(|p| p.git_ssh_url.as_deref()),
            project.and_then(|p| p.web_url.as_deref()),
            repository.and_then(|r| r.git_http_url.as_deref()),
            repository.and_then(|r| r.git_ssh_url.as_deref()),
            repository.and_then(|r| r.homepage.as_deref()),
            repository.and_then(|r| r.url.as_deref()),
        ]),
        sender: first([payload.user_username.as_deref(), payload.user_name.as_deref()]),
    }
    .into_event();
    Ok(HookEvent { changed_files, head_commit_message, ..event })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitlab/push-event.json");
    const TAG: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/gitlab/tag-event.json");

    fn gitlab(event: &str) -> http::HeaderMap {
        headers(&[
            ("X-Gitlab-Event", event),
            ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
            ("X-Gitlab-Token", "not-read-by-the-parser"),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn push_hook() {
        let event = parse_ok(&gitlab("Push Hook"), PUSH);
        assert_eq!(event.provider, Provider::GitLab);
        assert_eq!(event.event, "Push Hook");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("13792a34-cac6-4fda-95a8-c58e00a3954e"));
        assert_eq!(
            event.repository_urls,
            [
                "http://example.com/mike/diaspora.git",
                "git@example.com:mike/diaspora.git",
                "http://example.com/mike/diaspora",
            ]
        );
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("John Smith"));
    }

    #[test]
    fn tag_push_hook() {
        let event = parse_ok(&gitlab("Tag Push Hook"), TAG);
        assert_eq!(event.provider, Provider::GitLab);
        assert_eq!(event.event, "Tag Push Hook");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("13792a34-cac6-4fda-95a8-c58e00a3954e"));
        assert_eq!(
            event.repository_urls,
            [
                "http://example.com/jsmith/example.git",
                "git@example.com:jsmith/example.git",
                "http://example.com/jsmith/example",
                "ssh://git@example.com/jsmith/example.git",
            ]
        );
        assert_eq!(event.branch, None);
        assert_eq!(event.tag.as_deref(), Some("v1.0.0"));
        assert_eq!(event.sha.as_deref(), Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("John Smith"));
    }

    #[test]
    fn push_without_headers_is_recognised_by_shape() {
        let event = parse_ok(&headers(&[]), TAG);
        assert_eq!((event.provider, event.kind), (Provider::GitLab, EventKind::Push));
        assert_eq!(event.event, "Tag Push Hook");
        assert_eq!(event.tag.as_deref(), Some("v1.0.0"));
    }

    #[test]
    fn deleted_branch() {
        let body = br#"{"object_kind": "push", "ref": "refs/heads/topic", "checkout_sha": null,
            "before": "95790bf891e76fee5e1747ab589903a6a1f80f22", "after": "0000000000000000000000000000000000000000",
            "user_username": "jsmith", "project": {"git_http_url": "http://example.com/mike/diaspora.git"}}"#;
        let event = parse_ok(&gitlab("Push Hook"), body);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.branch.as_deref(), Some("topic"));
        assert_eq!(event.sha, None);
        assert!(event.deleted);
        assert_eq!(event.sender.as_deref(), Some("jsmith"));
    }

    #[test]
    fn other_events_are_ignored() {
        let event = parse_ok(&gitlab("Merge Request Hook"), PUSH);
        assert_eq!((event.provider, event.kind), (Provider::GitLab, EventKind::Ignored));
    }
}
