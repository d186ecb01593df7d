//! Bodies of no known provider: the generic
//! `{"repository": "...", "ref"|"branch": "...", "sha": "..."}`, a GitHub-like
//! push sent without headers, and JSON of any other shape (no Git information).

use serde::Deserialize;

use super::github::PushPayload;
use super::shape::Kind;
use super::{Definition, by_shape_only, ignored, never_by_headers};
use super::{Json, ParseError, RefName, Shape, commit_sha, deserialize, event, first, is_commit_sha, is_zero_sha};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};

const PROVIDER: Provider = Provider::Generic;

pub(super) const GENERIC: Definition = Definition {
    provider: PROVIDER,
    display_name: "generic JSON",
    metrics_label: "generic",
    signature: None,
    handling: never_by_headers,
    parse: ignored,
    detect: by_shape_only,
};

/// A call without a payload (`curl -X POST`, a form of modifiers).
pub(super) const EMPTY: Definition = Definition {
    provider: Provider::Empty,
    display_name: "an empty body",
    metrics_label: "empty",
    signature: None,
    handling: never_by_headers,
    parse: ignored,
    detect: by_shape_only,
};
const PUSH: &str = "push";

/// JSON of no shape this operator knows: it carries no Git information.
pub(super) fn unknown() -> HookEvent {
    event(PROVIDER, "", EventKind::NoGitInfo)
}

pub(super) fn parse(shape: &Shape, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    if is_github_like_push(shape) {
        let push: PushPayload = deserialize(PROVIDER, PUSH, payload)?;
        let pusher = push.pusher.as_ref();
        let sender = first([
            push.sender.as_ref().and_then(|s| s.login.as_deref()),
            pusher.and_then(|p| p.login.as_deref()),
            pusher.and_then(|p| p.username.as_deref()),
            pusher.and_then(|p| p.name.as_deref()),
        ]);
        return push.into_event(PROVIDER, PUSH, sender);
    }
    if is_generic(shape) {
        return generic(payload);
    }
    Ok(unknown())
}

/// `ref` and `after`/`before` next to a `repository` object: GitHub's push
/// shape, as GitHub, Gitea, Forgejo and Gogs send it.
fn is_github_like_push(shape: &Shape) -> bool {
    shape.git_ref.is_string() && shape.repository.is_object() && (shape.after.is_string() || shape.before.is_string())
}

/// A `repository` string, or no `repository` at all, and at least one of the
/// generic fields as a string.
fn is_generic(shape: &Shape) -> bool {
    let fields = [shape.repository, shape.git_ref, shape.branch, shape.tag, shape.sha];
    matches!(shape.repository, Kind::Absent | Kind::String) && fields.into_iter().any(Kind::is_string)
}

#[derive(Debug, Deserialize)]
struct Payload {
    repository: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    branch: Option<String>,
    tag: Option<String>,
    sha: Option<String>,
    deleted: Option<bool>,
}

/// `branch` and `tag` win over what `ref` says; a `ref` that is a full commit
/// id is the `sha` when none is given.
fn generic(payload: Json<'_>) -> Result<HookEvent, ParseError> {
    let payload: Payload = deserialize(PROVIDER, PUSH, payload)?;
    let (mut branch, mut tag) = (None, None);
    if let Some(name) = first([payload.branch.as_deref()]) {
        match RefName::parse(&name) {
            RefName::Branch(name) => branch = Some(name),
            RefName::Tag(name) => tag = Some(name),
            RefName::Other => {}
        }
    }
    if let Some(name) = first([payload.tag.as_deref()]) {
        tag = Some(name.strip_prefix("refs/tags/").map(str::to_owned).unwrap_or(name));
    }
    let mut sha = commit_sha(payload.sha.as_deref());
    let mut unusable_ref = false;
    if let Some(git_ref) = first([payload.git_ref.as_deref()]) {
        if is_commit_sha(&git_ref) {
            sha = sha.or_else(|| commit_sha(Some(&git_ref)));
        } else {
            match RefName::parse(&git_ref) {
                RefName::Branch(name) => {
                    branch.get_or_insert(name);
                }
                RefName::Tag(name) => {
                    tag.get_or_insert(name);
                }
                RefName::Other => unusable_ref = true,
            }
        }
    }
    let repository_urls: Vec<String> = first([payload.repository.as_deref()]).into_iter().collect();
    let has_git_info = !repository_urls.is_empty() || branch.is_some() || tag.is_some() || sha.is_some();
    // A `ref` such as `refs/notes/commits` names neither a branch nor a tag:
    // deploy nothing rather than everything.
    let kind = match (branch.is_some() || tag.is_some(), unusable_ref, has_git_info) {
        (false, true, _) => EventKind::Ignored,
        (_, _, true) => EventKind::Push,
        (_, _, false) => return Ok(unknown()),
    };
    Ok(HookEvent {
        repository_urls,
        branch,
        tag,
        sha,
        deleted: payload.deleted == Some(true) || payload.sha.as_deref().is_some_and(is_zero_sha),
        ..event(PROVIDER, PUSH, kind)
    })
}
