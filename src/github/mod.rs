//! The GitHub Deployments API, for continuous deploy: a push becomes a GitHub
//! Deployment of the App's environment, GitHub sends the `deployment` event
//! that deploys, and the Redeployment's progress goes back as deployment
//! statuses. REST v3 (`api.github.com`, or a GitHub Enterprise Server's `/api/v3`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

use crate::{
    api::{App, Phase},
    repo::RepoId,
};

/// The public GitHub's API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// Timeout of each GitHub API request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("spec.github.repository `{0}` does not name a GitHub repository (owner/name)")]
    Repository(String),
    #[error("the GitHub token: {0}")]
    Token(String),
    #[error("GitHub answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("GitHub could not be reached: {0}")]
    Unreachable(#[from] reqwest::Error),
}

/// A repository's Deployments, as one App's token may touch them.
pub struct Deployments {
    http: reqwest::Client,
    /// `<api>/repos/<owner>/<name>`.
    repository: String,
    token: String,
}

#[derive(Deserialize)]
struct Created {
    id: i64,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

impl Deployments {
    /// For `app`'s `spec.github`, with the token read from its Secret.
    pub async fn for_app(
        client: &Client,
        http: &reqwest::Client,
        app: &App,
        api_url: &str,
    ) -> Result<Deployments, GitHubError> {
        let github = app.spec.github.as_ref().ok_or_else(|| GitHubError::Repository(String::new()))?;
        let id = RepoId::parse(&github.repository).ok_or_else(|| GitHubError::Repository(github.repository.clone()))?;
        if id.path.split('/').count() != 2 {
            return Err(GitHubError::Repository(github.repository.clone()));
        }
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        let reference = &github.token_secret_ref;
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&reference.name)
            .await
            .map_err(|e| GitHubError::Token(format!("reading Secret {}: {e}", reference.name)))?
            .ok_or_else(|| GitHubError::Token(format!("Secret {} does not exist", reference.name)))?;
        let token = secret
            .data
            .and_then(|mut data| data.remove(&reference.key))
            .and_then(|value| String::from_utf8(value.0).ok())
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| GitHubError::Token(format!("Secret {} has no key {}", reference.name, reference.key)))?;
        Ok(Deployments::new(http.clone(), api_url, &id.path, token))
    }

    /// `path` is `owner/name`; `http` is the operator's one HTTP client.
    pub fn new(http: reqwest::Client, api_url: &str, path: &str, token: String) -> Deployments {
        Deployments { http, repository: format!("{}/repos/{path}", api_url.trim_end_matches('/')), token }
    }

    /// Creates a Deployment of `git_ref` (a commit, branch or tag) to
    /// `environment`; returns its id. Commit statuses are not required: the
    /// push was already accepted by the hook's own rules.
    pub async fn create(&self, git_ref: &str, environment: &str, description: &str) -> Result<i64, GitHubError> {
        let body = json!({
            "ref": git_ref,
            "environment": environment,
            "description": description,
            "auto_merge": false,
            "required_contexts": [],
        });
        let created: Created = self.post(&format!("{}/deployments", self.repository), &body).await?;
        Ok(created.id)
    }

    /// Posts a status of Deployment `id`.
    pub async fn status(&self, id: i64, state: &str, description: &str) -> Result<(), GitHubError> {
        // GitHub caps descriptions at 140 characters.
        let description = crate::text::bounded(description, 140);
        let body = json!({ "state": state, "description": description });
        let _: serde_json::Value = self.post(&format!("{}/deployments/{id}/statuses", self.repository), &body).await?;
        Ok(())
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<T, GitHubError> {
        let response = self
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let message = response.json::<ErrorBody>().await.ok().and_then(|b| b.message).unwrap_or_default();
            return Err(GitHubError::Api { status: status.as_u16(), message });
        }
        Ok(response.json().await?)
    }
}

/// The deployment status a Redeployment's phase is reported as; `None`
/// while it has not started.
pub fn state_of(phase: Phase) -> Option<&'static str> {
    match phase {
        Phase::Pending => None,
        Phase::Building | Phase::Deploying => Some("in_progress"),
        Phase::Succeeded => Some("success"),
        Phase::Failed => Some("failure"),
        Phase::Superseded | Phase::Canceled => Some("inactive"),
    }
}

/// The environment an App deploys GitHub Deployments to.
pub fn environment(app: &App) -> String {
    app.spec.github.as_ref().and_then(|g| g.environment.clone()).unwrap_or_else(|| app.spec.environment.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finished_phase_has_a_final_state() {
        assert_eq!(state_of(Phase::Pending), None);
        assert_eq!(state_of(Phase::Deploying), Some("in_progress"));
        assert_eq!(state_of(Phase::Succeeded), Some("success"));
        assert_eq!(state_of(Phase::Failed), Some("failure"));
        assert_eq!(state_of(Phase::Canceled), Some("inactive"));
    }

    #[test]
    fn the_api_path_names_the_repository() {
        let deployments =
            Deployments::new(reqwest::Client::new(), "https://ghe.example.com/api/v3/", "octo/app", "t".into());
        assert_eq!(deployments.repository, "https://ghe.example.com/api/v3/repos/octo/app");
    }
}
