//! `kubectl redeploy` (the `kubectl-redeploy` binary) against the real control
//! plane and a running operator: trigger with modifiers and follow to the
//! end, refuse what cannot be planned, show the URL, rotate, list history.

mod support;

use std::process::{Command, Output};

use kube::Api;
use redeploy_operator::api::{App, Provider, Redeployment};
use support::{eventually, operator};

/// App `shop` with Services `worker` and `stuck` (whose pods never get
/// ready), their Deployments, and profile `Quick Fix` deploying `stuck` with a
/// 3 s rollout timeout.
fn objects() -> Vec<serde_json::Value> {
    let mut quick = support::profile("quick", "shop", &["stuck"]);
    quick.spec.display_name = Some("Quick Fix".into());
    quick.spec.rollout.timeout_seconds = 3;
    let mut stuck = support::deployment("stuck", "registry.example.com/stuck:1");
    if let Some(template) = stuck.spec.template.metadata.as_mut() {
        template.annotations = Some([("testenv.redeploy.dev/never-ready".to_string(), "true".to_string())].into());
    }
    vec![
        support::object(support::app("shop")),
        support::object(support::image_service("worker", "shop", "registry.example.com/worker:1")),
        support::object(support::image_service("stuck", "shop", "registry.example.com/stuck:1")),
        support::object(quick),
        support::object(support::deployment("worker", "registry.example.com/worker:1")),
        support::object(stuck),
    ]
}

fn kubectl_redeploy(namespace: &str, args: &[&str]) -> anyhow::Result<Output> {
    let control_plane = redeploy_testenv::ControlPlane::shared();
    Ok(Command::new(env!("CARGO_BIN_EXE_kubectl-redeploy"))
        .env("KUBECONFIG", control_plane.kubeconfig_path())
        .args(["-n", namespace])
        .args(args)
        .output()?)
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn kubectl_redeploy_triggers_follows_rotates_and_lists() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("plugin").await?;
    let operator = operator();
    support::apply(&client, &namespace, objects()).await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    eventually("the App's hook and Services", || async {
        let status = apps.get("shop").await?.status.unwrap_or_default();
        Ok((status.hook.is_some() && status.services.len() == 2).then_some(()))
    })
    .await?;

    let url = kubectl_redeploy(&namespace, &["url", "shop"])?;
    assert!(url.status.success(), "{}", text(&url));
    let url = String::from_utf8(url.stdout)?.trim().to_string();
    assert!(url.starts_with(&format!("{}/stacks/redeploy/", operator.hook)), "{url}");

    let done = kubectl_redeploy(&namespace, &["trigger", "shop", "--services", "worker", "--wait"])?;
    let output = text(&done);
    assert!(done.status.success(), "{output}");
    assert!(output.contains("worker") && output.contains(": Succeeded"), "{output}");
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    let name = output.split_whitespace().next().and_then(|s| s.strip_prefix("redeployment.redeploy.dev/"));
    let stored = redeployments.get(name.unwrap_or_default()).await?;
    assert_eq!(stored.spec.trigger.provider, Provider::Manual);
    assert_eq!(stored.spec.plan.iter().map(|p| p.service.as_str()).collect::<Vec<_>>(), ["worker"]);

    // A profile by display name; its timeout fails the stuck rollout, and the exit status says so.
    let failed = kubectl_redeploy(&namespace, &["trigger", "shop", "--profile", "Quick Fix", "--wait"])?;
    let output = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{output}");
    assert!(output.contains("stuck") && output.contains(": Failed"), "{output}");

    for (args, expected) in [
        (&["trigger", "shop", "--services", "nope"][..], "nope"),
        (&["trigger", "shop", "--git-ref", "bad ref"][..], "git_ref"),
        (&["trigger", "gone"][..], "App `gone` does not exist"),
    ] {
        let refused = kubectl_redeploy(&namespace, args)?;
        assert!(!refused.status.success() && text(&refused).contains(expected), "{args:?}: {}", text(&refused));
    }

    let history = kubectl_redeploy(&namespace, &["history", "shop"])?;
    let listed = text(&history);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two Redeployments, no refused ones: {listed}");
    assert!(lines[1].contains("Failed") && lines[2].contains("Succeeded"), "newest first: {listed}");

    let rotated = kubectl_redeploy(&namespace, &["rotate", "shop"])?;
    assert!(rotated.status.success(), "{}", text(&rotated));
    let new_url = String::from_utf8(rotated.stdout)?.trim().to_string();
    assert!(new_url != url && new_url.starts_with(&format!("{}/stacks/redeploy/", operator.hook)), "{new_url}");
    let http = reqwest::Client::new();
    eventually("the old URL to stop working", || async {
        Ok((http.post(&url).send().await?.status() == 404).then_some(()))
    })
    .await?;
    let accepted = eventually("the new URL to work", || async {
        let status = http.post(format!("{new_url}?services=worker")).send().await?.status();
        Ok((status == 202).then_some(status))
    })
    .await?;
    assert_eq!(accepted, 202);
    Ok(())
}

#[tokio::test]
async fn kubectl_redeploy_dry_runs_per_service_refs_and_lists_deliveries() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("plugin-dry").await?;
    let mut objects = objects();
    objects.push(serde_json::json!({
        "apiVersion": "redeploy.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {
            "app": "shop",
            "target": {"name": "web"},
            "git": {"repository": "https://github.com/o/web", "branch": "main"},
            "build": {"image": "registry.example.com/web"},
        },
    }));
    let _ = operator();
    support::apply(&client, &namespace, objects).await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    eventually("the App's hook and Services", || async {
        let status = apps.get("shop").await?.status.unwrap_or_default();
        Ok((status.hook.is_some() && status.services.len() == 3).then_some(()))
    })
    .await?;
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);

    let dry = kubectl_redeploy(&namespace, &["trigger", "shop", "--services", "web:v1.2.3,worker", "--dry-run"])?;
    let output = text(&dry);
    assert!(dry.status.success(), "{output}");
    assert!(
        output.contains("would deploy web at v1.2.3, worker at")
            || output.contains("would deploy web at v1.2.3, worker"),
        "{output}"
    );
    let stuck = output.lines().find(|l| l.starts_with("stuck")).unwrap_or_default();
    assert!(stuck.contains("notInServices"), "{output}");
    assert!(redeployments.list(&Default::default()).await?.items.is_empty(), "a dry run stores nothing");

    // The per-Service ref is stored in the plan of a real trigger.
    let real = kubectl_redeploy(&namespace, &["trigger", "shop", "--services", "web:v1.2.3"])?;
    assert!(real.status.success(), "{}", text(&real));
    let stored = redeployments.list(&Default::default()).await?.items;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].spec.plan[0].git_ref.as_deref(), Some("v1.2.3"));
    let refused = kubectl_redeploy(&namespace, &["trigger", "shop", "--services", "worker:v1", "--dry-run"])?;
    assert!(
        !refused.status.success() && text(&refused).contains("applies only to Git-built Services"),
        "{}",
        text(&refused)
    );

    // Two hook calls: one deployed, one refused.
    let url = String::from_utf8(kubectl_redeploy(&namespace, &["url", "shop"])?.stdout)?.trim().to_string();
    let http = reqwest::Client::new();
    let deployed = http.post(format!("{url}?services=worker")).header("X-Request-Id", "x").send().await?.status();
    assert_eq!(deployed, 202);
    let refused = http.post(format!("{url}?services=nope")).send().await?.status();
    assert_eq!(refused, 422);
    let listed = eventually("kubectl redeploy deliveries to list both calls", || async {
        let listed = text(&kubectl_redeploy(&namespace, &["deliveries", "shop"])?);
        Ok((listed.lines().count() == 3).then_some(listed))
    })
    .await?;
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("TIME") && lines[0].contains("REASON"), "{listed}");
    assert!(lines[1].contains(" 422 ") && lines[1].contains("nope"), "newest first: {listed}");
    assert!(lines[2].contains(" 202 ") && lines[2].contains("shop-"), "{listed}");
    Ok(())
}
