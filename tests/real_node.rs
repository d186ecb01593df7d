//! Pods that really run: the test control plane's real node (kubelet,
//! containerd, runc, CNI, kube-proxy; see `redeploy_testenv::RealNode`) runs
//! the images built on this machine and pulled from its registry. Skipped,
//! with the reason printed, where the machine cannot run a node.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{Pod, Service},
};
use kube::{Api, Client, api::ListParams};
use redeploy_testenv::{ControlPlane, RealNode};
use serde_json::json;
use support::{apply_yaml, wait_for};

/// An HTTP request for `/version`, for `nc`: Debian's static busybox `wget`
/// crashes (SIGSEGV) on this machine and in the images.
const GET_VERSION: &str = "printf 'GET /version HTTP/1.0\\r\\n\\r\\n'";

/// The real node, or `None` (the test then passes without running) where
/// this machine cannot run one.
fn real_node(cp: &'static ControlPlane) -> anyhow::Result<Option<&'static RealNode>> {
    cp.real_node()
}

fn on_node(mut pod_spec: serde_json::Value) -> serde_json::Value {
    RealNode::place_on_node(&mut pod_spec);
    pod_spec
}

/// busybox httpd serving `/version` = `version`, Ready once it answers.
fn web_deployment(name: &str, image: &str, version: &str) -> serde_json::Value {
    let script = format!("mkdir -p /www && echo {version} > /www/version && exec httpd -f -p 8080 -h /www");
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": on_node(json!({
                    "containers": [{
                        "name": "web", "image": image,
                        "command": ["sh", "-c", script],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/version", "port": 8080},
                            "periodSeconds": 1,
                        },
                    }],
                    "terminationGracePeriodSeconds": 1,
                })),
            },
        },
    })
}

async fn available(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Deployment> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_for(&format!("Deployment {name} available"), Duration::from_secs(180), Duration::from_millis(250), || async {
        let deployment = deployments.get(name).await?;
        let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok((ready >= 1).then_some(deployment))
    })
    .await
}

/// A plain HTTP GET from this process, for a pod IP (routed to the node).
async fn http_get(url: &str) -> anyhow::Result<String> {
    let response = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?.get(url).send().await?;
    anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
    Ok(response.text().await?)
}

#[tokio::test]
async fn a_deployment_runs_on_the_real_node_behind_its_cluster_ip() -> anyhow::Result<()> {
    let started = Instant::now();
    let (cp, client, namespace) = support::setup("real-node").await?;
    let Some(node) = real_node(cp)? else { return Ok(()) };
    eprintln!("real node up after {:.1}s", started.elapsed().as_secs_f64());

    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    });
    let objects = [web_deployment("web", &node.images().base, "v1"), service];
    let yaml: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    apply_yaml(&client, &namespace, &yaml).await?;

    available(&client, &namespace, "web").await?;
    eprintln!("Deployment web available after {:.1}s", started.elapsed().as_secs_f64());

    // The probe passed on a real kubelet: the pod runs our image on the real node.
    let pods =
        Api::<Pod>::namespaced(client.clone(), &namespace).list(&ListParams::default().labels("app=web")).await?;
    let pod = pods.items.first().ok_or_else(|| anyhow::anyhow!("no pod of Deployment web"))?;
    let spec = pod.spec.as_ref().ok_or_else(|| anyhow::anyhow!("pod without spec"))?;
    assert_eq!(spec.node_name.as_deref(), Some(redeploy_testenv::REAL_NODE_NAME));
    let status = pod.status.as_ref().ok_or_else(|| anyhow::anyhow!("pod without status"))?;
    let pod_ip = status.pod_ip.clone().ok_or_else(|| anyhow::anyhow!("pod without IP"))?;
    let image_id = status.container_statuses.as_ref().and_then(|c| c.first()).map(|c| c.image_id.clone());
    let base_digest = node.images().base.rsplit_once('@').map(|(_, d)| d.to_string());
    assert!(
        image_id.as_deref().zip(base_digest.as_deref()).is_some_and(|(id, digest)| id.ends_with(digest)),
        "imageID {image_id:?} is not the pushed base image {:?}",
        node.images().base
    );

    // From this process, straight to the pod.
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), "v1");

    // From the node, through kube-proxy's rules for the ClusterIP.
    let cluster_ip = Api::<Service>::namespaced(client.clone(), &namespace)
        .get("web")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or_else(|| anyhow::anyhow!("Service web has no ClusterIP"))?;
    let body =
        wait_for("the ClusterIP to answer from the node", Duration::from_secs(60), Duration::from_millis(500), || {
            let mut command = node.command_in_node("sh");
            command.args(["-c", &format!("{GET_VERSION} | busybox nc -w 3 {cluster_ip} 80")]);
            async move {
                let output = command.output()?;
                let response = String::from_utf8_lossy(&output.stdout).to_string();
                Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_string()))
            }
        })
        .await?;
    assert_eq!(body, "v1");

    // From another pod: the ClusterIP of web, and kubernetes.default (the API
    // server: plain HTTP to its TLS port gets Go's telltale 400).
    let script = format!(
        "{GET_VERSION} | nc -w 5 {cluster_ip} 80 | tail -n 1 > /tmp/web && \
         {GET_VERSION} | nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT > /tmp/api; \
         grep -q 'HTTP request to an HTTPS server' /tmp/api && cat /tmp/web > /dev/termination-log && \
         echo reached web and the API server"
    );
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "client"},
        "spec": {
            "backoffLimit": 3,
            "template": {"spec": on_node(json!({
                "restartPolicy": "Never",
                "containers": [{"name": "client", "image": node.images().base, "command": ["sh", "-c", script]}],
            }))},
        },
    });
    apply_yaml(&client, &namespace, &format!("---\n{job}\n")).await?;
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace);
    wait_for("Job client to succeed", Duration::from_secs(120), Duration::from_millis(250), || async {
        let job = jobs.get("client").await?;
        Ok(job.status.and_then(|s| s.succeeded).filter(|n| *n >= 1))
    })
    .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels("job-name=client"))
        .await?;
    let message = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref())
        .find(|t| t.exit_code == 0)
        .and_then(|t| t.message.clone());
    assert_eq!(message.as_deref().map(str::trim), Some("v1"));

    // The API server reaches the kubelet (logs, as the operator reads a failed build's).
    let pod = pods.items.iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
    let name = pod.and_then(|p| p.metadata.name.clone()).ok_or_else(|| anyhow::anyhow!("no succeeded client pod"))?;
    let logs = Api::<Pod>::namespaced(client.clone(), &namespace).logs(&name, &Default::default()).await?;
    assert!(logs.contains("reached web and the API server"), "logs of {name}: {logs:?}");
    eprintln!("test done after {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
