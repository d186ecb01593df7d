//! GitHub: `push`, `ping` and `deployment` (`X-GitHub-Event`). The push shape
//! is shared by Gitea, Forgejo, Gogs and header-less GitHub-like payloads.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::Definition;
use super::{
    Handling, Json, ParseError, Push, RefName, commit_sha, deserialize, event, first, is_commit_sha, missing, urls,
};
use crate::api::Provider;
use crate::hook::event::{ChangedFiles, EventKind, HookEvent};
use crate::hook::signature::SignatureCheck;

const PROVIDER: Provider = Provider::GitHub;

pub(super) const DEFINITION: Definition = Definition {
    provider: PROVIDER,
    display_name: "GitHub",
    metrics_label: "github",
    signature: Some(SignatureCheck::GitHubSha256),
    handling,
    parse: |_, event, payload| parse(event, payload),
    detect: |headers| super::named_by(headers, "x-github-event", &["x-github-delivery"]),
};

pub(super) fn handling(event: &str) -> Handling {
    match event {
        "push" | "deployment" => Handling::Parse,
        "ping" => Handling::Ping,
        _ => Handling::Ignore,
    }
}

pub(super) fn parse(event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    match event_name {
        "push" => {
            let push: PushPayload = deserialize(PROVIDER, event_name, payload)?;
            let sender = first([
                push.sender.as_ref().and_then(|s| s.login.as_deref()),
                push.pusher.as_ref().and_then(|p| p.name.as_deref()),
            ]);
            push.into_event(PROVIDER, event_name, sender)
        }
        "ping" => {
            let ping: PingPayload = deserialize(PROVIDER, event_name, payload)?;
            Ok(HookEvent {
                repository_urls: ping.repository.as_ref().map(Repository::urls).unwrap_or_default(),
                sender: first([ping.sender.as_ref().and_then(|s| s.login.as_deref())]),
                ..event(PROVIDER, event_name, EventKind::Ping)
            })
        }
        "deployment" => deployment(event_name, payload),
        _ => Ok(event(PROVIDER, event_name, EventKind::Ignored)),
    }
}

/// A repository as GitHub, Gitea, Forgejo and Gogs describe it.
#[derive(Debug, Deserialize)]
pub(super) struct Repository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
    git_url: Option<String>,
}

impl Repository {
    /// Clone URL first, then SSH, web and `git://` URLs.
    pub(super) fn urls(&self) -> Vec<String> {
        urls([self.clone_url.as_deref(), self.ssh_url.as_deref(), self.html_url.as_deref(), self.git_url.as_deref()])
    }
}

/// A user: GitHub names it by `login`, Gitea and Gogs also by `username`;
/// GitHub's `pusher` only has `name`.
#[derive(Debug, Deserialize)]
pub(super) struct Account {
    pub(super) login: Option<String>,
    pub(super) username: Option<String>,
    pub(super) name: Option<String>,
}

/// The GitHub-like push payload.
#[derive(Debug, Deserialize)]
pub(super) struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    deleted: Option<bool>,
    repository: Option<Repository>,
    pub(super) pusher: Option<Account>,
    pub(super) sender: Option<Account>,
    commits: Option<Commits>,
    head_commit: Option<Commit>,
    /// Timeline events (not webhooks) carry these: the push's real number of commits.
    size: Option<u64>,
    distinct_size: Option<u64>,
    /// Gitea and Forgejo: the push's real number of commits, of which `commits` may hold fewer.
    total_commits: Option<u64>,
}

/// A pushed commit as GitHub, Gitea, Forgejo, Gogs and GitLab describe it.
#[derive(Debug, Deserialize)]
pub(super) struct Commit {
    id: Option<String>,
    message: Option<String>,
    added: Option<Vec<String>>,
    modified: Option<Vec<String>>,
    removed: Option<Vec<String>>,
}

/// GitHub lists at most 3,000 files per commit; a list this long may have been cut.
const MOST_FILES_PER_COMMIT: usize = 3_000;
/// GitHub's timeline events carry at most 20 commits, and GitLab's payloads too: a push
/// listing this many may have had more, whose files are then missing.
pub(super) const MOST_COMMITS_LISTED: usize = 20;

/// A payload's `commits`, read one at a time and kept only as far as planning needs
/// them: the files of the first [`MOST_COMMITS_LISTED`] commits (a push listing more
/// counts as truncated anyway), their ids and messages, and the last one's message.
/// A push of thousands of commits then costs no more heap than one of twenty.
#[derive(Debug, Default)]
pub(super) struct Commits {
    count: usize,
    files: BTreeSet<String>,
    /// Some commit listed its files.
    listed: bool,
    /// Some file list may have been cut, or there were too many files to keep.
    cut: bool,
    /// `(id, message)` of the first commits.
    heads: Vec<(Option<String>, Option<String>)>,
    last_message: Option<String>,
}

impl Commits {
    fn add(&mut self, commit: Commit) {
        self.count += 1;
        let lists = [commit.added, commit.modified, commit.removed];
        if self.count < MOST_COMMITS_LISTED {
            for list in lists.into_iter().flatten() {
                self.listed = true;
                self.cut |= list.len() >= MOST_FILES_PER_COMMIT;
                for path in list {
                    let path = path.trim().trim_start_matches('/');
                    if !path.is_empty() && !self.files.contains(path) && self.files.len() < ChangedFiles::MAX_FILES {
                        self.files.insert(path.to_owned());
                    } else if self.files.len() >= ChangedFiles::MAX_FILES {
                        self.cut = true;
                    }
                }
            }
            self.heads.push((commit.id, commit.message.clone()));
        }
        self.last_message = commit.message;
    }

    /// The files these commits changed; `total` is the push's real number of commits when the payload says it.
    pub(super) fn changed_files(&mut self, total: Option<u64>) -> ChangedFiles {
        let complete = self.count < MOST_COMMITS_LISTED && total.is_none_or(|t| t <= self.count as u64) && !self.cut;
        match (self.listed, complete) {
            (false, _) => ChangedFiles::Unknown,
            (true, false) => ChangedFiles::Truncated,
            (true, true) => ChangedFiles::Listed(std::mem::take(&mut self.files)),
        }
    }

    /// The message of `head` (GitHub's `head_commit`), else of the commit `head_sha`
    /// names, else of the last one listed (the payloads list the oldest first).
    pub(super) fn head_message(&self, head: Option<&Commit>, head_sha: Option<&str>) -> Option<String> {
        if let Some(message) = head.and_then(|c| c.message.clone()) {
            return Some(message);
        }
        let head_sha = head_sha.map(str::trim).filter(|s| !s.is_empty());
        let by_id = self.heads.iter().find(|(id, _)| id.is_some() && id.as_deref().map(str::trim) == head_sha);
        by_id.map(|(_, message)| message.clone()).unwrap_or_else(|| self.last_message.clone())
    }
}

impl<'de> Deserialize<'de> for Commits {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> serde::de::Visitor<'de> for Each {
            type Value = Commits;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of commits")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Commits, A::Error> {
                let mut commits = Commits::default();
                while let Some(commit) = seq.next_element::<Commit>()? {
                    commits.add(commit);
                }
                Ok(commits)
            }
        }
        deserializer.deserialize_seq(Each)
    }
}

impl PushPayload {
    pub(super) fn into_event(
        self,
        provider: Provider,
        event_name: &str,
        sender: Option<String>,
    ) -> Result<HookEvent, ParseError> {
        let git_ref = self
            .git_ref
            .as_deref()
            .filter(|git_ref| !git_ref.trim().is_empty())
            .ok_or_else(|| missing(provider, event_name, "ref"))?;
        let total = [self.size, self.distinct_size, self.total_commits].into_iter().flatten().max();
        let mut commits = self.commits.unwrap_or_default();
        let changed_files = commits.changed_files(total);
        let head_commit_message = commits.head_message(self.head_commit.as_ref(), self.after.as_deref());
        let event = Push {
            provider,
            event: event_name,
            ref_name: RefName::parse(git_ref),
            sha: self.after.as_deref(),
            deleted: self.deleted == Some(true),
            repository_urls: self.repository.as_ref().map(Repository::urls).unwrap_or_default(),
            sender,
        }
        .into_event();
        Ok(HookEvent { changed_files, head_commit_message, ..event })
    }
}

#[derive(Debug, Deserialize)]
struct PingPayload {
    repository: Option<Repository>,
    sender: Option<Account>,
}

#[derive(Debug, Deserialize)]
struct DeploymentPayload {
    deployment: Option<Deployment>,
    repository: Option<Repository>,
    sender: Option<Account>,
}

#[derive(Debug, Deserialize)]
struct Deployment {
    id: Option<i64>,
    sha: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    environment: Option<String>,
    creator: Option<Account>,
}

/// A Deployment names a commit (`sha`) and the ref it was asked for, which is
/// a branch, a tag or the commit itself. A bare name is taken as a branch,
/// unless it is the commit.
fn deployment(event_name: &str, payload: Json<'_>) -> Result<HookEvent, ParseError> {
    let payload: DeploymentPayload = deserialize(PROVIDER, event_name, payload)?;
    let deployment = payload.deployment.ok_or_else(|| missing(PROVIDER, event_name, "deployment"))?;
    let mut sha = commit_sha(deployment.sha.as_deref());
    let (mut branch, mut tag) = (None, None);
    if let Some(git_ref) = deployment.git_ref.as_deref().map(str::trim) {
        let is_commit = sha.as_deref() == Some(git_ref) || is_commit_sha(git_ref);
        if is_commit {
            sha = sha.or_else(|| commit_sha(Some(git_ref)));
        } else {
            match RefName::parse(git_ref) {
                RefName::Branch(name) => branch = Some(name),
                RefName::Tag(name) => tag = Some(name),
                RefName::Other => {}
            }
        }
    }
    if sha.is_none() && branch.is_none() && tag.is_none() {
        return Err(missing(PROVIDER, event_name, "deployment.sha"));
    }
    Ok(HookEvent {
        repository_urls: payload.repository.as_ref().map(Repository::urls).unwrap_or_default(),
        branch,
        tag,
        sha,
        sender: first([
            deployment.creator.as_ref().and_then(|c| c.login.as_deref()),
            payload.sender.as_ref().and_then(|s| s.login.as_deref()),
        ]),
        github_deployment: deployment.id,
        environment: first([deployment.environment.as_deref()]),
        ..event(PROVIDER, event_name, EventKind::Deployment)
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, parse_ok};
    use crate::api::Provider;
    use crate::hook::event::EventKind;

    const PUSH_NEW_BRANCH: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/push-new-branch.json");
    const PUSH_TAG_DELETED: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/push-tag-deleted.json");
    const PING: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/ping.json");
    const DEPLOYMENT: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/deployment.json");
    const DEPLOYMENT_STATUS: &[u8] = include_bytes!("../../../tests/fixtures/webhooks/github/deployment-status.json");

    const HELLO_WORLD: [&str; 4] = [
        "https://github.com/Codertocat/Hello-World.git",
        "git@github.com:Codertocat/Hello-World.git",
        "https://github.com/Codertocat/Hello-World",
        "git://github.com/Codertocat/Hello-World.git",
    ];

    fn github(event: &str) -> http::HeaderMap {
        headers(&[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("Content-Type", "application/json"),
        ])
    }

    #[test]
    fn push_to_a_branch() {
        let event = parse_ok(&github("push"), PUSH_NEW_BRANCH);
        assert_eq!(event.provider, Provider::GitHub);
        assert_eq!(event.event, "push");
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(event.repository_urls, HELLO_WORLD);
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("Codertocat"));
        assert!(event.has_git_info());
    }

    #[test]
    fn push_deleting_a_tag() {
        let event = parse_ok(&github("push"), PUSH_TAG_DELETED);
        assert_eq!(event.provider, Provider::GitHub);
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(event.repository_urls, HELLO_WORLD);
        assert_eq!(event.branch, None);
        assert_eq!(event.tag.as_deref(), Some("simple-tag"));
        // `after` is forty zeros: there is no commit to deploy.
        assert_eq!(event.sha, None);
        assert!(event.deleted);
        assert_eq!(event.sender.as_deref(), Some("Codertocat"));
    }

    #[test]
    fn ping() {
        let event = parse_ok(&github("ping"), PING);
        assert_eq!(event.provider, Provider::GitHub);
        assert_eq!(event.event, "ping");
        assert_eq!(event.kind, EventKind::Ping);
        assert_eq!(event.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(
            event.repository_urls,
            [
                "https://github.com/Octocoders/Hello-World.git",
                "git@github.com:Octocoders/Hello-World.git",
                "https://github.com/Octocoders/Hello-World",
                "git://github.com/Octocoders/Hello-World.git",
            ]
        );
        assert_eq!((&event.branch, &event.tag, &event.sha), (&None, &None, &None));
        assert!(!event.deleted);
        assert!(!event.has_git_info());
    }

    #[test]
    fn ping_without_a_body_is_still_a_ping() {
        let event = parse_ok(&github("ping"), b"");
        assert_eq!((event.provider, event.kind), (Provider::GitHub, EventKind::Ping));
    }

    #[test]
    fn deployment() {
        let event = parse_ok(&github("deployment"), DEPLOYMENT);
        assert_eq!(event.provider, Provider::GitHub);
        assert_eq!(event.event, "deployment");
        assert_eq!(event.kind, EventKind::Deployment);
        assert_eq!(event.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(event.repository_urls, HELLO_WORLD);
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.tag, None);
        assert_eq!(event.sha.as_deref(), Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e"));
        assert!(!event.deleted);
        assert_eq!(event.sender.as_deref(), Some("Codertocat"));
        assert_eq!(event.github_deployment, Some(145988746));
        assert!(event.has_git_info());
    }

    #[test]
    fn deployment_of_a_commit_names_no_branch() {
        let body = br#"{"deployment": {"sha": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
            "ref": "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"}}"#;
        let event = parse_ok(&github("deployment"), body);
        assert_eq!(event.kind, EventKind::Deployment);
        assert_eq!(event.branch, None);
        assert_eq!(event.sha.as_deref(), Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e"));
    }

    #[test]
    fn deployment_status_is_ignored() {
        let event = parse_ok(&github("deployment_status"), DEPLOYMENT_STATUS);
        assert_eq!(event.provider, Provider::GitHub);
        assert_eq!(event.event, "deployment_status");
        assert_eq!(event.kind, EventKind::Ignored);
        assert_eq!(event.delivery_id.as_deref(), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!event.has_git_info());
    }

    #[test]
    fn other_events_are_ignored_whatever_the_body() {
        for body in [&b"not json"[..], b"", b"[]"] {
            let event = parse_ok(&github("pull_request"), body);
            assert_eq!((event.provider, event.kind), (Provider::GitHub, EventKind::Ignored));
        }
    }

    #[test]
    fn push_without_ref_is_an_error_naming_it() {
        let error = super::super::parse(&github("push"), br#"{"after": "abc"}"#).unwrap_err();
        assert_eq!(error.to_string(), "GitHub push payload has no `ref`");
    }

    #[test]
    fn push_with_a_field_of_the_wrong_type_is_an_error() {
        let error = super::super::parse(&github("push"), br#"{"ref": 5}"#).unwrap_err();
        assert!(
            error.to_string().starts_with("GitHub push payload does not have the expected shape: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn push_to_a_non_branch_ref_is_ignored() {
        let body = br#"{"ref": "refs/notes/commits", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#;
        let event = parse_ok(&github("push"), body);
        assert_eq!(event.kind, EventKind::Ignored);
        assert!(!event.has_git_info());
    }

    #[test]
    fn form_encoded_payload_is_read() {
        let body = format!("payload={}", url::form_urlencoded::byte_serialize(PUSH_NEW_BRANCH).collect::<String>());
        let mut headers = github("push");
        headers.insert("content-type", http::HeaderValue::from_static("application/x-www-form-urlencoded"));
        let event = parse_ok(&headers, body.as_bytes());
        assert_eq!(event.kind, EventKind::Push);
        assert_eq!(event.branch.as_deref(), Some("master"));
        assert_eq!(event.sha.as_deref(), Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
    }
}
