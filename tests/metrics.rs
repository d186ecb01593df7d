//! The admin server: health, readiness and the metrics the hook's own calls
//! caused. This binary has an operator of its own, so every count it reads is
//! this test's doing.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use redeploy_operator::api::App;
use support::{eventually, operator};

/// App `shop` and its image-based Service `web`.
fn objects() -> Vec<serde_json::Value> {
    vec![support::object(support::app("shop")), support::object(support::image_service("web", "shop", "nginx"))]
}

const ACCEPTED: &str = r#"redeploy_hook_requests_total{provider="empty",event="no_git_info",outcome="accepted"}"#;
const NOT_FOUND: &str = r#"redeploy_hook_requests_total{provider="unknown",event="unknown",outcome="not_found"}"#;

/// The value of the sample named exactly `series`, 0 when it is absent.
fn sample(metrics: &str, series: &str) -> anyhow::Result<f64> {
    match metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')) {
        Some(value) => Ok(value.trim().parse()?),
        None => Ok(0.0),
    }
}

async fn metrics(admin: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{admin}/metrics")).await?.error_for_status()?.text().await?)
}

async fn post(url: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new().post(url).send().await?.status().as_u16())
}

#[tokio::test]
async fn health_readiness_and_the_metrics_of_this_tests_calls() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("metrics").await?;
    let operator = operator();
    for path in ["healthz", "readyz"] {
        let response = reqwest::get(format!("{}/{path}", operator.admin)).await?;
        assert_eq!(response.status(), 200, "/{path}");
    }
    support::apply(&client, &namespace, objects()).await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    eventually("the App's hook and its Service `web`", || async {
        let status = apps.get("shop").await?.status.unwrap_or_default();
        Ok((status.hook.is_some() && status.services.iter().any(|s| s == "web")).then_some(()))
    })
    .await?;
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace).get("shop-hook").await?;
    let (id, token) = (support::secret_value(&secret, "id")?, support::secret_value(&secret, "token")?);
    let hook = format!("{}/stacks/redeploy/{id}/{token}", operator.hook);
    // The hook server learns of the Secret through its own watch; a wrong
    // token is probed on another id so that no probe counts as accepted.
    eventually("the hook server to know the hook", || async {
        Ok((post(&format!("{hook}?services=__probe__")).await? == 422).then_some(()))
    })
    .await?;

    let before = metrics(&operator.admin).await?;
    assert_eq!(post(&hook).await?, 202);
    assert_eq!(post(&format!("{}/stacks/redeploy/{id}/not-the-token", operator.hook)).await?, 404);
    let after = metrics(&operator.admin).await?;

    assert_eq!(sample(&after, ACCEPTED)? - sample(&before, ACCEPTED)?, 1.0, "{after}");
    assert_eq!(sample(&after, NOT_FOUND)? - sample(&before, NOT_FOUND)?, 1.0, "{after}");
    assert!(after.contains("redeploy_hook_duration_seconds_bucket"), "{after}");
    assert!(sample(&after, r#"redeploy_reconciliations_total{controller="app"}"#)? >= 1.0, "{after}");
    Ok(())
}
