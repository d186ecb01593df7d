//! The caches' full lists arrive as streaming lists (WatchList) where the API
//! server serves them, and as paginated lists where it refuses them: each on
//! a control plane of its own, the second with the WatchList feature off.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
    runtime::watcher,
};
use redeploy_operator::cache::{Index, Synced, run_index};
use redeploy_testenv::ControlPlane;

mod support;

/// The names an index holds.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<BTreeSet<String>>>);

impl Index<ConfigMap> for Names {
    fn apply(&mut self, object: ConfigMap, _first: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(object.name_any());
    }

    fn delete(&mut self, _namespace: String, name: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    }
}

/// Lists ConfigMaps of a fresh namespace through the caches' watch driver;
/// returns what it held once synced, and the API server's LIST and WATCH
/// requests for ConfigMaps meanwhile.
async fn list_through_the_driver(client: &Client) -> anyhow::Result<(BTreeSet<String>, f64, f64)> {
    let namespace = "lists";
    let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &Namespace { metadata: meta(namespace), ..Default::default() })
        .await?;
    let maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    for name in ["a", "b", "c"] {
        maps.create(&PostParams::default(), &ConfigMap { metadata: meta(name), ..Default::default() }).await?;
    }
    let before = support::apiserver_requests(client).await?;
    let (names, synced) = (Names::default(), Synced::default());
    let watch = tokio::spawn(run_index(vec![maps], watcher::Config::default(), names.clone(), synced.clone()));
    let waited = tokio::time::timeout(Duration::from_secs(30), synced.wait()).await;
    watch.abort();
    waited.map_err(|_| anyhow::anyhow!("the watch did not list within 30 s"))?;
    let requests = |after: &std::collections::BTreeMap<String, f64>, verb: &str| -> f64 {
        let prefix = format!("{verb} configmaps ");
        let count = |counts: &std::collections::BTreeMap<String, f64>| -> f64 {
            counts.iter().filter(|(key, _)| key.starts_with(&prefix)).map(|(_, n)| n).sum()
        };
        count(after) - count(&before)
    };
    // The API server counts a WATCH in `apiserver_request_total` only once
    // the request has ended, which follows the aborted watch by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let after = support::apiserver_requests(client).await?;
        if requests(&after, "WATCH") >= 1.0 || tokio::time::Instant::now() >= deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let held = names.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((held, requests(&after, "LIST"), requests(&after, "WATCH")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_watch_list_streams_the_list_and_one_without_it_is_listed_in_pages() -> anyhow::Result<()> {
    let all: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();

    let streaming = ControlPlane::start()?;
    let (held, lists, watches) = list_through_the_driver(&streaming.client().await?).await?;
    println!("WatchList on: held {held:?}, {lists} LIST and {watches} WATCH requests");
    assert_eq!(held, all);
    assert_eq!(lists, 0.0, "a streaming list makes no LIST request");
    assert!(watches >= 1.0, "the list was a WATCH");
    drop(streaming);

    let paged = ControlPlane::start_with_apiserver_flags(&["--feature-gates=WatchList=false"])?;
    let (held, lists, _) = list_through_the_driver(&paged.client().await?).await?;
    println!("WatchList off: held {held:?}, {lists} LIST requests");
    assert_eq!(held, all);
    assert!(lists >= 1.0, "without WatchList the list is paginated");
    Ok(())
}
