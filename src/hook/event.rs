//! What a hook call is about, whatever Git host or registry sent it.

use std::collections::BTreeSet;

use crate::api::{GitInfo, Provider};

/// A hook payload reduced to what planning needs. Every provider parser
/// produces one of these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookEvent {
    pub provider: Provider,
    /// The provider's own event name (`push`, `repo:push`, `Push Hook`, ...).
    pub event: String,
    pub kind: EventKind,
    /// The provider's delivery id (from a header), used to make redeliveries idempotent.
    pub delivery_id: Option<String>,
    /// Every URL the payload gives for the repository (clone, SSH, web), best first.
    pub repository_urls: Vec<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: Option<String>,
    /// The push deleted the branch or tag: nothing is deployed.
    pub deleted: bool,
    /// Who caused the event, as the provider names them.
    pub sender: Option<String>,
    /// For registry events: the image pushed.
    pub image: Option<PushedImage>,
    /// For a GitHub `deployment` event: the Deployment's id, for its statuses.
    pub github_deployment: Option<i64>,
    /// For a GitHub `deployment` event: the environment it deploys to.
    pub environment: Option<String>,
    /// The files the push changed, where the payload lists them (path filters).
    pub changed_files: ChangedFiles,
    /// The message of the pushed head commit, where the payload carries it (skip markers).
    pub head_commit_message: Option<String>,
}

/// The files a push changed, as far as its payload tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ChangedFiles {
    /// Every file added, modified or removed by the pushed commits, as repository paths.
    Listed(BTreeSet<String>),
    /// The payload lists no files (Bitbucket, Azure DevOps, a generic call, a push of no new commits).
    #[default]
    Unknown,
    /// The payload lists the files of only some of the pushed commits.
    Truncated,
}

impl ChangedFiles {
    /// More files than this in one push are not kept: the push counts as [`ChangedFiles::Truncated`].
    pub const MAX_FILES: usize = 10_000;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventKind {
    /// Code was pushed (branch or tag).
    Push,
    /// A GitHub Deployment was created (continuous deploy).
    Deployment,
    /// An image was pushed to a registry.
    ImagePush,
    /// The provider checks the hook works (GitHub `ping`): answered 200, deploys nothing.
    Ping,
    /// An event this operator acknowledges and ignores (e.g. `deployment_status`).
    Ignored,
    /// A call carrying no Git information (empty body, unknown JSON): deploys every Service.
    #[default]
    NoGitInfo,
}

/// An image pushed to a registry, as a registry webhook names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushedImage {
    /// Repository as the registry names it, e.g. `svendowideit/testhook`.
    pub repository: String,
    pub tag: Option<String>,
}

impl HookEvent {
    /// Whether the call carried Git information (rule 1 of the hook semantics).
    pub fn has_git_info(&self) -> bool {
        matches!(self.kind, EventKind::Push | EventKind::Deployment)
            && (!self.repository_urls.is_empty() || self.branch.is_some() || self.tag.is_some() || self.sha.is_some())
    }

    /// The Git information as recorded on a Redeployment: anyone who may
    /// read Redeployments sees it, so credentials in the URL are redacted.
    pub fn git_info(&self) -> Option<GitInfo> {
        self.has_git_info().then(|| GitInfo {
            repository: self.repository_urls.first().map(|url| crate::repo::redact_credentials(url).into_owned()),
            branch: self.branch.clone(),
            tag: self.tag.clone(),
            sha: self.sha.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_repository_carries_no_credentials() {
        let event = HookEvent {
            kind: EventKind::Push,
            repository_urls: vec!["https://deploy:s3cret@git.example.com/acme/shop.git".into()],
            branch: Some("main".into()),
            ..HookEvent::default()
        };
        let recorded = event.git_info().and_then(|git| git.repository).unwrap_or_default();
        assert!(!recorded.contains("s3cret") && !recorded.contains("deploy:"), "{recorded}");
        assert!(recorded.ends_with("@git.example.com/acme/shop.git"), "{recorded}");
    }
}
