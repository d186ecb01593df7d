//! GitHub continuous deploy on the real control plane. GitHub's API cannot be
//! reached from the tests: a local server stands in for it, speaking the
//! Deployments REST API (`POST /repos/{owner}/{repo}/deployments` and
//! `.../deployments/{id}/statuses`, bearer token, JSON answers) and recording
//! every call. The webhook payloads are the shared GitHub fixtures.

mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use redeploy_operator::api::{App, Phase, Redeployment};
use serde_json::{Value, json};
use support::eventually;

const TOKEN: &str = "ghp_test_token";
const PUSH: &[u8] = include_bytes!("fixtures/webhooks/github/push-new-branch.json");
const DEPLOYMENT: &[u8] = include_bytes!("fixtures/webhooks/github/deployment.json");

/// A call the stand-in for GitHub received: path and JSON body.
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// Starts the stand-in for GitHub's API; returns its base URL and its record of calls.
async fn fake_github() -> anyhow::Result<(String, Calls)> {
    async fn record(
        State(calls): State<Calls>,
        headers: HeaderMap,
        path: String,
        body: Value,
    ) -> (StatusCode, Json<Value>) {
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
        if !authorized {
            return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Bad credentials" })));
        }
        let mut calls = calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push((path, body.clone()));
        let id = 1000 + i64::try_from(calls.len()).unwrap_or_default();
        (StatusCode::CREATED, Json(json!({ "id": id, "state": body.get("state"), "ref": body.get("ref") })))
    }
    let calls = Calls::default();
    let app = Router::new()
        .route(
            "/repos/{owner}/{repo}/deployments",
            post(|state, headers, Path((owner, repo)): Path<(String, String)>, Json(body): Json<Value>| {
                record(state, headers, format!("/repos/{owner}/{repo}/deployments"), body)
            }),
        )
        .route(
            "/repos/{owner}/{repo}/deployments/{id}/statuses",
            post(|state, headers, Path((owner, repo, id)): Path<(String, String, String)>, Json(body): Json<Value>| {
                record(state, headers, format!("/repos/{owner}/{repo}/deployments/{id}/statuses"), body)
            }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{address}"), calls))
}

/// The pushed commit: the stand-in builder reports it.
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn objects() -> String {
    let builder = support::stand_in_builder(&support::build_report("registry.example.com/web", SHA));
    OBJECTS.replace("STAND_IN_BUILDER", &builder.to_string())
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: github-token}
stringData: {token: ghp_test_token}
---
apiVersion: redeploy.dev/v1alpha1
kind: App
metadata: {name: hello}
spec:
  environment: production
  github:
    continuousDeploy: true
    repository: https://github.com/Codertocat/Hello-World
    tokenSecretRef: {name: github-token, key: token}
---
apiVersion: redeploy.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  app: hello
  target: {name: web}
  git: {repository: "https://github.com/Codertocat/Hello-World", branch: master}
  build: {image: registry.example.com/web, template: STAND_IN_BUILDER}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "registry.example.com/web:1"}]}
"#;

fn calls_to(calls: &Calls, suffix: &str) -> Vec<Value> {
    let calls = calls.lock().unwrap_or_else(|e| e.into_inner());
    // GitHub's paths are case-insensitive.
    calls.iter().filter(|(path, _)| path.to_lowercase().ends_with(suffix)).map(|(_, body)| body.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_becomes_a_github_deployment_whose_event_deploys_and_gets_statuses() -> anyhow::Result<()> {
    let (control_plane, client, namespace) = support::setup("github").await?;
    let (github, calls) = fake_github().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = support::operator_config(port, 4);
    config.settings.github_api_url = github;
    let operator = support::start_operator_with(control_plane.client().await?, config).await?;

    support::apply_yaml(&client, &namespace, &objects()).await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    eventually("the App's hook and Service", || async {
        let status = apps.get("hello").await?.status.unwrap_or_default();
        Ok((status.hook.is_some() && status.services == ["web"]).then_some(()))
    })
    .await?;
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace).get("hello-hook").await?;
    let url = support::secret_value(&secret, "url")?;
    let post = |event: &'static str, delivery: &'static str, body: &'static [u8]| {
        let url = url.clone();
        async move {
            let response = reqwest::Client::new()
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", delivery)
                .body(body)
                .send()
                .await?;
            anyhow::Ok((response.status().as_u16(), response.json::<Value>().await?))
        }
    };
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);

    // The push creates a GitHub Deployment of the pushed commit, and nothing here.
    let (status, body) = post("push", "push-1", PUSH).await?;
    assert_eq!(status, 202, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("GitHub Deployment"), "{body}");
    let created = calls_to(&calls, "/repos/codertocat/hello-world/deployments");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["ref"], "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert_eq!(created[0]["environment"], "production");
    assert_eq!(body["githubDeployment"], 1001);
    assert!(redeployments.list(&Default::default()).await?.items.is_empty(), "the push stores nothing");

    // GitHub's `deployment` event deploys, and the progress goes back as statuses.
    let (status, body) = post("deployment", "deployment-1", DEPLOYMENT).await?;
    assert_eq!(status, 202, "{body}");
    let name = body["redeployment"].as_str().unwrap_or_default().to_string();
    let stored = redeployments.get(&name).await?;
    assert_eq!(stored.spec.github_deployment, Some(145988746));
    let finished = eventually("the Redeployment to finish and GitHub to hear of it", || async {
        let status = redeployments.get(&name).await?.status.unwrap_or_default();
        let told = status.github_state.as_deref() == Some("success");
        Ok((status.phase.is_some_and(Phase::is_finished) && told).then_some(status))
    })
    .await?;
    assert_eq!(finished.phase, Some(Phase::Succeeded), "{finished:?}");
    let states: Vec<Value> =
        calls_to(&calls, "/deployments/145988746/statuses").iter().map(|b| b["state"].clone()).collect();
    assert_eq!(states, [json!("in_progress"), json!("success")]);
    operator.shutdown().await;
    Ok(())
}
