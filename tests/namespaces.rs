//! `watchNamespaces`: the chart's RBAC for two namespaces, and the operator
//! running as its ServiceAccount with `--watch-namespace` for both. It works
//! there, ignores a third namespace, and the account may touch nothing else.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use redeploy_operator::{
    api::{App, Phase, Redeployment},
    cache::Scope,
    hook::credentials,
    leader::LeaseConfig,
};
use redeploy_testenv::ControlPlane;
use serde_json::json;
use support::{
    chart::{CHART, can, run, service_account_client},
    eventually,
};

/// A release name of its own: its aggregated ClusterRoles must not collide with other tests'.
const RELEASE: &str = "scoped";

/// An App `shop` with an image-based Service `worker` and its Deployment.
fn shop() -> [serde_json::Value; 3] {
    let image = "registry.example.com/worker:1";
    [
        support::object(support::app("shop")),
        support::object(support::image_service("worker", "shop", image)),
        support::object(support::deployment("worker", image)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_namespaces_the_operator_works_there_and_can_touch_nothing_elsewhere() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let admin = control_plane.client().await?;
    redeploy_operator::install::apply_crds(&admin, Duration::from_secs(60)).await?;
    let release_namespace = control_plane.namespace(&admin, "scoped-operator").await?;
    let a = control_plane.namespace(&admin, "scoped-a").await?;
    let b = control_plane.namespace(&admin, "scoped-b").await?;
    let c = control_plane.namespace(&admin, "scoped-c").await?;
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let mut command = control_plane.helm();
    command.args(["template", RELEASE, CHART, "--kube-version", "v1.37.2", "--namespace", &release_namespace]);
    command.args(["--set", &format!("publicUrl=http://127.0.0.1:{hook_port}")]);
    command.args(["--set", &format!("watchNamespaces={{{a},{b}}}")]);
    let rendered = run(&mut command)?;
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple::<serde_json::Value>(&rendered)?.into_iter().filter(|d| !d.is_null()).collect();
    let kind_of = |d: &serde_json::Value| d["kind"].as_str().unwrap_or_default().to_string();
    // The operator's account is bound to nothing cluster-wide: the only
    // ClusterRoles left are the ones aggregated into view and edit for users.
    assert!(!documents.iter().any(|d| kind_of(d) == "ClusterRoleBinding"), "no ClusterRoleBinding");
    for role in documents.iter().filter(|d| kind_of(d) == "ClusterRole") {
        assert!(role["aggregationRule"].is_object() || role["metadata"]["labels"].is_object(), "{role}");
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        assert!(name.ends_with("-view") || name.ends_with("-edit"), "an unexpected ClusterRole {name}");
    }
    let role_namespaces: Vec<&str> = documents
        .iter()
        .filter(|d| kind_of(d) == "Role" && !d["metadata"]["name"].as_str().unwrap_or_default().ends_with("-leader"))
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(role_namespaces, [a.as_str(), b.as_str()]);
    let deployment = documents.iter().find(|d| kind_of(d) == "Deployment").cloned().unwrap_or_default();
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let watched = env.as_array().into_iter().flatten().find(|e| e["name"] == "WATCH_NAMESPACES");
    assert_eq!(watched.map(|e| e["value"].clone()), Some(json!(format!("{a},{b}"))));

    // The chart's RBAC objects, applied as Helm would.
    for document in documents.iter().filter(|d| {
        ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"].contains(&kind_of(d).as_str())
    }) {
        let namespace = document["metadata"]["namespace"].as_str().unwrap_or(&release_namespace).to_string();
        support::apply(&admin, &namespace, [document.clone()]).await?;
    }
    let account = format!("{RELEASE}-redeploy-operator");
    let operator_client = service_account_client(control_plane, &admin, &release_namespace, &account).await?;

    let kinds = [
        ("", "secrets"),
        ("batch", "jobs"),
        ("apps", "deployments"),
        ("redeploy.dev", "apps"),
        ("redeploy.dev", "redeployments"),
    ];
    for resource in kinds {
        for verb in ["get", "list", "watch", "create", "patch"] {
            // What the operator never does to these kinds, anywhere.
            let granted =
                !matches!((verb, resource.1), ("create", "deployments" | "apps") | ("patch", "jobs" | "apps"));
            for namespace in [&a, &b] {
                let allowed = can(&operator_client, verb, resource, Some(namespace)).await?;
                assert_eq!(allowed, granted, "{verb} {} in {namespace}", resource.1);
            }
            assert!(!can(&operator_client, verb, resource, Some(&c)).await?, "{verb} {} in {c}", resource.1);
            assert!(!can(&operator_client, verb, resource, None).await?, "{verb} {} cluster-wide", resource.1);
        }
    }

    // Ready only once every watch has listed: a cluster-wide list or watch it
    // may not do would keep it unready.
    let mut config = support::operator_config(hook_port, 4);
    config.scope = Scope::of([&a, &b]);
    config.leader_election = Some(LeaseConfig::new(&release_namespace, RELEASE, "scoped-test"));
    let operator = support::start_operator_with(operator_client, config).await?;
    eventually("the operator to lead", || async { Ok(operator.is_leading().then_some(())) }).await?;

    for namespace in [&a, &c] {
        support::apply(&admin, namespace, shop()).await?;
    }
    // In a: the hook Secret, a call accepted, the rollout done.
    let secrets_a = Api::<Secret>::namespaced(admin.clone(), &a);
    let url = eventually("the hook Secret in a", || async {
        Ok(match secrets_a.get_opt("shop-hook").await? {
            Some(secret) => Some(support::secret_value(&secret, "url")?),
            None => None,
        })
    })
    .await?;
    let apps_a = Api::<App>::namespaced(admin.clone(), &a);
    eventually("the App in a to list its Service", || async {
        let services = apps_a.get("shop").await?.status.map(|s| s.services).unwrap_or_default();
        Ok((services == ["worker"]).then_some(()))
    })
    .await?;
    let response = reqwest::Client::new().post(&url).send().await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    assert_eq!(status, 202, "{body}");
    let name = body["redeployment"].as_str().unwrap_or_default().to_string();
    let redeployments = Api::<Redeployment>::namespaced(admin.clone(), &a);
    let phase = eventually(&format!("Redeployment {name} to finish"), || async {
        Ok(redeployments.get_opt(&name).await?.and_then(|r| r.status?.phase).filter(|p| p.is_finished()))
    })
    .await?;
    assert_eq!(phase, Phase::Succeeded, "{:?}", redeployments.get(&name).await?.status);

    // In c: nothing. Not even a hook Secret made as the operator makes them
    // (by the administrator, owned by c's App) opens its hook.
    let secrets_c = Api::<Secret>::namespaced(admin.clone(), &c);
    let apps_c = Api::<App>::namespaced(admin.clone(), &c);
    let app_c = apps_c.get("shop").await?;
    assert!(secrets_c.get_opt("shop-hook").await?.is_none(), "no hook Secret in c");
    assert!(app_c.status.is_none(), "the App in c was not reconciled: {:?}", app_c.status);
    let planted = credentials::desired_secret(&app_c, None, &format!("http://127.0.0.1:{hook_port}"));
    let planted = secrets_c.create(&PostParams::default(), &planted).await?;
    let url_c = support::secret_value(&planted, "url")?;
    // Give a watch of c, if there were one, time to see it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = reqwest::Client::new().post(&url_c).send().await?;
    assert_eq!(response.status(), 404, "{}", response.text().await?);
    assert!(apps_c.get("shop").await?.status.is_none(), "the App in c is still untouched");
    // The hook Secret in a, by contrast, still opens its hook.
    let response = reqwest::Client::new().post(&url).send().await?;
    assert_eq!(response.status(), 202);

    operator.shutdown().await;
    Ok(())
}

#[test]
fn the_schema_refuses_a_watch_namespace_that_cannot_exist() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let mut command = control_plane.helm();
    command.args(["template", RELEASE, CHART, "--kube-version", "v1.37.2"]);
    command.args(["--set", "publicUrl=https://h.example.com", "--set", "watchNamespaces={shop,Not_A_Namespace}"]);
    let error = run(&mut command).expect_err("an invalid namespace name").to_string();
    assert!(error.contains("at '/watchNamespaces/1'"), "{error}");
    Ok(())
}
