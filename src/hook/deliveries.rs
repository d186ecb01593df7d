//! `App.status.recentDeliveries`: the last hook calls of each App, written in
//! the background so that no hook answer waits for it.
//!
//! The hook hands each answered call to a [`DeliveryLog`] (a bounded queue:
//! when it is full the call is left out and counted in
//! `redeploy_hook_deliveries_dropped_total`). A batcher drains the queue
//! every second and writes one status patch per App per batch, by server-side
//! apply under a field manager of its own that owns only `recentDeliveries`,
//! so the App reconciler's status writes and these never undo each other.
//! Every replica serves the hook and runs a batcher: each merges its calls
//! into the list the API server holds (by time, newest first) and applies it
//! with that list's `resourceVersion`, so a replica that wrote in between
//! makes the apply conflict and the merge start again, never erasing the
//! other's calls.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    api::{App, Delivery},
    context::Context,
    metrics::Metrics,
};

/// The field manager of `status.recentDeliveries`, distinct from the reconciler's.
pub const FIELD_MANAGER: &str = "redeploy-operator-deliveries";
/// Calls kept per App.
pub const KEPT: usize = 20;
/// Calls waiting to be written, for all Apps together.
const QUEUE: usize = 4096;
/// How long the batcher gathers calls before writing them.
const BATCH_EVERY: Duration = Duration::from_secs(1);
/// Status patches in flight at once.
const WRITERS: usize = 8;
/// Applies tried per App and batch when another replica keeps writing in between.
const ATTEMPTS: usize = 4;

/// Where the hook hands its answered calls; a default one drops them (tests, no batcher).
#[derive(Clone, Default)]
pub struct DeliveryLog {
    sender: Option<mpsc::Sender<Entry>>,
    metrics: Option<Arc<Metrics>>,
}

struct Entry {
    namespace: String,
    app: String,
    delivery: Delivery,
}

impl DeliveryLog {
    /// Starts the batcher; it stops once every handle of the log is dropped
    /// (the hook server stopped) and what was queued is written.
    pub fn start(context: Arc<Context>) -> DeliveryLog {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let metrics = context.metrics.clone();
        tokio::spawn(run(context, receiver));
        DeliveryLog { sender: Some(sender), metrics: Some(metrics) }
    }

    /// Queues one call; never waits.
    pub fn record(&self, namespace: &str, app: &str, delivery: Delivery) {
        let Some(sender) = &self.sender else { return };
        let entry = Entry { namespace: namespace.to_owned(), app: app.to_owned(), delivery };
        if sender.try_send(entry).is_err()
            && let Some(metrics) = &self.metrics
        {
            metrics.deliveries_dropped.inc();
        }
    }
}

async fn run(context: Arc<Context>, mut receiver: mpsc::Receiver<Entry>) {
    let mut batch = Vec::new();
    loop {
        if receiver.recv_many(&mut batch, QUEUE).await == 0 {
            return;
        }
        tokio::time::sleep(BATCH_EVERY).await;
        while batch.len() < QUEUE {
            match receiver.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let mut by_app: BTreeMap<(String, String), Vec<Delivery>> = BTreeMap::new();
        for entry in batch.drain(..) {
            by_app.entry((entry.namespace, entry.app)).or_default().push(entry.delivery);
        }
        futures::stream::iter(by_app)
            .for_each_concurrent(WRITERS, |((namespace, app), deliveries)| {
                let context = context.clone();
                async move {
                    let count = deliveries.len() as u64;
                    if let Err(error) = write(&context, &namespace, &app, deliveries).await {
                        tracing::debug!(%namespace, %app, %error, "recording hook deliveries failed");
                        context.metrics.deliveries_dropped.inc_by(count);
                    }
                }
            })
            .await;
    }
}

/// Merges `deliveries` into the App's list and applies it, from the cached
/// App first, then from a fresh read after each conflict.
async fn write(context: &Context, namespace: &str, app: &str, deliveries: Vec<Delivery>) -> Result<(), kube::Error> {
    let api = Api::<App>::namespaced(context.client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut current = context.caches.app(namespace, app);
    for _ in 0..ATTEMPTS {
        let Some(found) = current else { return Ok(()) };
        let kept = found.status.as_ref().map(|s| s.recent_deliveries.as_slice()).unwrap_or_default();
        let merged = merge(kept, &deliveries);
        let patch = json!({
            "apiVersion": "redeploy.dev/v1alpha1",
            "kind": "App",
            "metadata": { "name": app, "resourceVersion": found.resource_version() },
            "status": { "recentDeliveries": merged },
        });
        match api.patch_status(app, &params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => current = api.get_opt(app).await?,
            Err(error) => return Err(error),
        }
    }
    Err(kube::Error::Api(Box::new(kube::core::Status::failure("the App kept changing", "Conflict").with_code(409))))
}

/// `kept` and `new` together, newest first, without repeats, at most [`KEPT`].
pub fn merge(kept: &[Delivery], new: &[Delivery]) -> Vec<Delivery> {
    let mut all: Vec<Delivery> = kept.iter().chain(new).cloned().collect();
    all.sort_by(|a, b| b.time.0.cmp(&a.time.0).then_with(|| a.delivery_id.cmp(&b.delivery_id)));
    all.dedup();
    all.truncate(KEPT);
    all
}

/// A delivery's time, now.
pub fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(second: i64, id: &str) -> Delivery {
        Delivery {
            time: MicroTime(Timestamp::from_second(1_790_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH)),
            provider: None,
            event: "push".into(),
            delivery_id: Some(id.into()),
            code: 202,
            redeployment: None,
            reason: None,
            dry_run: false,
        }
    }

    fn ids(list: &[Delivery]) -> Vec<&str> {
        list.iter().filter_map(|d| d.delivery_id.as_deref()).collect()
    }

    #[test]
    fn two_replicas_calls_interleave_by_time_and_none_is_lost() {
        let first_replica = [at(1, "a"), at(3, "c")];
        let second_replica = [at(2, "b"), at(4, "d")];
        let merged = merge(&merge(&[], &first_replica), &second_replica);
        assert_eq!(ids(&merged), ["d", "c", "b", "a"]);
        // A batch applied twice (a retry after a conflict) is kept once.
        assert_eq!(ids(&merge(&merged, &second_replica)), ["d", "c", "b", "a"]);
    }

    #[test]
    fn only_the_newest_twenty_are_kept() {
        let old: Vec<Delivery> = (0..20).map(|i| at(i, &format!("old-{i}"))).collect();
        let merged = merge(&old, &[at(100, "new")]);
        assert_eq!(merged.len(), KEPT);
        assert_eq!(merged[0].delivery_id.as_deref(), Some("new"));
        assert!(!ids(&merged).contains(&"old-0"), "the oldest goes");
    }
}
