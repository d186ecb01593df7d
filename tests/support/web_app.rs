//! The tiny web app the real-node tests build and roll out (busybox httpd
//! whose `/version` is the commit it was built from), and the Git, Kubernetes
//! and HTTP steps around it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, ContainerPort, HTTPGetAction, Pod, PodSpec, Probe},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Client, api::ListParams};
use redeploy_operator::api::{Phase, Redeployment};
use redeploy_testenv::RealNode;
use serde_json::json;

use super::{deployment_of, hmac_sha256_signature, object, wait_for};

/// `pod_spec` (JSON) placed on the real node.
pub fn on_node(mut pod_spec: serde_json::Value) -> serde_json::Value {
    RealNode::place_on_node(&mut pod_spec);
    pod_spec
}

/// busybox httpd serving `/www`: the image's `/www/version`, or else
/// `version` (and `/ready`). Ready once `/ready` answers.
pub fn web_deployment(name: &str, image: &str, version: &str) -> serde_json::Value {
    let script = format!(
        "test -f /www/version || {{ mkdir -p /www && echo {version} > /www/version && touch /www/ready; }}; \
         exec httpd -f -p 8080 -h /www"
    );
    let web = Container {
        name: "web".into(),
        image: Some(image.into()),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        ports: Some(vec![ContainerPort { container_port: 8080, ..Default::default() }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(8080),
                ..Default::default()
            }),
            period_seconds: Some(1),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = PodSpec { containers: vec![web], termination_grace_period_seconds: Some(1), ..Default::default() };
    let mut deployment = object(deployment_of(name, 1, pod));
    RealNode::place_on_node(&mut deployment["spec"]["template"]["spec"]);
    deployment
}

/// Waits until Deployment `name` has a ready replica.
pub async fn available(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Deployment> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_for(&format!("Deployment {name} available"), Duration::from_secs(180), Duration::from_millis(250), || async {
        let deployment = deployments.get(name).await?;
        let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok((ready >= 1).then_some(deployment))
    })
    .await
}

/// A plain HTTP GET from this process, for a pod IP (routed to the node).
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?.get(url).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
    Ok(response.text().await?)
}

/// Runs `git args` in `dir` as a test author, without the machine's or user's configuration; its output.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()?;
    anyhow::ensure!(output.status.success(), "git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// The web app's Dockerfile: `/version` is the commit it was built from, and
/// `/ready` (the readiness probe's path) exists only if `ready`.
pub fn web_dockerfile(base: &str, ready: bool) -> String {
    let ready = if ready { " && touch /www/ready" } else { "" };
    format!(
        "FROM {base}\nARG REDEPLOY_GIT_COMMIT\nRUN mkdir -p /www && echo \"$REDEPLOY_GIT_COMMIT\" > /www/version{ready}\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    )
}

/// Commits `dockerfile` in `work` and pushes it to `remote`'s main (a path
/// or a URL); the commit.
pub fn commit(work: &Path, remote: &str, dockerfile: &str, message: &str) -> anyhow::Result<String> {
    std::fs::write(work.join("Dockerfile"), dockerfile)?;
    git(work, &["add", "Dockerfile"])?;
    git(work, &["commit", "-q", "-m", message])?;
    git(work, &["push", "-q", remote, "main"])?;
    git(work, &["rev-parse", "HEAD"])
}

/// A folder of Git repositories (as a node's `serve_git` serves it) holding
/// the bare `team/web.git`, and a work tree on main that pushes to it.
pub struct WebRepository {
    pub dir: tempfile::TempDir,
    work: PathBuf,
    remote: String,
}

impl WebRepository {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work)?;
        git(&work, &["init", "-q", "-b", "main"])?;
        let remote = dir.path().join("team/web.git").display().to_string();
        git(dir.path(), &["init", "-q", "--bare", "-b", "main", &remote])?;
        Ok(Self { dir, work, remote })
    }

    /// Commits `dockerfile` and pushes it to `team/web.git`; the commit.
    pub fn commit(&self, dockerfile: &str, message: &str) -> anyhow::Result<String> {
        commit(&self.work, &self.remote, dockerfile, message)
    }
}

/// A Ready pod labelled `app=<app>` running `digest`; its IP.
pub async fn ready_pod_of_app(client: &Client, namespace: &str, app: &str, digest: &str) -> anyhow::Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let selector = format!("app={app}");
    let pod =
        wait_for(&format!("a Ready pod of {digest}"), Duration::from_secs(120), Duration::from_millis(250), || async {
            let list = pods.list(&ListParams::default().labels(&selector)).await?;
            Ok(list.items.into_iter().find(|p| {
                let status = p.status.as_ref();
                let ready = status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let image_id = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .map(|c| c.image_id.clone())
                    .unwrap_or_default();
                ready && p.metadata.deletion_timestamp.is_none() && image_id.ends_with(digest)
            }))
        })
        .await?;
    pod.status.and_then(|s| s.pod_ip).ok_or_else(|| anyhow::anyhow!("pod without IP"))
}

/// The GitHub push of `sha` to `main` of the repository at `url`, as GitHub shapes it.
pub fn github_push(url: &str, sha: &str) -> serde_json::Value {
    json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "created": false, "deleted": false, "forced": false,
        "repository": {
            "name": "web", "full_name": "team/web", "default_branch": "main",
            "clone_url": url, "git_url": url, "html_url": url,
        },
        "pusher": {"name": "tester", "email": "tester@example.com"},
        "sender": {"login": "tester"},
        "head_commit": {"id": sha, "message": "Serve the commit", "distinct": true},
        "commits": [{"id": sha, "message": "Serve the commit", "distinct": true}],
    })
}

/// POSTs GitHub push `body`, signed with `key`, as delivery `delivery` to
/// `hook` until the hook knows the App, and waits for the Redeployment it
/// accepted to finish.
pub async fn signed_push_finished(
    client: &Client,
    namespace: &str,
    hook: &str,
    body: &[u8],
    delivery: &str,
    key: &[u8],
) -> anyhow::Result<Redeployment> {
    let signature = hmac_sha256_signature(key, body);
    let (status, answer) =
        wait_for("the hook to accept the push", Duration::from_secs(60), Duration::from_millis(250), || {
            let request = reqwest::Client::new()
                .post(hook)
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", delivery)
                .header("X-Hub-Signature-256", &signature)
                .body(body.to_vec());
            async move {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let answer: serde_json::Value = response.json().await?;
                // 404 until the hook server's watch has seen the App's Secret.
                Ok((status != 404).then_some((status, answer)))
            }
        })
        .await?;
    anyhow::ensure!(status == 202, "push {delivery}: {status} {answer}");
    let name = answer["redeployment"].as_str().ok_or_else(|| anyhow::anyhow!("no redeployment in {answer}"))?;
    finished(client, namespace, name, Duration::from_secs(600)).await
}

/// Waits up to `timeout` for Redeployment `name` to exist and finish.
pub async fn finished(client: &Client, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<Redeployment> {
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), namespace);
    wait_for(&format!("Redeployment {name} to finish"), timeout, Duration::from_millis(500), || async {
        let Some(redeployment) = redeployments.get_opt(name).await? else { return Ok(None) };
        let done = redeployment.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished);
        Ok(done.then_some(redeployment))
    })
    .await
}
