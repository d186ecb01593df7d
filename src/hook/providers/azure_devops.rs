//! Azure DevOps (Azure Repos) `git.push` service hook. It sends no
//! distinctive header, so it is recognised by shape: `publisherId: "tfs"`
//! and an `eventType`.

use serde::Deserialize;

use super::{Definition, by_shape_only, ignored, never_by_headers};
use super::{Json, ParseError, Push, RefName, Shape, deserialize, event, first, is_zero_sha, missing, urls};
use crate::api::Provider;
use crate::hook::event::{EventKind, HookEvent};

const PROVIDER: Provider = Provider::AzureDevOps;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "Azure DevOps",
    metrics_label: "azure_devops",
    signature: None,
    handling: never_by_headers,
    parse: ignored,
    detect: by_shape_only,
};
const PUSH: &str = "git.push";

pub(super) fn matches(shape: &Shape) -> bool {
    shape.publisher_id.as_deref() == Some("tfs") && shape.event_type.is_some()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    /// The notification id: Azure DevOps' delivery id.
    id: Option<String>,
    event_type: Option<String>,
    resource: Option<Resource>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    /// The pushed commits Azure DevOps lists (`comment` is the message).
    commits: Option<Vec<Commit>>,
    ref_updates: Option<Vec<RefUpdate>>,
    repository: Option<Repository>,
    pushed_by: Option<Identity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Commit {
    commit_id: Option<String>,
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefUpdate {
    name: Option<String>,
    new_object_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Repository {
    remote_url: Option<String>,
    ssh_url: Option<String>,
    web_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    unique_name: Option<String>,
    display_name: Option<String>,
}

/// The last ref update that leaves a commit behind is the one deployed; when
/// every update deleted its ref, the push is a deletion of the last one.
///
/// `event_type` is the payload's `eventType`, which errors name.
pub(super) fn parse(event_type: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    let payload: Payload = deserialize(PROVIDER, event_type, payload)?;
    let event_name = payload.event_type.as_deref().unwrap_or_default();
    let delivery_id = first([payload.id.as_deref()]);
    if event_name != PUSH {
        return Ok(HookEvent { delivery_id, ..event(PROVIDER, event_name, EventKind::Ignored) });
    }
    let resource = payload.resource.as_ref();
    let updates = resource.and_then(|r| r.ref_updates.as_deref()).unwrap_or_default();
    let is_delete = |update: &&RefUpdate| update.new_object_id.as_deref().is_some_and(is_zero_sha);
    let update = updates
        .iter()
        .rev()
        .find(|update| !is_delete(update))
        .or(updates.last())
        .ok_or_else(|| missing(PROVIDER, event_name, "resource.refUpdates"))?;
    let name =
        first([update.name.as_deref()]).ok_or_else(|| missing(PROVIDER, event_name, "resource.refUpdates[].name"))?;
    let repository = resource.and_then(|r| r.repository.as_ref());
    let pushed_by = resource.and_then(|r| r.pushed_by.as_ref());
    // Skip markers are read from the deployed commit's message.
    let head_commit_message = resource
        .and_then(|r| r.commits.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|commit| commit.commit_id.is_some() && commit.commit_id == update.new_object_id)
        .and_then(|commit| commit.comment.clone());
    Ok(HookEvent {
        delivery_id,
        head_commit_message,
        ..Push {
            provider: PROVIDER,
            event: event_name,
            ref_name: RefName::parse(&name),
            sha: update.new_object_id.as_deref(),
            deleted: false,
            repository_urls: urls([
                repository.and_then(|r| r.remote_url.as_deref()),
                repository.and_then(|r| r.ssh_url.as_deref()),
                repository.and_then(|r| r.web_url.as_deref()),
            ]),
            sender: first([
                pushed_by.and_then(|p| p.unique_name.as_deref()),
                pushed_by.and_then(|p| p.display_name.as_deref()),
            ]),
        }
        .into_event()
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const GIT_PUSH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/azure-devops/git-push.json");

    #[test]
    fn git_push() {
        let headers = headers(&[("Content-Type", "application/json; charset=utf-8")]);
        let event = parse_ok(&headers, GIT_PUSH);
        assert_eq!(event.provider, Provider::AzureDevOps);
        assert_eq!(event.event, "git.push");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("03c164c2-8912-4d5e-8009-3707d5f83734"));
        assert_eq!(
            event.repository_urls,
            ["https://dev.azure.com/fabrikam-fiber-inc/DefaultCollection/_git/Fabrikam-Fiber-Git"]
        );
        // The sample's message says "branch master"; the ref update says main.
        assert_eq!(event.branch.as_deref(), Some("main"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("33b55f7cb7e7e245323987634f960cf4a6e6bc74"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("Windows Live ID\\fabrikamfiber4@hotmail.com"));
        // The deployed commit's message, where skip markers are read.
        assert_eq!(event.head_commit_message.as_deref(), Some("Fixed bug in web.config file"));
    }

    #[test]
    fn deleted_branch() {
        let body = br#"{"id": "n-1", "eventType": "git.push", "publisherId": "tfs",
            "resource": {"refUpdates": [{"name": "refs/heads/old",
                "oldObjectId": "aad331d8d3b131fa9ae03cf5e53965b51942618a",
                "newObjectId": "0000000000000000000000000000000000000000"}],
              "repository": {"remoteUrl": "https://dev.azure.com/o/p/_git/r", "sshUrl": "git@ssh.dev.azure.com:v3/o/p/r"}}}"#;
        let event = parse_ok(&headers(&[]), body);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("n-1"));
        assert_eq!(event.branch.as_deref(), Some("old"));
        assert_eq!(event.sha, None);
        assert!(event.deleted);
        assert_eq!(event.repository_urls, ["https://dev.azure.com/o/p/_git/r", "git@ssh.dev.azure.com:v3/o/p/r"]);
    }

    #[test]
    fn other_events_are_ignored() {
        let body = br#"{"id": "n-2", "eventType": "git.pullrequest.created", "publisherId": "tfs", "resource": {}}"#;
        let event = parse_ok(&headers(&[]), body);
        assert_eq!((event.provider, event.kind), (Provider::AzureDevOps, EventKind::Ignored));
        assert_eq!(event.event, "git.pullrequest.created");
    }
}
