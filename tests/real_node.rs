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
use support::{
    apply_yaml, wait_for,
    web_app::{
        WebRepository, available, github_push, http_get, on_node, ready_pod_of_app, signed_push_finished,
        web_deployment, web_dockerfile,
    },
};

/// An HTTP request for `/version`, for `nc`: Debian's static busybox `wget`
/// crashes (SIGSEGV) on this machine and in the images.
const GET_VERSION: &str = "printf 'GET /version HTTP/1.0\\r\\n\\r\\n'";

/// The real node, or `None` (the test then passes without running) where
/// this machine cannot run one.
fn real_node(cp: &'static ControlPlane) -> anyhow::Result<Option<&'static RealNode>> {
    cp.real_node()
}

fn pods_api(client: &Client, namespace: &str) -> Api<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
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

/// POSTs the signed push of `sha` to `hook` and waits for its Redeployment to finish.
async fn push_and_finish(
    client: &Client,
    namespace: &str,
    hook: &str,
    url: &str,
    sha: &str,
) -> anyhow::Result<redeploy_operator::api::Redeployment> {
    let body = serde_json::to_vec(&github_push(url, sha))?;
    let delivery = format!("5bd1b5b0-0f0e-11f1-8e4e-{}", &sha[..12]);
    signed_push_finished(client, namespace, hook, &body, &delivery, b"s3cret").await
}

/// A Ready pod of Deployment `app=web` running `digest`; its IP.
async fn ready_pod_of(client: &Client, namespace: &str, digest: &str) -> anyhow::Result<String> {
    ready_pod_of_app(client, namespace, "web", digest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_github_push_is_built_by_buildkit_on_the_real_node_and_rolled_out() -> anyhow::Result<()> {
    use redeploy_operator::api::Phase;

    let started = Instant::now();
    let (cp, client, namespace) = support::setup("real-build").await?;
    let Some(node) = tokio::task::block_in_place(|| real_node(cp))? else { return Ok(()) };
    // The default build Job carries no toleration: make the real node the only one.
    node.take_all_pods(&client).await?;

    // A repository with a tiny web app whose /version is the commit it was built from.
    let web_repository = WebRepository::new()?;
    let base = node.images().base.clone();
    let sha = web_repository.commit(&web_dockerfile(&base, true), "Serve the commit")?;

    // A Git server the build pod reaches.
    let url = format!("{}/team/web.git", node.serve_git(web_repository.dir.path())?);
    let image_repository = format!("{}/team/web", node.registry());

    // The operator, with the locally built BuildKit as its builder.
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = support::operator_config(hook_port, 4);
    config.settings.builder_image = node.images().buildkit.clone();
    config.settings.insecure_registries = vec![node.registry()];
    let operator = support::start_operator_with(client.clone(), config).await?;

    let web = web_deployment("web", &node.images().base, "initial");
    let objects = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: webhook\nstringData:\n  github: s3cret\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  hook:\n    \
         signatureSecrets:\n      github: {{name: webhook, key: github}}\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: DeploymentProfile\nmetadata:\n  name: quick\nspec:\n  \
         app: shop\n  services: [web]\n  rollout:\n    timeoutSeconds: 30\n    autoRollback: true\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  app: shop\n  \
         target:\n    kind: Deployment\n    name: web\n    container: web\n  git:\n    repository: {url}\n    \
         branch: main\n  build:\n    image: {image_repository}\n---\n{web}\n"
    );
    apply_yaml(&client, &namespace, &objects).await?;
    available(&client, &namespace, "web").await?;

    let hook = support::hook_url(&client, &namespace, "shop").await?;
    let hook = format!("{hook}?deployment_profile=quick");
    let pushed = Instant::now();
    let done = push_and_finish(&client, &namespace, &hook, &url, &sha).await?;
    let status = done.status.clone().unwrap_or_default();
    eprintln!("Redeployment {:?} {:.1}s after the push: {:?}", status.phase, pushed.elapsed().as_secs_f64(), status);
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let result = status.services.first().ok_or_else(|| anyhow::anyhow!("no Service result"))?;
    let image = result.image.clone().unwrap_or_default();
    assert!(image.starts_with(&format!("{image_repository}:{sha}")), "built image {image}");

    // The pushed tag and its digest, as the registry has them, are what the build reported.
    let output = node.crane().args(["digest", &format!("{image_repository}:{sha}")]).output()?;
    anyhow::ensure!(output.status.success(), "crane digest: {}", String::from_utf8_lossy(&output.stderr));
    let digest = String::from_utf8(output.stdout)?.trim().to_string();
    let job = result.build_job.clone().unwrap_or_default();
    let build_pods =
        pods_api(&client, &namespace).list(&ListParams::default().labels(&format!("job-name={job}"))).await?;
    let reported = build_pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref())
        .find_map(|t| t.message.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()))
        .ok_or_else(|| anyhow::anyhow!("build Job {job} reported nothing"))?;
    assert_eq!(
        reported,
        json!({"commit": sha, "image": format!("{image_repository}:{sha}"), "digest": digest}),
        "the build's termination message"
    );
    assert_eq!(
        build_pods.items.first().and_then(|p| p.spec.as_ref()?.node_name.clone()).as_deref(),
        Some(redeploy_testenv::REAL_NODE_NAME)
    );

    // The Deployment runs it: a Ready pod (HTTP probe) of that digest serves the commit.
    let deployment = available(&client, &namespace, "web").await?;
    let pod_ip = ready_pod_of(&client, &namespace, &digest).await?;
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), sha);
    let template_image =
        serde_json::to_value(&deployment)?["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    eprintln!(
        "rolled out {template_image:?} ({digest}); push to serving: {:.1}s, test: {:.1}s",
        pushed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // A Dockerfile that fails: the Redeployment fails with BuildKit's error line.
    let broken = format!("FROM {base}\nRUN echo about to fail && exit 3\n");
    let broken_sha = web_repository.commit(&broken, "Break the build")?;
    let failed = push_and_finish(&client, &namespace, &hook, &url, &broken_sha).await?;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    let message = status.services.first().and_then(|r| r.message.clone()).unwrap_or_default();
    assert!(message.contains("did not complete successfully: exit code: 3"), "{message}");
    eprintln!("failed build reported: {message}");

    // An image that never gets Ready: the rollout fails at the profile's
    // timeout, and the rollback leaves the first commit serving.
    let never_ready = web_repository.commit(&web_dockerfile(&base, false), "Never ready")?;
    let rolled_back = push_and_finish(&client, &namespace, &hook, &url, &never_ready).await?;
    let status = rolled_back.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    assert!(status.services.first().is_some_and(|r| r.rolled_back), "{status:?}");
    let pod_ip = ready_pod_of(&client, &namespace, &digest).await?;
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), sha);
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace).get("web").await?;
    let image = serde_json::to_value(&deployment)?["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image.as_str(), Some(format!("{image_repository}:{sha}").as_str()), "rolled back to the first build");

    // An image-based Service with resolveDigest: each redeployment pins the
    // tag's current digest, and a new digest of the same tag rolls out.
    let worker = format!("{}/team/worker:stable", node.registry());
    let push_worker = |version: &str| -> anyhow::Result<String> {
        let dir = web_repository.dir.path().join(format!("layer-{version}"));
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::write(dir.join("www/version"), format!("{version}\n"))?;
        std::fs::write(dir.join("www/ready"), "")?;
        let layer = dir.join("layer.tar");
        let tar = std::process::Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "-C",
                &dir.display().to_string(),
                "-cf",
                &layer.display().to_string(),
                "www",
            ])
            .status()?;
        anyhow::ensure!(tar.success(), "tar failed");
        let output =
            node.crane().args(["append", "-b", &base, "-f", &layer.display().to_string(), "-t", &worker]).output()?;
        anyhow::ensure!(output.status.success(), "crane append: {}", String::from_utf8_lossy(&output.stderr));
        let pushed = String::from_utf8(output.stdout)?.trim().to_string();
        Ok(pushed.rsplit_once('@').map(|(_, d)| d.to_string()).unwrap_or_default())
    };
    let first_worker = push_worker("worker-1")?;
    let objects = format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: worker\nspec:\n  app: shop\n  \
         target:\n    kind: Deployment\n    name: worker\n    container: web\n  image:\n    reference: {worker}\n    \
         resolveDigest: true\n---\n{}\n",
        web_deployment("worker", &worker, "unpinned")
    );
    apply_yaml(&client, &namespace, &objects).await?;
    let redeployments = Api::<redeploy_operator::api::Redeployment>::namespaced(client.clone(), &namespace);
    let pin = |name: &'static str| {
        let redeployments = redeployments.clone();
        async move {
            let object = json!({
                "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "metadata": {"name": name},
                "spec": {"app": "shop", "trigger": {"provider": "manual", "event": "test"},
                         "plan": [{"service": "worker", "action": "pinDigest"}]},
            });
            redeployments.create(&Default::default(), &serde_json::from_value(object)?).await?;
            wait_for(&format!("Redeployment {name}"), Duration::from_secs(180), Duration::from_millis(250), || async {
                let redeployment = redeployments.get(name).await?;
                let status = redeployment.status.unwrap_or_default();
                Ok(status.phase.is_some_and(Phase::is_finished).then_some(status))
            })
            .await
        }
    };
    let status = pin("pin-worker-1").await?;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let pod_ip = ready_pod_of_app(&client, &namespace, "worker", &first_worker).await?;
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), "worker-1");
    let second_worker = push_worker("worker-2")?;
    assert_ne!(first_worker, second_worker);
    let status = pin("pin-worker-2").await?;
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let pod_ip = ready_pod_of_app(&client, &namespace, "worker", &second_worker).await?;
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), "worker-2");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace).get("worker").await?;
    let image = serde_json::to_value(&deployment)?["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    let pinned = format!("{}/team/worker@{second_worker}", node.registry());
    assert_eq!(image.as_str(), Some(pinned.as_str()));

    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());

    operator.shutdown().await;
    Ok(())
}
