//! Restart safety: the operator binary is killed (SIGKILL) in the middle of
//! Redeployments and started again; every Redeployment completes exactly
//! once: one build Job, one new ReplicaSet per workload, nothing lost.

mod support;

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    batch::v1::Job,
    core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use redeploy_operator::api::{Phase, Redeployment, ServicePhase};
use serde_json::json;
use support::{OperatorProcess, eventually};

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn objects() -> String {
    let deployment = |name: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": format!("registry.example.com/{name}:initial")}]}}},
        })
    };
    let web = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"app": "shop", "target": {"name": "web"},
            "git": {"repository": "https://github.com/Codertocat/Hello-World", "branch": "master"},
            "build": {"image": "registry.example.com/web",
                "template": support::stand_in_builder(&support::build_report("registry.example.com/web", SHA))}},
    });
    let worker = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": "worker"},
        "spec": {"app": "shop", "target": {"name": "worker"}, "image": {"reference": "registry.example.com/worker:initial"}},
    });
    let app = json!({"apiVersion": "redeploy.dev/v1alpha1", "kind": "App", "metadata": {"name": "shop"}, "spec": {}});
    [app, web, worker, deployment("web"), deployment("worker")].iter().map(|o| format!("---\n{o}\n")).collect()
}

async fn phase(api: &Api<Redeployment>, name: &str) -> anyhow::Result<Option<Phase>> {
    Ok(api.get(name).await?.status.and_then(|s| s.phase))
}

async fn replica_sets(client: &Client, namespace: &str, app: &str) -> anyhow::Result<usize> {
    let list = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list.items.len())
}

#[tokio::test]
async fn a_killed_operator_resumes_every_redeployment_exactly_once() -> anyhow::Result<()> {
    let (control_plane, client, namespace) = support::setup("restart").await?;
    let log = control_plane.dir().join("operator-restart.log");
    support::apply_yaml(&client, &namespace, &objects()).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    for name in ["web", "worker"] {
        let done = kube::runtime::wait::await_condition(
            deployments.clone(),
            name,
            kube::runtime::wait::conditions::is_deployment_completed(),
        );
        tokio::time::timeout(Duration::from_secs(60), done).await??;
    }
    let api = Api::<Redeployment>::namespaced(client.clone(), &namespace);

    // 1. Killed right after its first step: a build and a restart in flight.
    let operator = OperatorProcess::start(control_plane, &log, &[]).await?;
    let plan = json!([{"service": "web", "action": "build", "ref": SHA}, {"service": "worker", "action": "restart"}]);
    let redeployment = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "metadata": {"name": "interrupted"},
        "spec": {"app": "shop", "trigger": {"provider": "manual", "event": "test"}, "plan": plan},
    });
    api.create(&PostParams::default(), &serde_json::from_value(redeployment)?).await?;
    eventually("the Redeployment to start", || async {
        Ok(phase(&api, "interrupted").await?.is_some_and(|p| p != Phase::Pending).then_some(()))
    })
    .await?;
    operator.kill();

    // 2. A hook accepted (202) just before a kill is not lost either.
    let operator = OperatorProcess::start(control_plane, &log, &[]).await?;
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace).get("shop-hook").await?;
    let data = secret.data.unwrap_or_default();
    let value = |key: &str| String::from_utf8(data.get(key).map(|v| v.0.clone()).unwrap_or_default());
    let hook = format!("{}/stacks/redeploy/{}/{}?services=worker", operator.hook, value("id")?, value("token")?);
    let response = reqwest::Client::new().post(&hook).send().await?;
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await?;
    operator.kill();

    // 3. A new operator finishes both.
    let _operator = OperatorProcess::start(control_plane, &log, &[]).await?;
    let hooked = accepted["redeployment"].as_str().unwrap_or_default().to_string();
    for name in ["interrupted", hooked.as_str()] {
        let finished = eventually(&format!("{name} to finish"), || async {
            Ok(phase(&api, name).await?.filter(|p| p.is_finished()))
        })
        .await?;
        assert_eq!(finished, Phase::Succeeded, "{name}: {:?}", api.get(name).await?.status);
    }
    let interrupted = api.get("interrupted").await?.status.unwrap_or_default();
    assert!(interrupted.services.iter().all(|r| r.phase == ServicePhase::Succeeded), "{interrupted:?}");

    // Exactly once: one build Job, and one rollout per Redeployment and workload.
    let jobs = Api::<Job>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await?;
    assert_eq!(jobs.items.len(), 1, "the build ran once");
    assert_eq!(replica_sets(&client, &namespace, "web").await?, 2, "web: the initial ReplicaSet and one rollout");
    assert_eq!(
        replica_sets(&client, &namespace, "worker").await?,
        3,
        "worker: the initial ReplicaSet and one rollout per Redeployment"
    );
    Ok(())
}
