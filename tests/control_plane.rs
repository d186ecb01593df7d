//! The foundation, on a real control plane (etcd, kube-apiserver,
//! controller-manager, scheduler and kwok built from their Go modules): the
//! CRDs install, the API server enforces their schemas, and workloads run.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use redeploy_operator::api::{DeploymentProfile, Redeployment, Service};
use serde_json::json;

const EXAMPLES: [&str; 5] = ["workloads.yaml", "app.yaml", "services.yaml", "profile.yaml", "redeployment.yaml"];

fn example(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn crds_are_established_with_names_for_kubectl() -> anyhow::Result<()> {
    let (_, client, _) = support::setup("crds").await?;
    let crds = Api::<CustomResourceDefinition>::all(client);
    for (name, short) in [
        ("apps.redeploy.dev", "rapp"),
        ("services.redeploy.dev", "rsvc"),
        ("deploymentprofiles.redeploy.dev", "dprof"),
        ("redeployments.redeploy.dev", "rd"),
    ] {
        let crd = crds.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is not Established");
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]), "{name}");
        assert_eq!(crd.spec.names.categories, Some(vec!["redeploy".to_string()]), "{name}");
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name} has no status subresource"
        );
        assert!(
            !version.additional_printer_columns.clone().unwrap_or_default().is_empty(),
            "{name} has no printer columns"
        );
    }
    Ok(())
}

#[tokio::test]
async fn examples_are_accepted_and_listed_by_kubectl() -> anyhow::Result<()> {
    let (control_plane, client, namespace) = support::setup("examples").await?;
    for file in EXAMPLES {
        support::apply_yaml(&client, &namespace, &example(file)).await?;
    }
    let services = Api::<Service>::namespaced(client.clone(), &namespace).list(&ListParams::default()).await?;
    assert_eq!(services.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(), ["web", "worker"]);
    let profile = Api::<DeploymentProfile>::namespaced(client.clone(), &namespace).get("quick-fix").await?;
    assert_eq!(profile.spec.display_name.as_deref(), Some("Quick Fix"));

    // `kubectl get redeploy` lists every kind of the category, with printer columns.
    let output = control_plane.kubectl().args(["get", "redeploy", "-n", &namespace]).output()?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(output.status.success(), "kubectl failed: {}", String::from_utf8_lossy(&output.stderr));
    for expected in [
        "app.redeploy.dev/hello-world",
        "service.redeploy.dev/web",
        "service.redeploy.dev/worker",
        "deploymentprofile.redeploy.dev/quick-fix",
        "redeployment.redeploy.dev/manual-worker-restart",
        "Quick Fix",
    ] {
        assert!(stdout.contains(expected), "`kubectl get redeploy` lacks {expected}:\n{stdout}");
    }
    let output = control_plane.kubectl().args(["get", "rd", "-n", &namespace]).output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let header = stdout.lines().next().unwrap_or_default();
    for column in ["APP", "TRIGGER", "PHASE", "SERVICES", "AGE"] {
        assert!(header.contains(column), "Redeployment columns lack {column}: {header}");
    }
    assert!(stdout.contains("manual") && stdout.contains("worker"), "{stdout}");
    let output = control_plane.kubectl().args(["get", "rsvc", "-n", &namespace]).output()?;
    let header = String::from_utf8(output.stdout)?.lines().next().unwrap_or_default().to_string();
    for column in ["APP", "TYPE", "KIND", "TARGET", "DEPLOYED", "AGE"] {
        assert!(header.contains(column), "Service columns lack {column}: {header}");
    }
    Ok(())
}

/// Creates `object` exactly as written and returns the API server's refusal message.
async fn rejection(client: &kube::Client, namespace: &str, object: serde_json::Value) -> String {
    let resource = match object["kind"].as_str() {
        Some("Service") => ApiResource::erase::<Service>(&()),
        Some("DeploymentProfile") => ApiResource::erase::<DeploymentProfile>(&()),
        other => panic!("unexpected kind {other:?}"),
    };
    let object: DynamicObject = serde_json::from_value(object).expect("a Kubernetes object");
    match Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
        .create(&PostParams::default(), &object)
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("the API server accepted an invalid object: {other:?}"),
    }
}

fn service(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["app"] = json!("hello-world");
    spec["target"] = json!({"name": "web"});
    json!({"apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_rule_message() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("invalid").await?;
    let git = json!({"repository": "https://github.com/o/r"});
    let build = json!({"image": "registry.example.com/o/r"});
    let image = json!({"reference": "nginx:1.27"});

    let both =
        rejection(&client, &namespace, service("both", json!({"git": git, "build": build, "image": image}))).await;
    assert!(both.contains("built from Git or deployed from an image, not both"), "{both}");

    let neither = rejection(&client, &namespace, service("neither", json!({}))).await;
    assert!(neither.contains("a Service needs a source"), "{neither}");

    let no_build = rejection(&client, &namespace, service("no-build", json!({"git": git}))).await;
    assert!(no_build.contains("needs spec.build.image"), "{no_build}");

    let bad_kind = rejection(
        &client,
        &namespace,
        json!({"apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": "bad-kind"},
               "spec": {"app": "hello-world", "target": {"kind": "CronJob", "name": "web"}, "image": image}}),
    )
    .await;
    assert!(bad_kind.contains("spec.target.kind") && bad_kind.contains("Unsupported value"), "{bad_kind}");

    let bad_strategy = rejection(
        &client,
        &namespace,
        json!({"apiVersion": "redeploy.dev/v1alpha1", "kind": "DeploymentProfile", "metadata": {"name": "bad"},
               "spec": {"app": "hello-world", "strategy": "sideways"}}),
    )
    .await;
    assert!(bad_strategy.contains("spec.strategy") && bad_strategy.contains("\"parallel\""), "{bad_strategy}");

    let bad_app_name = rejection(
        &client,
        &namespace,
        json!({"apiVersion": "redeploy.dev/v1alpha1", "kind": "DeploymentProfile", "metadata": {"name": "bad-app"},
               "spec": {"app": "Not_A_Name"}}),
    )
    .await;
    assert!(bad_app_name.contains("spec.app"), "{bad_app_name}");

    // A valid one is accepted, so the rejections above are about the rules.
    let valid = service("valid", json!({"git": git, "build": build}));
    Api::<Service>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &serde_json::from_value(valid)?)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_redeployment_spec_cannot_change() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("immutable").await?;
    support::apply_yaml(&client, &namespace, &example("redeployment.yaml")).await?;
    let api = Api::<Redeployment>::namespaced(client, &namespace);
    let mut redeployment = api.get("manual-worker-restart").await?;
    redeployment.spec.services = vec!["web".into()];
    match api.replace("manual-worker-restart", &PostParams::default(), &redeployment).await {
        Err(kube::Error::Api(status)) => assert!(status.message.contains("spec cannot change"), "{status:?}"),
        other => panic!("a Redeployment's spec was changed: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available_on_the_kwok_node() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("workloads").await?;
    support::apply_yaml(&client, &namespace, &example("workloads.yaml")).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let completed = await_condition(deployments.clone(), "web", conditions::is_deployment_completed());
    tokio::time::timeout(Duration::from_secs(60), completed).await??;

    let web = deployments.get("web").await?;
    let status = web.status.unwrap_or_default();
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
    let available = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True"));
    assert!(available, "Deployment web is not Available");

    let pods = Api::<Pod>::namespaced(client, &namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/name=web"))
        .await?;
    assert_eq!(pods.items.len(), 2);
    for pod in pods.items {
        let spec = pod.spec.unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some(redeploy_testenv::NODE_NAME), "pod not scheduled on the kwok node");
        let status = pod.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "pod is not Ready");
    }
    Ok(())
}
