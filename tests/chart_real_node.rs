//! The operator as it ships, on the real node: the image `make image` builds
//! (hack/build-operator-image.sh), pushed to the node's registry and installed
//! with the chart as the README says. The operator runs as pods (non-root,
//! read-only root filesystem, probes passing), the hook is reached from this
//! machine through the chart's NodePort Service, a signed GitHub push goes
//! through the in-cluster operator to a BuildKit build and a rollout, a
//! `helm upgrade` to a new image and the loss of the leader's pod (two
//! replicas) lose no accepted call, and `helm uninstall` leaves only what the
//! chart's README says stays. Skipped, with the reason printed, where the
//! machine cannot run a node.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client, api::ListParams};
use redeploy_operator::api::{Phase, Redeployment};
use redeploy_testenv::{ControlPlane, RealNode};
use serde_json::json;
use support::{
    apply_yaml,
    chart::{CHART, run},
    wait_for,
    web_app::{WebRepository, finished, github_push, signed_push_finished, web_dockerfile},
};

const RELEASE: &str = "redeploy-operator";

/// `make image IMAGE=<reference>`: the script builds (or reuses) the image
/// tarball and pushes it. The first run builds the release binary
/// (`PROFILE=dev` in the environment takes the debug one instead).
fn make_image(reference: &str) -> anyhow::Result<PathBuf> {
    let bin = redeploy_testenv::node_binaries()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/build-operator-image.sh");
    let output = run(Command::new("bash").arg(script).arg(&bin).env("IMAGE", reference))?;
    Ok(PathBuf::from(output.lines().last().unwrap_or_default().trim()))
}

/// The digest `crane` reads for `reference`.
fn digest(node: &RealNode, reference: &str) -> anyhow::Result<String> {
    Ok(run(node.crane().args(["digest", reference]))?.trim().to_string())
}

/// busybox httpd serving the commit the image was built from; Ready once `/ready` answers.
fn web_objects(base: &str, url: &str, image_repository: &str) -> String {
    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web", "image": base,
                        "command": ["sh", "-c", "test -f /www/version || { mkdir -p /www && echo initial > /www/version && touch /www/ready; }; exec httpd -f -p 8080 -h /www"],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
                    }],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        },
    });
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: webhook\nstringData:\n  github: s3cret\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  hook:\n    \
         signatureSecrets:\n      github: {{name: webhook, key: github}}\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  app: shop\n  \
         target:\n    kind: Deployment\n    name: web\n    container: web\n  git:\n    repository: {url}\n    \
         branch: main\n  build:\n    image: {image_repository}\n---\n{web}\n"
    )
}

/// An App whose every call redeploys an image-based Service of a Deployment
/// scaled to 0: each accepted call is one Redeployment that finishes at once.
fn stream_objects(base: &str) -> String {
    let worker = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "worker"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {
                "metadata": {"labels": {"app": "worker"}},
                "spec": {"containers": [{"name": "worker", "image": base}]},
            },
        },
    });
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: stream\nspec:\n  history:\n    \
         limit: 1000\n---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: worker\nspec:\n  \
         app: stream\n  target:\n    kind: Deployment\n    name: worker\n    container: worker\n  image:\n    \
         reference: {base}\n---\n{worker}\n"
    )
}

/// What a stream of hook calls got.
#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    /// Redeployment names of the calls answered 202, in order.
    accepted: Vec<String>,
    unavailable: usize,
    /// Other answers, by status.
    other: BTreeMap<u16, usize>,
    /// Calls with no answer (connection refused or reset, timeout).
    unanswered: usize,
}

impl Tally {
    fn answered(&self) -> usize {
        self.calls - self.unanswered
    }
}

/// POSTs `url` `rate` times a second, each call on a connection of its own,
/// until `stop` is set.
async fn stream(url: String, rate: u32, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Tally> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).pool_max_idle_per_host(0).build()?;
    let mut calls = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    while !*stop.borrow() {
        tick.tick().await;
        let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
        calls.spawn(async move {
            let answer = async {
                let response = client.post(&url).send().await?;
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                anyhow::Ok((status, body))
            }
            .await;
            let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
            tally.calls += 1;
            match answer {
                Ok((202, body)) => tally.accepted.push(body["redeployment"].as_str().unwrap_or_default().to_string()),
                Ok((503, _)) => tally.unavailable += 1,
                Ok((status, _)) => *tally.other.entry(status).or_default() += 1,
                Err(_) => tally.unanswered += 1,
            }
        });
    }
    while calls.join_next().await.is_some() {}
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(tally)
}

/// Every accepted call of `tally` ended in exactly one finished Redeployment;
/// `(lost, doubled)` besides what the assertions check.
async fn check_each_accepted_finished_once(
    client: &Client,
    namespace: &str,
    tally: &Tally,
) -> anyhow::Result<(usize, usize)> {
    let distinct: BTreeSet<&String> = tally.accepted.iter().collect();
    let doubled = tally.accepted.len() - distinct.len();
    let mut lost = 0;
    for name in &distinct {
        if name.is_empty() || finished(client, namespace, name, Duration::from_secs(180)).await.is_err() {
            lost += 1;
        }
    }
    Ok((lost, doubled))
}

/// Pods of the release, by name, with whether they are Ready.
async fn operator_pods(client: &Client, namespace: &str) -> anyhow::Result<Vec<(String, bool, Pod)>> {
    let selector = format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=redeploy-operator");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&ListParams::default().labels(&selector)).await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.metadata.name.clone().unwrap_or_default(), ready, p)
        })
        .collect())
}

/// Waits until `replicas` pods of the release running `digest` are Ready, and no others remain.
async fn rolled_out(client: &Client, namespace: &str, replicas: usize, digest: &str) -> anyhow::Result<Vec<Pod>> {
    wait_for(
        &format!("{replicas} Ready operator pods of {digest}"),
        Duration::from_secs(240),
        Duration::from_millis(500),
        || async {
            let pods = operator_pods(client, namespace).await?;
            let of_digest = |p: &Pod| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .is_some_and(|c| c.image_id.ends_with(digest))
            };
            let all = pods.len() == replicas && pods.iter().all(|(_, ready, pod)| *ready && of_digest(pod));
            Ok(all.then(|| pods.into_iter().map(|(_, _, p)| p).collect()))
        },
    )
    .await
}

/// The pid, on this machine, of the operator process of `pod` (its cgroup names the pod's uid).
fn operator_process(pod: &Pod) -> anyhow::Result<u32> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // cgroupfs names the pod's group `pod<uid>`, systemd `pod<uid with underscores>`.
    let (dashes, underscores) = (format!("pod{uid}"), format!("pod{}", uid.replace('-', "_")));
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.starts_with(b"/usr/local/bin/redeploy-operator\0") {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(&dashes) || cgroup.contains(&underscores) {
            return Ok(pid);
        }
    }
    anyhow::bail!("no operator process of pod {uid} on this machine")
}

/// Every object of every listable kind, as `kind/namespace/name`.
fn every_object(cp: &ControlPlane) -> anyhow::Result<BTreeSet<String>> {
    let kinds = run(cp.kubectl().args(["api-resources", "--verbs=list", "-o", "name"]))?;
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.is_empty()).collect();
    let listed = run(cp
        .kubectl()
        .args(["get", &kinds.join(","), "-A", "--ignore-not-found", "-o"])
        .arg("jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}"))?;
    Ok(listed.lines().map(str::to_string).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_runs_the_image_on_the_real_node_through_upgrade_failover_and_uninstall() -> anyhow::Result<()> {
    let started = Instant::now();
    let (cp, client, namespace) = support::setup("chart-node-app").await?;
    let Some(node) = tokio::task::block_in_place(|| cp.real_node())? else { return Ok(()) };
    // The operator's pods and its default build Jobs carry no toleration.
    node.take_all_pods(&client).await?;
    let before = tokio::task::block_in_place(|| every_object(cp))?;

    // make image IMAGE=<registry>/redeploy-operator:<version>
    let registry = node.registry();
    let version = env!("CARGO_PKG_VERSION");
    let repository = format!("{registry}/redeploy-operator");
    let tarball = tokio::task::block_in_place(|| make_image(&format!("{repository}:{version}")))?;
    let size = std::fs::metadata(&tarball)?.len();
    let first = tokio::task::block_in_place(|| digest(node, &format!("{repository}:{version}")))?;
    eprintln!("image {repository}:{version} ({first}), tarball {:.1} MiB", size as f64 / 1048576.0);

    // helm install, as the README has it, plus what this cluster needs: a
    // NodePort this machine reaches, the local BuildKit image and registry.
    let release_namespace = format!("{namespace}-system");
    let node_port = 30000 + rand::random::<u16>() % 2700;
    let public_url = format!("http://{}:{node_port}", node.node_ip());
    run(cp.helm().args(["install", RELEASE, CHART, "--namespace", &release_namespace, "--create-namespace"]).args([
        "--set",
        &format!("publicUrl={public_url}"),
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={version}"),
        "--set",
        "service.type=NodePort",
        "--set",
        &format!("service.hookNodePort={node_port}"),
        "--set",
        &format!("builderImage={}", node.images().buildkit),
        "--set",
        &format!("insecureRegistries={{{registry}}}"),
        "--set",
        &format!("tests.image={}", node.images().base),
        "--wait",
        "--timeout",
        "4m",
    ]))?;
    let pods = rolled_out(&client, &release_namespace, 1, &first).await?;
    eprintln!("installed: operator Ready after {:.1}s", started.elapsed().as_secs_f64());

    // Non-root, read-only root filesystem: as the kernel sees the process.
    let pod = &pods[0];
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(redeploy_testenv::REAL_NODE_NAME));
    let pid = operator_process(pod)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_string();
    assert_eq!(uid_line.split_whitespace().skip(1).collect::<Vec<_>>(), ["65532"; 4], "{uid_line}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap_or_default();
    assert!(root.split_whitespace().nth(5).is_some_and(|o| o.split(',').any(|o| o == "ro")), "root mount: {root}");

    // helm test: /readyz and a hook ping, from a pod, through the Service.
    run(cp.helm().args(["test", RELEASE, "--namespace", &release_namespace, "--timeout", "2m"]))?;

    // A signed GitHub push through the NodePort, built by BuildKit, rolled out.
    let web_repository = WebRepository::new()?;
    let base = node.images().base.clone();
    let sha = web_repository.commit(&web_dockerfile(&base, true), "Serve the commit")?;
    let url = format!("{}/team/web.git", node.serve_git(web_repository.dir.path())?);
    let image_repository = format!("{registry}/team/web");
    apply_yaml(&client, &namespace, &web_objects(&base, &url, &image_repository)).await?;
    let hook = support::hook_url(&client, &namespace, "shop").await?;
    assert!(hook.starts_with(&format!("{public_url}/stacks/redeploy/")), "{hook}");
    let body = serde_json::to_vec(&github_push(&url, &sha))?;
    let done =
        signed_push_finished(&client, &namespace, &hook, &body, "0b6f7e2a-0f0e-11f1-8e4e-chart", b"s3cret").await?;
    let result = done.status.clone().unwrap_or_default();
    assert_eq!(result.phase, Some(Phase::Succeeded), "{result:?}");
    let built = format!("{image_repository}:{sha}");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace).get("web").await?;
    let image = serde_json::to_value(&deployment)?["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(image.as_str(), Some(built.as_str()));
    let web_pod =
        wait_for("a Ready pod of the build", Duration::from_secs(120), Duration::from_millis(500), || async {
            let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default().labels("app=web"))
                .await?;
            Ok(pods.items.into_iter().find(|p| {
                let status = p.status.as_ref();
                let ready = status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let spec_image = p.spec.as_ref().map(|s| s.containers[0].image.clone()).unwrap_or_default();
                ready && p.metadata.deletion_timestamp.is_none() && spec_image.as_deref() == Some(built.as_str())
            }))
        })
        .await?;
    let pod_ip = web_pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    let served = reqwest::Client::new().get(format!("http://{pod_ip}:8080/version")).send().await?.text().await?;
    assert_eq!(served.trim(), sha);
    eprintln!("push built and rolled out by the in-cluster operator after {:.1}s", started.elapsed().as_secs_f64());

    // helm upgrade to a new image (same binary, another label) while calls arrive.
    apply_yaml(&client, &namespace, &stream_objects(&base)).await?;
    let stream_hook = support::hook_url(&client, &namespace, "stream").await?;
    wait_for("the stream App's hook", Duration::from_secs(60), Duration::from_millis(500), || async {
        let status = reqwest::Client::new().post(format!("{stream_hook}?services=__probe__")).send().await?.status();
        Ok((status == 422).then_some(()))
    })
    .await?;
    let second_tag = format!("{repository}:{version}-relabelled");
    tokio::task::block_in_place(|| {
        run(node.crane().args([
            "mutate",
            "-l",
            "dev.redeploy.test/rebuilt=upgrade",
            "-t",
            &second_tag,
            &format!("{repository}:{version}"),
        ]))
    })?;
    let second = tokio::task::block_in_place(|| digest(node, &second_tag))?;
    assert_ne!(first, second);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let calls = tokio::spawn(stream(stream_hook.clone(), 5, stopped));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade_started = Instant::now();
    tokio::task::block_in_place(|| {
        run(cp.helm().args(["upgrade", RELEASE, CHART, "--namespace", &release_namespace, "--reuse-values"]).args([
            "--set",
            &format!("image.digest={second}"),
            "--wait",
            "--timeout",
            "4m",
        ]))
    })?;
    rolled_out(&client, &release_namespace, 1, &second).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    let upgrade = calls.await??;
    let (lost, doubled) = check_each_accepted_finished_once(&client, &namespace, &upgrade).await?;
    eprintln!(
        "helm upgrade ({:.1}s): {} calls, {} answered, {} accepted, {} refused 503, {} unanswered, other {:?}; lost {lost}, doubled {doubled}",
        upgrade_started.elapsed().as_secs_f64(),
        upgrade.calls,
        upgrade.answered(),
        upgrade.accepted.len(),
        upgrade.unavailable,
        upgrade.unanswered,
        upgrade.other
    );
    assert!(!upgrade.accepted.is_empty(), "{upgrade:?}");
    assert_eq!((lost, doubled), (0, 0), "{upgrade:?}");

    // Two replicas; the leader's pod is deleted with no grace period mid-stream.
    run(cp.helm().args(["upgrade", RELEASE, CHART, "--namespace", &release_namespace, "--reuse-values"]).args([
        "--set",
        "replicaCount=2",
        "--wait",
        "--timeout",
        "4m",
    ]))?;
    rolled_out(&client, &release_namespace, 2, &second).await?;
    let leases = Api::<Lease>::namespaced(client.clone(), &release_namespace);
    let holder = || async {
        let lease = leases.get_opt(RELEASE).await?;
        anyhow::Ok(lease.and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty()))
    };
    let pod_names: Vec<String> =
        operator_pods(&client, &release_namespace).await?.into_iter().map(|(name, _, _)| name).collect();
    let leader =
        wait_for("a replica to hold the Lease", Duration::from_secs(60), Duration::from_millis(500), || async {
            Ok(holder().await?.filter(|h| pod_names.contains(h)))
        })
        .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let calls = tokio::spawn(stream(stream_hook.clone(), 5, stopped));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = Instant::now();
    tokio::task::block_in_place(|| {
        run(cp.kubectl().args(["delete", "pod", &leader, "-n", &release_namespace, "--grace-period=0", "--force"]))
    })?;
    let new_leader =
        wait_for("another replica to take the Lease", Duration::from_secs(90), Duration::from_millis(250), || async {
            Ok(holder().await?.filter(|h| *h != leader))
        })
        .await?;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.send_replace(true);
    let failover = calls.await??;
    let (lost, doubled) = check_each_accepted_finished_once(&client, &namespace, &failover).await?;
    eprintln!(
        "failover: leader {leader} deleted, {new_leader} took the Lease after {:.1}s; {} calls, {} answered, {} accepted, \
         {} refused 503, {} unanswered, other {:?}; lost {lost}, doubled {doubled}",
        takeover.as_secs_f64(),
        failover.calls,
        failover.answered(),
        failover.accepted.len(),
        failover.unavailable,
        failover.unanswered,
        failover.other
    );
    assert_eq!((lost, doubled), (0, 0), "{failover:?}");
    assert!(failover.accepted.len() * 2 > failover.calls, "most calls are accepted: {failover:?}");
    // No Redeployment beyond those answered 202, but for calls whose answer was lost with the pod.
    let listed = Api::<Redeployment>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.app == "stream")
        .count();
    let accepted = upgrade.accepted.len() + failover.accepted.len();
    assert!(
        listed >= accepted && listed - accepted <= upgrade.unanswered + failover.unanswered,
        "{listed} Redeployments for {accepted} accepted calls"
    );

    // helm uninstall: only what the chart's README says stays.
    run(cp.helm().args(["uninstall", RELEASE, "--namespace", &release_namespace, "--wait", "--timeout", "2m"]))?;
    let left = wait_for("the release's objects to go", Duration::from_secs(120), Duration::from_secs(2), || async {
        let after = tokio::task::block_in_place(|| every_object(cp))?;
        let left: Vec<String> = after
            .difference(&before)
            .filter(|o| {
                let mut parts = o.splitn(3, '/');
                let (kind, ns, name) =
                    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                // The Apps' own objects, and Events (they expire).
                // The nodes' heartbeats are not the release's.
                let stays = ns == namespace || kind == "Event" || ns == "kube-node-lease"
                    // The release's namespace (helm never deletes one) with
                    // what Kubernetes puts in every namespace, and the
                    // operator's leader Lease in it.
                    || (kind == "Namespace" && name == release_namespace)
                    || (ns == release_namespace
                        && ((kind == "ConfigMap" && name == "kube-root-ca.crt")
                            || (kind == "ServiceAccount" && name == "default")
                            || (kind == "Lease" && name == RELEASE)));
                !stays
            })
            .cloned()
            .collect();
        Ok(left.is_empty().then_some(()))
    })
    .await;
    anyhow::ensure!(left.is_ok(), "left behind by helm uninstall: {:?}", {
        let after = tokio::task::block_in_place(|| every_object(cp))?;
        after.difference(&before).cloned().collect::<Vec<_>>()
    });
    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
