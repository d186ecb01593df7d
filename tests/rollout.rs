//! Redeployments executed on the real control plane: the operator runs in
//! process, workloads run on the kwok node, build Jobs are run by the real
//! job controller and completed or failed by kwok stages.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::Pod,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use redeploy_operator::api::{Phase, Redeployment, Service, ServicePhase};
use serde_json::json;
use support::{eventually, operator};

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn deployment(name: &str, template_annotations: serde_json::Value, deadline: i32) -> String {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 2, "progressDeadlineSeconds": deadline,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": template_annotations},
                "spec": {"containers": [{"name": name, "image": format!("registry.example.com/{name}:initial")}]},
            },
        },
    });
    format!("---\n{}\n", serde_json::to_string(&deployment).unwrap_or_default())
}

fn app(history: i32) -> String {
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  history:\n    limit: {history}\n"
    )
}

fn image_service(name: &str) -> String {
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  app: shop\n  target:\n    name: {name}\n  image:\n    reference: registry.example.com/{name}:initial\n"
    )
}

fn git_service(name: &str, template: Option<serde_json::Value>) -> String {
    let mut service = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
        "spec": {
            "app": "shop", "target": {"name": name, "container": name},
            "git": {"repository": "https://github.com/Codertocat/Hello-World", "branch": "master"},
            "build": {"image": format!("registry.example.com/{name}")},
        },
    });
    let report = support::build_report(&format!("registry.example.com/{name}"), SHA);
    service["spec"]["build"]["template"] = template.unwrap_or_else(|| support::stand_in_builder(&report));
    format!("---\n{}\n", serde_json::to_string(&service).unwrap_or_default())
}

fn profile(strategy: &str, auto_rollback: bool, timeout: i32) -> String {
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: DeploymentProfile\nmetadata:\n  name: p\nspec:\n  app: shop\n  strategy: {strategy}\n  rollout:\n    timeoutSeconds: {timeout}\n    autoRollback: {auto_rollback}\n"
    )
}

/// Creates a Redeployment by hand (as `kubectl redeploy` does) with this plan.
async fn redeploy(
    client: &Client,
    namespace: &str,
    name: &str,
    plan: serde_json::Value,
    profile: Option<&str>,
) -> anyhow::Result<()> {
    let mut object = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "metadata": {"name": name},
        "spec": {"app": "shop", "trigger": {"provider": "manual", "event": "test"}, "plan": plan},
    });
    if let Some(profile) = profile {
        object["spec"]["profile"] = json!(profile);
    }
    Api::<Redeployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?;
    Ok(())
}

async fn finished(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Redeployment> {
    let api = Api::<Redeployment>::namespaced(client.clone(), namespace);
    eventually(&format!("Redeployment {name} to finish"), || async {
        let redeployment = api.get(name).await?;
        let done = redeployment.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished);
        Ok(done.then_some(redeployment))
    })
    .await
}

async fn setup(prefix: &str, objects: &str) -> anyhow::Result<(Client, String)> {
    operator();
    let (_, client, namespace) = support::setup(prefix).await?;
    support::apply_yaml(&client, &namespace, objects).await?;
    Ok((client, namespace))
}

fn template_annotation(deployment: &Deployment, key: &str) -> Option<String> {
    deployment.spec.template.metadata.as_ref()?.annotations.as_ref()?.get(key).cloned()
}

fn phases(redeployment: &Redeployment) -> Vec<(String, ServicePhase)> {
    redeployment
        .status
        .as_ref()
        .map(|s| s.services.iter().map(|r| (r.service.clone(), r.phase)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_image_service_restarts_and_rolls_out() -> anyhow::Result<()> {
    let objects = format!("{}{}{}", app(20), image_service("worker"), deployment("worker", json!({}), 600));
    let (client, namespace) = setup("restart", &objects).await?;
    redeploy(&client, &namespace, "restart-1", json!([{"service": "worker", "action": "restart"}]), None).await?;
    let done = finished(&client, &namespace, "restart-1").await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let worker = deployments.get("worker").await?;
    assert!(template_annotation(&worker, "kubectl.kubernetes.io/restartedAt").is_some());
    assert_eq!(template_annotation(&worker, "redeploy.dev/redeployment").as_deref(), Some("restart-1"));
    let rollout = worker.status.clone().unwrap_or_default();
    assert_eq!((rollout.updated_replicas, rollout.available_replicas), (Some(2), Some(2)), "rolled out when Succeeded");
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    eventually("Service worker to record restart-1", || async {
        let service = services.get("worker").await?;
        Ok((service.status.and_then(|s| s.last_redeployment).as_deref() == Some("restart-1")).then_some(()))
    })
    .await?;
    assert!(status.started_at.is_some() && status.finished_at.is_some());
    let metrics = reqwest::get(format!("{}/metrics", operator().admin)).await?.text().await?;
    assert!(metrics.contains(r#"redeploy_redeployments_finished_total{phase="succeeded"}"#), "{metrics}");
    assert!(metrics.contains(r#"redeploy_redeployment_duration_seconds_count{phase="succeeded"}"#), "{metrics}");
    Ok(())
}

/// A hook call whose rollout is over within the progress interval is
/// recorded once, finished: its start ("Deploying") is held back, not
/// written, and the Redeployment still tells when it started.
#[tokio::test]
async fn a_quick_rollout_by_hook_is_written_once_finished() -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let objects = format!("{}{}{}", app(20), image_service("quick"), deployment("quick", json!({}), 600));
    let (client, namespace) = setup("quick", &objects).await?;
    let url = support::hook_url(&client, &namespace, "shop").await?;
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    // Every version of every Redeployment the API server stores, and when it was seen.
    let (sender, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch =
        tokio::spawn(watcher(api.clone(), watcher::Config::default()).applied_objects().for_each(move |object| {
            if let Ok(object) = object {
                let _ = sender.send((std::time::Instant::now(), object));
            }
            std::future::ready(())
        }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = reqwest::Client::new().post(&url).send().await?;
    let answered = std::time::Instant::now();
    assert_eq!(answer.status(), 202);
    let name = answer.json::<serde_json::Value>().await?["redeployment"].as_str().unwrap_or_default().to_string();
    let done = finished(&client, &namespace, &name).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.abort();
    let mut versions = Vec::new();
    while let Ok((at, object)) = seen.try_recv() {
        let phase = object.status.as_ref().and_then(|s| s.phase);
        versions.push((at.saturating_duration_since(answered), object.resource_version(), phase));
    }
    versions.dedup_by(|a, b| a.1 == b.1);
    println!("quick: every stored version (seen after the answer, version, phase): {versions:?}");
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    // A start written anyway could only come once the interval (2 s) is over:
    // the rollout was slower than that here, which this test reports, not fails.
    let early: Vec<_> = versions
        .iter()
        .filter(|(after, _, phase)| {
            matches!(phase, Some(Phase::Deploying | Phase::Building)) && *after < Duration::from_millis(1900)
        })
        .collect();
    assert!(early.is_empty(), "a start was written within the progress interval: {versions:?}");
    let result = &status.services[0];
    assert!(status.started_at.is_some() && result.started_at.is_some(), "{status:?}");
    assert!(status.started_at <= status.finished_at, "{status:?}");
    assert!(result.rollout_generation.is_some(), "the rollout's generation is recorded: {result:?}");
    Ok(())
}

/// A burst of hook calls to one App names a newer Redeployment with each:
/// the App's `lastRedeployment` ends at the newest, written about once per
/// 2 s of the burst instead of once per call.
#[tokio::test]
async fn a_burst_of_calls_writes_the_apps_newest_redeployment_a_few_times() -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use redeploy_operator::api::App;
    const CALLS: usize = 10;
    let objects = format!("{}{}{}", app(20), image_service("burst"), deployment("burst", json!({}), 600));
    let (client, namespace) = setup("burst", &objects).await?;
    let url = support::hook_url(&client, &namespace, "shop").await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    let (sender, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch =
        tokio::spawn(watcher(apps.clone(), watcher::Config::default()).applied_objects().for_each(move |object| {
            if let Ok(app) = object {
                let _ = sender.send(app.status.and_then(|s| s.last_redeployment));
            }
            std::future::ready(())
        }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut names = Vec::new();
    for _ in 0..CALLS {
        let answer = http.post(&url).send().await?;
        assert_eq!(answer.status(), 202);
        names.push(answer.json::<serde_json::Value>().await?["redeployment"].as_str().unwrap_or_default().to_string());
    }
    let burst = started.elapsed();
    let newest = names.last().cloned().unwrap_or_default();
    eventually("the App to name the newest Redeployment", || async {
        let app = apps.get("shop").await?;
        Ok((app.status.and_then(|s| s.last_redeployment).as_deref() == Some(newest.as_str())).then_some(()))
    })
    .await?;
    watch.abort();
    let mut written = Vec::new();
    while let Ok(last) = seen.try_recv() {
        if let Some(last) = last.filter(|l| names.contains(l)) {
            written.push(last);
        }
    }
    written.dedup();
    println!("burst: {CALLS} calls in {burst:?}; lastRedeployment written as {written:?}");
    // One write at the start of the burst, one per 2 s of it, and the last.
    let allowed = 2 + usize::try_from(burst.as_secs() / 2).unwrap_or(CALLS);
    assert!(written.len() <= allowed, "{} writes for {CALLS} calls in {burst:?}: {written:?}", written.len());
    Ok(())
}

/// The Service reconciler is the one writer of a Service's status: it takes
/// over the fields the records manager of earlier versions owned, records what
/// a Redeployment built and deployed (read from the Redeployment's own
/// status), and applies a status from the version it was computed from: one
/// computed from a copy read before the build was recorded is refused (409,
/// so it computes again) instead of replacing the list without that build.
#[tokio::test]
async fn a_record_from_a_stale_copy_never_drops_a_build() -> anyhow::Result<()> {
    use k8s_openapi::jiff::Timestamp;
    use redeploy_operator::{
        api::{BuiltImage, ServiceStatus},
        install::FIELD_MANAGER,
        reconcile::service::{LEGACY_RECORD_FIELD_MANAGER, apply_status, desired_status},
    };
    let objects = format!("{}{}{}", app(20), git_service("web", None), deployment("web", json!({}), 600));
    let (client, namespace) = setup("record", &objects).await?;
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    let status_managers = |service: &Service| {
        let managed = service.metadata.managed_fields.clone().unwrap_or_default();
        managed
            .into_iter()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .map(|m| (m.manager.unwrap_or_default(), m.operation.unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    let one_manager = vec![(FIELD_MANAGER.to_string(), "Apply".to_string())];
    eventually("the Service reconciler's status", || async {
        let service = services.get("web").await?;
        Ok(service.status.as_ref().is_some_and(|s| !s.conditions.is_empty()).then_some(service))
    })
    .await?;

    // A cluster upgraded from the version whose Redeployments wrote the
    // builds under their own manager: the reconciler takes them over.
    let old = "1111111111111111111111111111111111111111";
    let legacy = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
        "status": {"builds": [{"commit": old, "image": format!("registry.example.com/web:{old}")}]},
    });
    services
        .patch_status("web", &PatchParams::apply(LEGACY_RECORD_FIELD_MANAGER).force(), &Patch::Apply(&legacy))
        .await?;
    let stale = eventually("the reconciler to take the legacy fields over", || async {
        let service = services.get("web").await?;
        Ok((status_managers(&service) == one_manager).then_some(service))
    })
    .await?;
    let commits = |status: &ServiceStatus| status.builds.iter().map(|b| b.commit.clone()).collect::<Vec<_>>();
    assert_eq!(commits(&stale.status.clone().unwrap_or_default()), [old], "taken over, not dropped");

    redeploy(&client, &namespace, "record-1", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let done = finished(&client, &namespace, "record-1").await?;
    let built = done.status.as_ref().and_then(|s| s.services.first()).and_then(|r| r.built.clone());
    let image = format!("registry.example.com/web:{SHA}");
    assert_eq!(built.as_ref().map(|b: &BuiltImage| (b.commit.as_str(), b.image.as_str())), Some((SHA, image.as_str())));
    let recorded = eventually("Service web to record the build", || async {
        let service = services.get("web").await?;
        let status = service.status.clone().unwrap_or_default();
        Ok((status.last_redeployment.as_deref() == Some("record-1")).then_some(service))
    })
    .await?;
    let status = recorded.status.clone().unwrap_or_default();
    assert_eq!(commits(&status), [SHA, old]);
    assert_eq!((status.deployed_ref.as_deref(), status.deployed_image.as_deref()), (Some(SHA), Some(image.as_str())));
    assert!(status.conditions.iter().any(|c| c.type_ == "TargetReady"), "{status:?}");
    assert_eq!(status_managers(&recorded), one_manager, "one writer of the Service's status");

    // A status computed from the copy read before the build: refused.
    let from_stale = desired_status(&stale, None, &[] as &[Redeployment], Timestamp::now());
    let refused = apply_status(&client, &namespace, "web", stale.resource_version().as_deref(), &from_stale).await;
    assert!(matches!(&refused, Err(kube::Error::Api(s)) if s.code == 409), "{refused:?}");
    let status = services.get("web").await?.status.unwrap_or_default();
    assert_eq!(commits(&status), [SHA, old], "the build recorded is kept");
    Ok(())
}

#[tokio::test]
async fn a_git_service_is_built_deployed_and_the_build_reused() -> anyhow::Result<()> {
    let objects = format!("{}{}{}", app(20), git_service("web", None), deployment("web", json!({}), 600));
    let (client, namespace) = setup("build", &objects).await?;
    redeploy(&client, &namespace, "build-1", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let done = finished(&client, &namespace, "build-1").await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let result = &status.services[0];
    let image = format!("registry.example.com/web:{SHA}");
    assert_eq!(result.image.as_deref(), Some(image.as_str()));
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await?;
    assert_eq!(jobs.items.len(), 1, "one build Job");
    let web = Api::<Deployment>::namespaced(client.clone(), &namespace).get("web").await?;
    assert_eq!(web.spec.template.spec.as_ref().map(|s| s.containers[0].image.clone()), Some(Some(image.clone())));
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    let service = eventually("Service web to record build-1", || async {
        let status = services.get("web").await?.status.unwrap_or_default();
        Ok((status.last_redeployment.as_deref() == Some("build-1")).then_some(status))
    })
    .await?;
    assert_eq!(service.deployed_ref.as_deref(), Some(SHA));
    assert_eq!(service.builds.first().map(|b| b.image.as_str()), Some(image.as_str()));

    // The same commit again with the default `ifMissing` policy: no second build.
    redeploy(&client, &namespace, "build-2", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let again = finished(&client, &namespace, "build-2").await?;
    assert_eq!(again.status.as_ref().and_then(|s| s.phase), Some(Phase::Succeeded));
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await?;
    assert_eq!(jobs.items.len(), 1, "the image built before is reused");
    Ok(())
}

#[tokio::test]
async fn a_failed_build_fails_the_redeployment_with_the_reason() -> anyhow::Result<()> {
    let template = json!({
        "metadata": {"annotations": {"testenv.redeploy.dev/fail": "true", "testenv.redeploy.dev/termination-message": "error: failed to solve: dockerfile parse error line 3"}},
        "spec": {"containers": [{"name": "builder", "image": "registry.example.com/builder:stub"}]},
    });
    let objects = format!("{}{}{}", app(20), git_service("web", Some(template)), deployment("web", json!({}), 600));
    let (client, namespace) = setup("build-fail", &objects).await?;
    redeploy(&client, &namespace, "fail-1", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let done = finished(&client, &namespace, "fail-1").await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed));
    let message = status.services[0].message.clone().unwrap_or_default();
    assert!(message.contains("dockerfile parse error"), "{message}");
    let web = Api::<Deployment>::namespaced(client.clone(), &namespace).get("web").await?;
    assert_eq!(template_annotation(&web, "redeploy.dev/redeployment"), None, "nothing was rolled out");
    Ok(())
}

#[tokio::test]
async fn a_stuck_rollout_fails_and_auto_rollback_restores_the_template() -> anyhow::Result<()> {
    let never_ready = json!({"testenv.redeploy.dev/never-ready": "true"});
    let objects = format!(
        "{}{}{}{}{}",
        app(20),
        image_service("stuck"),
        deployment("stuck", never_ready.clone(), 2),
        image_service("rollback"),
        deployment("rollback", never_ready, 2),
    );
    let (client, namespace) = setup("deadline", &format!("{objects}{}", profile("parallel", true, 600))).await?;
    redeploy(&client, &namespace, "plain", json!([{"service": "stuck", "action": "restart"}]), None).await?;
    redeploy(&client, &namespace, "with-rollback", json!([{"service": "rollback", "action": "restart"}]), Some("p"))
        .await?;

    let plain = finished(&client, &namespace, "plain").await?;
    let status = plain.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed));
    assert!(status.services[0].message.clone().unwrap_or_default().contains("ProgressDeadlineExceeded"), "{status:?}");
    let stuck = Api::<Deployment>::namespaced(client.clone(), &namespace).get("stuck").await?;
    assert!(
        template_annotation(&stuck, "kubectl.kubernetes.io/restartedAt").is_some(),
        "no rollback without autoRollback"
    );

    let rolled = finished(&client, &namespace, "with-rollback").await?;
    let result = rolled.status.clone().unwrap_or_default().services[0].clone();
    assert_eq!(result.phase, ServicePhase::Failed);
    assert!(result.rolled_back, "{result:?}");
    assert!(result.message.clone().unwrap_or_default().contains("rolled back"), "{result:?}");
    let restored = Api::<Deployment>::namespaced(client.clone(), &namespace).get("rollback").await?;
    assert_eq!(
        template_annotation(&restored, "kubectl.kubernetes.io/restartedAt"),
        None,
        "the previous template is back"
    );
    Ok(())
}

#[tokio::test]
async fn a_rollout_past_the_profile_timeout_fails() -> anyhow::Result<()> {
    let objects = format!(
        "{}{}{}{}",
        app(20),
        image_service("slow"),
        deployment("slow", json!({"testenv.redeploy.dev/never-ready": "true"}), 600),
        profile("parallel", false, 3),
    );
    let (client, namespace) = setup("timeout", &objects).await?;
    redeploy(&client, &namespace, "timeout-1", json!([{"service": "slow", "action": "restart"}]), Some("p")).await?;
    let done = finished(&client, &namespace, "timeout-1").await?;
    let result = done.status.clone().unwrap_or_default().services[0].clone();
    assert_eq!(result.phase, ServicePhase::Failed, "{result:?}");
    let message = result.message.unwrap_or_default();
    assert!(message.contains("Timeout") && message.contains("not rolled out within 3s"), "{message}");
    Ok(())
}

#[tokio::test]
async fn stateful_sets_and_daemon_sets_restart_and_roll_out() -> anyhow::Result<()> {
    let workload = |kind: &str, name: &str| {
        let mut object = json!({
            "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": format!("registry.example.com/{name}:initial")}]},
                },
            },
        });
        if kind == "StatefulSet" {
            object["spec"]["replicas"] = json!(2);
            object["spec"]["podManagementPolicy"] = json!("Parallel");
        }
        format!("---\n{}\n", serde_json::to_string(&object).unwrap_or_default())
    };
    let service = |kind: &str, name: &str| {
        format!(
            "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  app: shop\n  target:\n    kind: {kind}\n    name: {name}\n  image:\n    reference: registry.example.com/{name}:initial\n"
        )
    };
    let objects = format!(
        "{}{}{}{}{}",
        app(20),
        workload("StatefulSet", "db"),
        service("StatefulSet", "db"),
        workload("DaemonSet", "agent"),
        service("DaemonSet", "agent"),
    );
    let (client, namespace) = setup("kinds", &objects).await?;
    let plan = json!([{"service": "db", "action": "restart"}, {"service": "agent", "action": "restart"}]);
    redeploy(&client, &namespace, "kinds-1", plan, None).await?;
    let done = finished(&client, &namespace, "kinds-1").await?;
    assert_eq!(
        phases(&done),
        [("db".to_string(), ServicePhase::Succeeded), ("agent".to_string(), ServicePhase::Succeeded)],
        "{:?}",
        done.status
    );
    let db = Api::<StatefulSet>::namespaced(client.clone(), &namespace).get("db").await?;
    let status = db.status.clone().unwrap_or_default();
    assert_eq!(status.update_revision, status.current_revision, "rolled out when Succeeded");
    assert_eq!(status.updated_replicas, Some(2));
    let agent = Api::<DaemonSet>::namespaced(client.clone(), &namespace).get("agent").await?;
    let annotations = agent.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert_eq!(annotations.get("redeploy.dev/redeployment").map(String::as_str), Some("kinds-1"));
    Ok(())
}

#[tokio::test]
async fn serial_stops_at_the_first_failure() -> anyhow::Result<()> {
    let objects = format!(
        "{}{}{}{}{}{}",
        app(20),
        image_service("first"),
        deployment("first", json!({"testenv.redeploy.dev/never-ready": "true"}), 2),
        image_service("second"),
        deployment("second", json!({}), 600),
        profile("serial", false, 600),
    );
    let (client, namespace) = setup("serial", &objects).await?;
    let plan = json!([{"service": "first", "action": "restart"}, {"service": "second", "action": "restart"}]);
    redeploy(&client, &namespace, "serial-1", plan, Some("p")).await?;
    let done = finished(&client, &namespace, "serial-1").await?;
    assert_eq!(
        phases(&done),
        [("first".to_string(), ServicePhase::Failed), ("second".to_string(), ServicePhase::Canceled)]
    );
    let second = Api::<Deployment>::namespaced(client.clone(), &namespace).get("second").await?;
    assert_eq!(template_annotation(&second, "redeploy.dev/redeployment"), None, "the second Service was never touched");
    Ok(())
}

#[tokio::test]
async fn a_newer_redeployment_supersedes_a_pending_one() -> anyhow::Result<()> {
    let objects = format!(
        "{}{}{}",
        app(20),
        image_service("busy"),
        deployment("busy", json!({"testenv.redeploy.dev/never-ready": "true"}), 600),
    );
    let (client, namespace) = setup("supersede", &format!("{objects}{}", profile("parallel", false, 20))).await?;
    let plan = json!([{"service": "busy", "action": "restart"}]);
    redeploy(&client, &namespace, "a-running", plan.clone(), Some("p")).await?;
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    eventually("the first to be deploying", || async {
        Ok((api.get("a-running").await?.status.and_then(|s| s.phase) == Some(Phase::Deploying)).then_some(()))
    })
    .await?;
    redeploy(&client, &namespace, "b-pending", plan.clone(), Some("p")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redeploy(&client, &namespace, "c-newest", plan, Some("p")).await?;
    let superseded = finished(&client, &namespace, "b-pending").await?;
    let status = superseded.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Superseded), "{status:?}");
    assert_eq!(status.superseded_by.as_deref(), Some("c-newest"));
    // The running one is not superseded: it finishes (here: times out).
    let first = finished(&client, &namespace, "a-running").await?;
    assert_eq!(first.status.and_then(|s| s.phase), Some(Phase::Failed));
    Ok(())
}

#[tokio::test]
async fn deleting_a_building_redeployment_cancels_its_job() -> anyhow::Result<()> {
    // A build pod that never completes: the kwok stages only complete pods that run.
    let template = json!({
        "metadata": {"annotations": {"testenv.redeploy.dev/never-ready": "true"}},
        "spec": {"containers": [{"name": "builder", "image": "registry.example.com/builder:stub"}]},
    });
    let objects = format!("{}{}{}", app(20), git_service("web", Some(template)), deployment("web", json!({}), 600));
    let (client, namespace) = setup("cancel", &objects).await?;
    redeploy(&client, &namespace, "cancel-1", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    let job = eventually("the build to start", || async {
        let status = api.get("cancel-1").await?.status.unwrap_or_default();
        Ok((status.phase == Some(Phase::Building)).then(|| status.services[0].build_job.clone()).flatten())
    })
    .await?;
    api.delete("cancel-1", &DeleteParams::default()).await?;
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace);
    eventually("the Job to be deleted", || async { Ok(jobs.get_opt(&job).await?.is_none().then_some(())) }).await?;
    eventually("the Redeployment to be gone", || async { Ok(api.get_opt("cancel-1").await?.is_none().then_some(())) })
        .await?;
    Ok(())
}

#[tokio::test]
async fn history_keeps_the_newest_finished_redeployments() -> anyhow::Result<()> {
    let objects = format!("{}{}{}", app(2), image_service("worker"), deployment("worker", json!({}), 600));
    let (client, namespace) = setup("history", &objects).await?;
    for n in 1..=4 {
        redeploy(&client, &namespace, &format!("run-{n}"), json!([{"service": "worker", "action": "restart"}]), None)
            .await?;
        finished(&client, &namespace, &format!("run-{n}")).await?;
    }
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    let kept = eventually("the history to be pruned", || async {
        let mut names: Vec<String> =
            api.list(&ListParams::default()).await?.items.iter().map(|r| r.name_any()).collect();
        names.sort();
        Ok((names.len() == 2).then_some(names))
    })
    .await?;
    assert_eq!(kept, ["run-3", "run-4"]);
    Ok(())
}

#[tokio::test]
async fn a_service_reports_its_type_and_whether_its_target_exists() -> anyhow::Result<()> {
    let objects = format!(
        "{}{}{}{}",
        app(20),
        image_service("worker"),
        deployment("worker", json!({}), 600),
        git_service("ghost", None)
    );
    let (client, namespace) = setup("service-status", &objects).await?;
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    // The Service may be seen before its Deployment exists: wait for the condition to settle.
    let condition = |name: &'static str, expected: &'static str| {
        let services = services.clone();
        async move {
            eventually(&format!("{name}'s TargetReady condition to be {expected}"), || async {
                let status = services.get(name).await?.status.unwrap_or_default();
                let found =
                    status.conditions.iter().find(|c| c.type_ == "TargetReady" && c.status == expected).cloned();
                Ok(found.map(|c| (status.type_, c)))
            })
            .await
        }
    };
    let (kind, ready) = condition("worker", "True").await?;
    assert_eq!(serde_json::to_value(kind)?, json!("image"));
    assert_eq!(ready.reason, "TargetFound");
    let (kind, missing) = condition("ghost", "False").await?;
    assert_eq!(serde_json::to_value(kind)?, json!("git"));
    assert_eq!(missing.reason, "TargetNotFound");
    assert!(missing.message.contains("ghost does not exist"), "{}", missing.message);
    Ok(())
}

#[tokio::test]
async fn a_build_that_reports_nothing_or_another_repository_fails() -> anyhow::Result<()> {
    let foreign = support::build_report("evil.example.com/api", SHA);
    let objects = format!(
        "{}{}{}{}{}",
        app(20),
        git_service("web", Some(support::stand_in_builder(""))),
        git_service("api", Some(support::stand_in_builder(&foreign))),
        deployment("web", json!({}), 600),
        deployment("api", json!({}), 600),
    );
    let (client, namespace) = setup("build-report", &objects).await?;
    let plan =
        json!([{"service": "web", "action": "build", "ref": SHA}, {"service": "api", "action": "build", "ref": SHA}]);
    redeploy(&client, &namespace, "report-1", plan, None).await?;
    let status = finished(&client, &namespace, "report-1").await?.status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    let message = |i: usize| status.services[i].message.clone().unwrap_or_default();
    assert_eq!(status.services[0].phase, ServicePhase::Failed);
    assert!(message(0).contains("left no termination message"), "{}", message(0));
    assert!(message(0).contains(r#"must write {"commit""#), "tells the builder what to write: {}", message(0));
    assert_eq!(status.services[1].phase, ServicePhase::Failed);
    assert!(message(1).contains("evil.example.com/api"), "{}", message(1));
    assert!(message(1).contains("not in spec.build.image \"registry.example.com/api\""), "{}", message(1));
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    for name in ["web", "api"] {
        let rolled = template_annotation(&deployments.get(name).await?, "redeploy.dev/redeployment");
        assert_eq!(rolled, None, "{name} was not rolled out");
    }
    Ok(())
}

#[tokio::test]
async fn build_results_come_only_from_the_jobs_own_pods() -> anyhow::Result<()> {
    let objects = format!("{}{}{}", app(20), git_service("web", None), deployment("web", json!({}), 600));
    let (client, namespace) = setup("build-pods", &objects).await?;
    // A pod that is not the Job's, labelled as its pods are, listed before them,
    // reporting an image of the right repository at another commit.
    let evil = "0000000000000000000000000000000000000bad";
    let job = redeploy_operator::build::job_name("own-1", "web");
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a-planted-result", "labels": {"job-name": job}},
        // A node that does not exist: nothing runs it or rewrites its status.
        "spec": {"nodeName": "nowhere", "containers": [{"name": "builder", "image": "registry.example.com/builder:stub"}]},
    });
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;
    let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": "builder", "image": "registry.example.com/builder:stub", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "message": support::build_report("registry.example.com/web", evil)}},
    }]}});
    pods.patch_status("a-planted-result", &PatchParams::default(), &Patch::Merge(&status)).await?;

    redeploy(&client, &namespace, "own-1", json!([{"service": "web", "action": "build", "ref": SHA}]), None).await?;
    let status = finished(&client, &namespace, "own-1").await?.status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let image = format!("registry.example.com/web:{SHA}");
    assert_eq!(status.services[0].image.as_deref(), Some(image.as_str()), "the Job's own pod's report");
    Ok(())
}

#[tokio::test]
async fn a_hand_made_redeployment_with_a_foreign_plan_runs_nothing() -> anyhow::Result<()> {
    let other_app = "---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: other\nspec: {}\n";
    let theirs = image_service("theirs").replace("app: shop", "app: other");
    let their_profile =
        profile("serial", false, 60).replace("name: p", "name: their-profile").replace("app: shop", "app: other");
    let objects = format!(
        "{}{}{}{}{other_app}{theirs}{their_profile}{}{}",
        app(20),
        git_service("web", None),
        image_service("worker"),
        deployment("web", json!({}), 600),
        deployment("worker", json!({}), 600),
        deployment("theirs", json!({}), 600),
    );
    let (client, namespace) = setup("hostile", &objects).await?;
    // The operator's caches know every Service once each App's status lists them.
    let apps = Api::<redeploy_operator::api::App>::namespaced(client.clone(), &namespace);
    for (app, service) in [("shop", "worker"), ("other", "theirs")] {
        eventually(&format!("App {app} to list {service}"), || async {
            let status = apps.get(app).await?.status.unwrap_or_default();
            Ok(status.services.iter().any(|s| s == service).then_some(()))
        })
        .await?;
    }
    // As `kubectl create` would: a plan the planner never made.
    let plan = json!([
        {"service": "web", "action": "build", "ref": SHA},
        {"service": "worker", "action": "build", "ref": SHA},
        {"service": "theirs", "action": "restart"},
    ]);
    redeploy(&client, &namespace, "hostile-1", plan, Some("their-profile")).await?;
    let status = finished(&client, &namespace, "hostile-1").await?.status.unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    for result in &status.services {
        assert_eq!(result.phase, ServicePhase::Failed, "{result:?}");
        let message = result.message.clone().unwrap_or_default();
        assert!(message.contains("the plan was refused, nothing of it was run"), "{message}");
        assert!(message.contains("Service `theirs` belongs to App `other`"), "{message}");
        assert!(message.contains("`worker` is image-based"), "{message}");
        assert!(message.contains("spec.profile `their-profile` belongs to App `other`"), "{message}");
    }
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await?;
    assert!(jobs.items.is_empty(), "no build was started");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    for name in ["web", "worker", "theirs"] {
        let template = deployments.get(name).await?;
        assert_eq!(template_annotation(&template, "redeploy.dev/redeployment"), None, "{name} was not touched");
    }
    Ok(())
}
