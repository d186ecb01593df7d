//! When the API server cannot store a Redeployment, the hook answers 503 and
//! nothing is half-done; once it is back, calls are accepted again. The same
//! holds when etcd is away and the API server holds requests instead of
//! failing them. This test stops the API server and etcd, so it has a
//! control plane of its own.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use redeploy_operator::api::{App, Redeployment};
use redeploy_testenv::ControlPlane;
use support::eventually;

const OBJECTS: &str = "apiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec: {}\n---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  app: shop\n  target:\n    name: web\n  image:\n    reference: nginx:1.27\n";

#[tokio::test]
async fn a_stopped_api_server_gets_503_and_nothing_is_stored() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start()?;
    let running = support::start_operator(&control_plane, 4).await?;
    let client = control_plane.client().await?;
    let namespace = control_plane.namespace(&client, "unavailable").await?;
    support::apply_yaml(&client, &namespace, OBJECTS).await?;

    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let secret = eventually("the hook Secret", || async {
        Ok(secrets.get_opt("shop-hook").await?.filter(|s| s.data.is_some()))
    })
    .await?;
    let value = |key: &str| support::secret_value(&secret, key);
    let hook = format!("http://{}/stacks/redeploy/{}/{}", running.hook_addr, value("id")?, value("token")?);
    let http = reqwest::Client::new();
    // The App's status lists its Services from the same cache the hook plans with.
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    eventually("the caches to know the Service", || async {
        Ok(apps.get("shop").await?.status.is_some_and(|s| s.services.contains(&"web".to_string())).then_some(()))
    })
    .await?;
    eventually("the hook to know the App", || async {
        let status = http.post(format!("{hook}?services=__probe__")).send().await?.status();
        Ok((status == 422).then_some(()))
    })
    .await?;

    control_plane.stop_apiserver();
    let response = http.post(&hook).send().await?;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"), "503 tells the caller when to retry");
    let body: serde_json::Value = response.json().await?;
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("retry") && message.contains("nothing was deployed"), "{message}");

    control_plane.start_apiserver()?;
    control_plane.wait_ready(&client, Duration::from_secs(60)).await?;
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    assert!(redeployments.list(&ListParams::default()).await?.items.is_empty(), "a 503 stored nothing");

    // The operator recovers by itself: the caller's retry is accepted.
    let accepted = eventually("a retry to be accepted", || async {
        let response = http.post(&hook).send().await?;
        Ok((response.status() == 202).then_some(()))
    })
    .await;
    accepted?;
    assert_eq!(redeployments.list(&ListParams::default()).await?.items.len(), 1);

    // Without etcd the API server still takes the request, and holds it: the
    // hook answers 503 within its own timeout instead of hanging the caller.
    control_plane.stop_etcd();
    let started = std::time::Instant::now();
    let response = http.post(&hook).timeout(Duration::from_secs(30)).send().await?;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503, "{:?}", response.text().await);
    let limit = redeploy_operator::hook::handler::API_TIMEOUT + Duration::from_secs(3);
    assert!(waited < limit, "answered after {waited:?}");
    control_plane.start_etcd()?;
    control_plane.wait_ready(&client, Duration::from_secs(60)).await?;
    eventually("a retry to be accepted once etcd is back", || async {
        Ok((http.post(&hook).send().await?.status() == 202).then_some(()))
    })
    .await?;
    running.shutdown().await;
    Ok(())
}
