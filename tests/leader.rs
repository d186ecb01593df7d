//! Leader election on the real control plane: of two operators on one Lease
//! only the holder reconciles; a stopped holder hands the Lease over, and a
//! holder that stops renewing loses it once the lease duration has passed.

mod support;

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use redeploy_operator::{
    api::{Phase, Redeployment},
    leader::LeaseConfig,
    operator::Running,
};
use serde_json::json;
use support::eventually;

const LEASE: &str = "redeploy-operator";

async fn start(client: &Client, namespace: &str, identity: &str) -> anyhow::Result<Running> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = support::operator_config(port, 4);
    config.leader_election = Some(LeaseConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..LeaseConfig::new(namespace, LEASE, identity)
    });
    support::start_operator_with(client.clone(), config).await
}

async fn holder(client: &Client, namespace: &str) -> anyhow::Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(client.clone(), namespace).get(LEASE).await?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

/// Creates a Redeployment restarting `worker` and waits until it has finished.
async fn redeploy(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Phase> {
    let api = Api::<Redeployment>::namespaced(client.clone(), namespace);
    let object = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment", "metadata": {"name": name},
        "spec": {"app": "shop", "trigger": {"provider": "manual", "event": "test"},
                 "plan": [{"service": "worker", "action": "restart"}]},
    });
    api.create(&PostParams::default(), &serde_json::from_value(object)?).await?;
    eventually(&format!("Redeployment {name} to finish"), || async {
        Ok(api.get(name).await?.status.and_then(|s| s.phase).filter(|p| p.is_finished()))
    })
    .await
}

/// App `shop`, its image-based Service `worker` and the Deployment it targets.
fn objects() -> Vec<serde_json::Value> {
    const IMAGE: &str = "registry.example.com/worker:1";
    vec![
        support::object(support::app("shop")),
        support::object(support::image_service("worker", "shop", IMAGE)),
        support::object(support::deployment("worker", IMAGE)),
    ]
}

fn reconciled_anything(operator: &Running) -> bool {
    operator.context.metrics.render().contains("redeploy_reconciliations_total{")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_reconciles_and_the_lease_moves_on() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("leader").await?;
    // A Lease whose holder stopped renewing it: taken over after its duration.
    let ghost = Lease {
        metadata: ObjectMeta { name: Some(LEASE.into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("ghost".into()),
            lease_duration_seconds: Some(3),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &ghost).await?;
    let ghost_renewed = std::time::Instant::now();
    let first = start(&client, &namespace, "first").await?;
    support::apply(&client, &namespace, objects()).await?;
    eventually("first to take the expired Lease", || async { Ok(first.is_leading().then_some(())) }).await?;
    assert!(ghost_renewed.elapsed() >= Duration::from_secs(3), "not before the ghost's Lease expired");
    assert_eq!(holder(&client, &namespace).await?.as_deref(), Some("first"));

    let second = start(&client, &namespace, "second").await?;
    assert_eq!(redeploy(&client, &namespace, "by-first").await?, Phase::Succeeded);
    assert!(!second.is_leading(), "one leader");
    assert!(reconciled_anything(&first));
    assert!(!reconciled_anything(&second), "a follower serves the hook but reconciles nothing");

    // A graceful stop hands the Lease over at once, well before it would expire.
    first.shutdown().await;
    eventually("second to lead", || async { Ok(second.is_leading().then_some(())) }).await?;
    assert_eq!(holder(&client, &namespace).await?.as_deref(), Some("second"));
    assert_eq!(redeploy(&client, &namespace, "by-second").await?, Phase::Succeeded);
    assert!(reconciled_anything(&second));
    second.shutdown().await;
    assert_eq!(holder(&client, &namespace).await?, None, "handed back on shutdown");
    Ok(())
}
