//! The Helm chart on the real control plane: it lints, refuses bad values,
//! installs (CRDs included), and its RBAC is enough for the operator to do all
//! of its work, leader election included, running as the chart's
//! ServiceAccount, and no more.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, events::v1::Event, networking::v1::Ingress};
use kube::{Api, Client, api::ListParams};
use redeploy_operator::{
    api::{App, Phase, Redeployment, Service},
    leader::LeaseConfig,
};
use redeploy_testenv::ControlPlane;
use serde_json::json;
use support::{
    chart::{CHART, can, run, service_account_client},
    eventually,
};

const RELEASE: &str = "redeploy-operator";
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

#[test]
fn the_chart_lints_and_refuses_what_it_cannot_run() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    run(control_plane.helm().args(["lint", "--strict", CHART, "--set", "publicUrl=https://hooks.example.com"]))?;

    let template = |sets: &[&str]| {
        let mut command = control_plane.helm();
        // Rendered offline: helm would assume Kubernetes v1.20, older than the chart allows.
        command.args(["template", RELEASE, CHART, "--kube-version", "v1.37.2"]);
        for set in sets {
            command.args(["--set", set]);
        }
        run(&mut command)
    };
    let missing = template(&[]).expect_err("publicUrl is required");
    assert!(missing.to_string().contains("publicUrl is required"), "{missing}");
    let replicas = template(&["publicUrl=https://h.example.com", "replicaCount=3"])?;
    assert!(replicas.contains("replicas: 3") && replicas.contains("REDEPLOY_LEADER_ELECTION"), "{replicas}");

    let rendered = template(&["publicUrl=https://h.example.com"])?;
    assert!(!rendered.contains("kind: Ingress"), "no Ingress unless enabled");
    assert!(rendered.contains("value: \"https://h.example.com\""), "{rendered}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_and_its_rbac_is_all_the_operator_needs() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let admin = control_plane.client().await?;
    let release_namespace = control_plane.namespace(&admin, "chart").await?;
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    run(control_plane.helm().args(["install", RELEASE, CHART, "--namespace", &release_namespace]).args([
        "--set",
        &format!("publicUrl=http://127.0.0.1:{hook_port}"),
        "--set",
        "ingress.enabled=true",
    ]))?;
    let ingress = Api::<Ingress>::namespaced(admin.clone(), &release_namespace).get(RELEASE).await?;
    let paths = ingress.spec.and_then(|s| s.rules).unwrap_or_default();
    assert_eq!(paths[0].http.as_ref().map(|h| h.paths[0].path.clone()), Some(Some("/stacks/redeploy".into())));
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &release_namespace).get(RELEASE).await?;
    assert_eq!(deployment.spec.replicas, Some(1));

    // The operator runs with the token of the chart's ServiceAccount.
    let operator_client = service_account_client(control_plane, &admin, &release_namespace, RELEASE).await?;
    for (verb, group, resource) in
        [("patch", "apps", "deployments"), ("create", "redeploy.dev", "redeployments"), ("create", "batch", "jobs")]
    {
        assert!(
            can(&operator_client, verb, (group, resource), Some("default")).await?,
            "the operator may {verb} {resource}"
        );
    }
    for (verb, group, resource) in [
        ("delete", "apps", "deployments"),
        ("create", "apps", "deployments"),
        ("get", "", "configmaps"),
        ("delete", "", "secrets"),
        ("patch", "apiextensions.k8s.io", "customresourcedefinitions"),
        ("create", "", "namespaces"),
        ("update", "redeploy.dev", "apps"),
        ("update", "coordination.k8s.io", "leases"),
    ] {
        assert!(
            !can(&operator_client, verb, (group, resource), Some("default")).await?,
            "the operator may not {verb} {resource}"
        );
    }
    // Ready only once every watch has listed: any list or watch it may not do
    // keeps it unready. It elects itself leader on the chart's Lease, as in a pod.
    let mut config = support::operator_config(hook_port, 4);
    config.leader_election = Some(LeaseConfig::new(&release_namespace, RELEASE, "chart-test"));
    let operator = support::start_operator_with(operator_client, config).await?;
    eventually("the operator to lead", || async { Ok(operator.is_leading().then_some(())) }).await?;

    // An App with a Git-built and an image-based Service, posted to.
    let namespace = control_plane.namespace(&admin, "chart-app").await?;
    let objects = format!(
        r#"
apiVersion: redeploy.dev/v1alpha1
kind: App
metadata: {{name: shop}}
spec: {{history: {{limit: 1}}}}
---
apiVersion: redeploy.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  app: shop
  target: {{name: web}}
  git: {{repository: "https://github.com/Codertocat/Hello-World", branch: master}}
  build: {{image: registry.example.com/web, template: {}}}
---
apiVersion: redeploy.dev/v1alpha1
kind: Service
metadata: {{name: worker}}
spec:
  app: shop
  target: {{name: worker}}
  image: {{reference: "registry.example.com/worker:1"}}
{}{}"#,
        support::stand_in_builder(&support::build_report("registry.example.com/web", SHA)),
        workload("web"),
        workload("worker")
    );
    support::apply_yaml(&admin, &namespace, &objects).await?;
    let url = support::hook_url(&admin, &namespace, "shop").await?;
    assert!(url.starts_with(&format!("http://127.0.0.1:{hook_port}/stacks/redeploy/")), "{url}");
    // The hook plans from the operator's caches: wait until they hold both Services.
    let apps = Api::<App>::namespaced(admin.clone(), &namespace);
    eventually("the App to list its Services", || async {
        let services = apps.get("shop").await?.status.map(|s| s.services).unwrap_or_default();
        Ok((services == ["web", "worker"]).then_some(()))
    })
    .await?;

    let redeployments = Api::<Redeployment>::namespaced(admin.clone(), &namespace);
    let mut names = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new().post(format!("{url}?git_ref={SHA}")).send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["services"], json!(["web", "worker"]), "{body}");
        let name = body["redeployment"].as_str().unwrap_or_default().to_string();
        let phase = eventually(&format!("Redeployment {name} to finish"), || async {
            let phase = redeployments.get_opt(&name).await?.and_then(|r| r.status?.phase);
            Ok(phase.filter(|p| p.is_finished()))
        })
        .await?;
        assert_eq!(phase, Phase::Succeeded, "{:?}", redeployments.get(&name).await?.status);
        names.push(name);
    }
    // History limit 1: the first was pruned (delete, and its finalizer removed).
    eventually("the first Redeployment to be pruned", || async {
        Ok(redeployments.get_opt(&names[0]).await?.is_none().then_some(()))
    })
    .await?;

    let web = Api::<Deployment>::namespaced(admin.clone(), &namespace).get("web").await?;
    let image = web.spec.template.spec.map(|s| s.containers[0].image.clone());
    assert_eq!(image, Some(Some(format!("registry.example.com/web:{SHA}"))), "built and deployed");
    let services = Api::<Service>::namespaced(admin.clone(), &namespace);
    let worker = eventually("Service worker to record the second Redeployment", || async {
        let worker = services.get("worker").await?.status.unwrap_or_default();
        Ok((worker.last_redeployment.as_deref() == Some(names[1].as_str())).then_some(worker))
    })
    .await?;
    assert!(worker.conditions.iter().any(|c| c.type_ == "TargetReady" && c.status == "True"));
    let app = apps.get("shop").await?;
    assert!(app.status.and_then(|s| s.hook).is_some());
    let events = Api::<Event>::namespaced(admin.clone(), &namespace).list(&ListParams::default()).await?;
    let on_app: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(on_app.iter().any(|r| r == "RedeploymentSucceeded"), "Events published: {on_app:?}");
    operator.shutdown().await;
    Ok(())
}

fn workload(name: &str) -> String {
    format!("---\n{}\n", support::object(support::deployment(name, &format!("registry.example.com/{name}:1"))))
}

/// `helm template` of the chart with `sets`; its documents, or helm's error.
fn render(control_plane: &ControlPlane, release: &str, sets: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut command = control_plane.helm();
    command.args(["template", release, CHART, "--kube-version", "v1.37.2", "--set", "publicUrl=https://h.example.com"]);
    for set in sets {
        command.args(["--set", set]);
    }
    let rendered = run(&mut command)?;
    Ok(serde_saphyr::from_multiple::<serde_json::Value>(&rendered)?.into_iter().filter(|d| !d.is_null()).collect())
}

fn of_kind<'a>(documents: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_values_schema_refuses_wrong_values_with_their_path() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    for (set, expected) in [
        ("replicaCount=two", "at '/replicaCount'"),
        ("replicaCount=0", "at '/replicaCount': minimum"),
        ("publicUrl=ftp://hooks.example.com", "at '/publicUrl'"),
        ("service.type=Ingress", "at '/service/type'"),
        ("hook.bodyLimit=-1", "at '/hook/bodyLimit'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
    ] {
        let error = render(control_plane, RELEASE, &[set]).expect_err(set).to_string();
        assert!(error.contains("values don't meet the specifications of the schema"), "{set}: {error}");
        assert!(error.contains(expected), "{set}: {error}");
    }
    // helm install checks the same schema, before anything is created.
    let namespace = format!("schema-{}", rand::random::<u32>());
    let install = run(control_plane.helm().args(["install", "schema", CHART, "--namespace", &namespace]).args([
        "--create-namespace",
        "--set",
        "publicUrl=https://h.example.com",
        "--set",
        "service.type=Ingress",
    ]))
    .expect_err("a wrong service.type")
    .to_string();
    assert!(install.contains("at '/service/type'"), "{install}");
    Ok(())
}

#[test]
fn the_chart_renders_what_a_platform_team_expects() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let defaults = render(control_plane, RELEASE, &[])?;
    assert!(of_kind(&defaults, "HTTPRoute").is_empty() && of_kind(&defaults, "ServiceMonitor").is_empty());
    let pdb = of_kind(&defaults, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(pdb[0]["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb[0]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], RELEASE);

    // The hook port open to all, metrics only from the selected namespaces (and the test pod).
    let policy = of_kind(&defaults, "NetworkPolicy");
    let ingress = policy[0]["spec"]["ingress"].as_array().cloned().unwrap_or_default();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    assert_eq!(ingress[0]["ports"][0]["port"], "hook");
    assert!(ingress[0]["from"].is_null(), "the hook is open to every caller");
    assert_eq!(ingress[1]["ports"][0]["port"], "metrics");
    let selector = &ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
    assert_eq!(selector, "monitoring");
    let custom = render(control_plane, RELEASE, &["networkPolicy.metricsNamespaceSelector.matchLabels.team=obs"])?;
    let custom = of_kind(&custom, "NetworkPolicy")[0]["spec"]["ingress"][1]["from"][0]["namespaceSelector"].clone();
    assert_eq!(custom["matchLabels"]["team"], "obs");

    // View and edit, aggregated into the built-in roles.
    let roles = of_kind(&defaults, "ClusterRole");
    let aggregated = |label: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["labels"][label] == "true")
            .map(|r| r["rules"][0]["verbs"].clone())
            .unwrap_or_default()
    };
    assert_eq!(aggregated("rbac.authorization.k8s.io/aggregate-to-view"), json!(["get", "list", "watch"]));
    assert!(aggregated("rbac.authorization.k8s.io/aggregate-to-edit").to_string().contains("delete"));

    // The HTTPRoute and the Ingress expose only the hook's path.
    let exposed = render(
        control_plane,
        RELEASE,
        &[
            "httpRoute.enabled=true",
            "httpRoute.parentRefs[0].name=public",
            "httpRoute.hostnames[0]=hooks.example.com",
            "ingress.enabled=true",
            "serviceMonitor.enabled=true",
        ],
    )?;
    let route = of_kind(&exposed, "HTTPRoute")[0];
    assert_eq!(route["spec"]["parentRefs"], json!([{"name": "public"}]));
    assert_eq!(route["spec"]["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        route["spec"]["rules"][0]["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/stacks/redeploy"}}])
    );
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 80);
    let ingress = of_kind(&exposed, "Ingress")[0];
    assert_eq!(ingress["spec"]["rules"][0]["http"]["paths"][0]["path"], "/stacks/redeploy");
    let monitor = of_kind(&exposed, "ServiceMonitor")[0];
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let missing = render(control_plane, RELEASE, &["httpRoute.enabled=true"]).expect_err("no parentRefs").to_string();
    assert!(missing.contains("httpRoute.parentRefs is required"), "{missing}");

    // helm test's pod: /readyz and a hook ping.
    let test_pod = of_kind(&defaults, "Pod");
    assert_eq!(test_pod[0]["metadata"]["annotations"]["helm.sh/hook"], "test");
    let script = test_pod[0]["spec"]["containers"][0]["command"][2].as_str().unwrap_or_default();
    assert!(script.contains("GET /readyz") && script.contains("POST /stacks/redeploy/"), "{script}");

    // Every value is documented in the chart's README.
    let readme = std::fs::read_to_string(format!("{CHART}/README.md"))?;
    let values: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml"))?)?;
    let mut undocumented = Vec::new();
    fn leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value.as_object() {
            Some(map) if !map.is_empty() && prefix != "resources" && !prefix.ends_with("Selector") => {
                for (key, child) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    leaves(&path, child, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    for path in paths {
        if !readme.contains(&format!("| `{path}` |")) {
            undocumented.push(path);
        }
    }
    assert!(undocumented.is_empty(), "values missing from the chart's README: {undocumented:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregated_roles_give_view_and_edit_users_the_redeploy_kinds() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let admin = control_plane.client().await?;
    let release_namespace = control_plane.namespace(&admin, "chart-roles").await?;
    // A release name of its own: its ClusterRoles must not collide with the other tests'.
    run(control_plane
        .helm()
        .args(["install", "roles", CHART, "--namespace", &release_namespace])
        .args(["--set", "publicUrl=https://h.example.com"]))?;
    let namespace = control_plane.namespace(&admin, "chart-roles-user").await?;
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        let objects = format!(
            "---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {user}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {user}\nroleRef:\n  \
             apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\nsubjects:\n- kind: ServiceAccount\n  \
             name: {user}\n  namespace: {namespace}\n"
        );
        support::apply_yaml(&admin, &namespace, &objects).await?;
    }
    let viewer = service_account_client(control_plane, &admin, &namespace, "viewer").await?;
    let editor = service_account_client(control_plane, &admin, &namespace, "editor").await?;
    let can_in = |client: Client, verb: &'static str, resource: &'static str| {
        let namespace = namespace.clone();
        async move { can(&client, verb, ("redeploy.dev", resource), Some(&namespace)).await }
    };
    // The aggregation controller folds the chart's roles into view and edit.
    eventually("view and edit to include the redeploy kinds", || async {
        Ok((can_in(viewer.clone(), "list", "redeployments").await? && can_in(editor.clone(), "create", "apps").await?)
            .then_some(()))
    })
    .await?;
    for resource in ["apps", "services", "deploymentprofiles", "redeployments"] {
        assert!(can_in(viewer.clone(), "get", resource).await?, "view may get {resource}");
        assert!(!can_in(viewer.clone(), "create", resource).await?, "view may not create {resource}");
        assert!(can_in(editor.clone(), "patch", resource).await?, "edit may patch {resource}");
    }
    run(control_plane.helm().args(["uninstall", "roles", "--namespace", &release_namespace]))?;
    Ok(())
}
