//! Memory under a burst of large hook calls: the operator binary runs as a
//! process of its own, 64 calls with 4.5 MiB bodies hit one hook URL at once,
//! and its peak resident memory must stay well under the chart's memory
//! limit (above it, the pod is OOM-killed and every App's reconcilers stop).

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::Value;
use support::{OperatorProcess, eventually, resident_kib};

const CALLS: usize = 64;
const BODY_BYTES: usize = 4 * 1024 * 1024 + 512 * 1024;
/// The peak may use this share of the chart's memory limit: the rest is
/// headroom for what a real cluster adds (more Apps in the caches).
const HEADROOM_PERCENT: u64 = 60;

/// The chart's `resources.limits.memory`, in KiB.
fn chart_memory_limit_kib() -> anyhow::Result<u64> {
    let values = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/redeploy-operator/values.yaml"),
    )?;
    let values: Value = serde_saphyr::from_str(&values)?;
    let limit = values["resources"]["limits"]["memory"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the chart's values set no resources.limits.memory"))?;
    let (number, unit) = limit.split_at(limit.find(|c: char| !c.is_ascii_digit()).unwrap_or(limit.len()));
    let factor = match unit {
        "Ki" => 1,
        "Mi" => 1024,
        "Gi" => 1024 * 1024,
        _ => anyhow::bail!("memory limit {limit}: only Ki, Mi and Gi are read here"),
    };
    Ok(number.parse::<u64>()? * factor)
}

/// App `shop`, its image-based Service `worker` and the Deployment it targets.
fn objects() -> Vec<serde_json::Value> {
    const IMAGE: &str = "registry.example.com/worker:initial";
    vec![
        support::object(support::app("shop")),
        support::object(support::image_service("worker", "shop", IMAGE)),
        support::object(support::deployment("worker", IMAGE)),
    ]
}

/// What one call of the burst got.
#[derive(Debug)]
enum Answer {
    Status { status: u16, retry_after: bool, message: String },
    Failed(#[allow(dead_code)] String),
}

#[tokio::test]
async fn a_burst_of_large_bodies_stays_well_under_the_memory_limit() -> anyhow::Result<()> {
    let (control_plane, client, namespace) = support::setup("memory").await?;
    let log = control_plane.dir().join("operator-memory.log");
    support::apply(&client, &namespace, objects()).await?;
    // Every call of the burst gets past the per-App limit: what holds memory
    // down must be the global one.
    let operator = OperatorProcess::start(control_plane, &log, &["--concurrency-per-app", &CALLS.to_string()]).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let hook = eventually("the App's hook Secret", || async {
        let Some(secret) = secrets.get_opt("shop-hook").await? else { return Ok(None) };
        let (id, token) = (support::secret_value(&secret, "id")?, support::secret_value(&secret, "token")?);
        Ok(Some(format!("{}/stacks/redeploy/{id}/{token}", operator.hook)))
    })
    .await?;
    let http = reqwest::Client::new();
    // The hook server learns of the Secret through its own watch: wait for it.
    eventually("the hook server to know the hook", || async {
        let status = http.post(format!("{hook}?services=__probe__")).send().await?.status();
        Ok((status != 404).then_some(()))
    })
    .await?;

    let pid = operator.pid();
    let (rss_before, _) = resident_kib(pid)?;
    let peak_sampled = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (peak_sampled, sampling) = (peak_sampled.clone(), sampling.clone());
        async move {
            while sampling.load(Ordering::Acquire) {
                if let Ok((rss, _)) = resident_kib(pid) {
                    peak_sampled.fetch_max(rss, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let body = axum::body::Bytes::from(support::large_push(BODY_BYTES)?);
    let started = Instant::now();
    let calls = (0..CALLS).map(|_| {
        let request = http
            .post(&hook)
            .header("X-GitHub-Event", "push")
            .header("Content-Type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(60));
        async move {
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => return Answer::Failed(format!("{error:?}")),
            };
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            match response.json::<Value>().await {
                Ok(answer) => Answer::Status {
                    status,
                    retry_after,
                    message: answer["message"].as_str().unwrap_or_default().to_string(),
                },
                Err(error) => Answer::Failed(format!("{status}, unreadable answer: {error}")),
            }
        }
    });
    let answers = futures::future::join_all(calls).await;
    let burst = started.elapsed();
    sampling.store(false, Ordering::Release);
    sampler.await?;
    let (rss_after, peak) = resident_kib(pid)?;
    let peak_sampled = peak_sampled.load(Ordering::Acquire);

    let limit = chart_memory_limit_kib()?;
    let allowed = limit * HEADROOM_PERCENT / 100;
    let count = |wanted: u16| {
        answers.iter().filter(|a| matches!(a, Answer::Status { status, .. } if *status == wanted)).count()
    };
    let (served, refused) = (count(200), count(503));
    println!(
        "{CALLS} calls of {BODY_BYTES} bytes in {burst:.2?}: {served} served (200), {refused} refused (503); \
         resident before {} MiB, peak {} MiB (VmHWM; sampled {} MiB), after {} MiB; \
         chart limit {} MiB, allowed {} MiB",
        rss_before / 1024,
        peak / 1024,
        peak_sampled / 1024,
        rss_after / 1024,
        limit / 1024,
        allowed / 1024,
    );
    for answer in &answers {
        match answer {
            Answer::Status { status: 200, .. } => {}
            Answer::Status { status: 503, retry_after, message } => {
                assert!(retry_after, "a 503 without Retry-After: {message}");
                assert!(message.contains("retry"), "{message}");
            }
            other => panic!("every call is served or told to retry; one got {other:?}"),
        }
    }
    assert!(served > 0, "some calls are served");
    assert_eq!(served + refused, CALLS);
    assert!(peak <= allowed, "peak resident memory {} MiB is above {} MiB", peak / 1024, allowed / 1024);

    // The operator is still there, and serves a normal call.
    let response = http.post(format!("{hook}?services=worker")).send().await?;
    let status = response.status().as_u16();
    let answer: Value = response.json().await?;
    assert_eq!(status, 202, "{answer}");
    Ok(())
}
