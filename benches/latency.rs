//! Latency of the hook: from the moment a call is sent to the first patch of
//! the workload (image-based Service) and to the build Job's creation
//! (Git-built Service), at fixed offered rates.
//!
//! Starts a private control plane and the operator in-process on loopback
//! (on a runtime and threads of its own, as in a process of its own), makes
//! Apps of 10 Services each (5 image-based, 5 Git-built, as the scale bench's
//! Apps) whose hooks require signatures, and for each offered rate (env
//! `LATENCY_RATES`, default `20,100` calls per second) calls the hook for
//! `LATENCY_SECONDS` (default 20), alternating:
//!
//! - a generic-signed call (`X-Signature-256`) with `?services=<image-based
//!   Service>`: the Redeployment restarts that Service's Deployment;
//! - a signed GitHub push (`X-Hub-Signature-256`) of a commit of its own with
//!   `?services=<Git-built Service>`: the Redeployment creates a build Job (a
//!   stand-in builder: the Job's creation is what is measured).
//!
//! Each rate's Apps, Services and Deployments (and the plain client's
//! Deployments) are made just before that rate runs, once the operator and the
//! Deployment controller are quiet again: a rate is measured on a control
//! plane holding what the rates before it left, never the objects a later
//! rate needs (made up front, the 2,000 Services and 4,000 Deployments of
//! 100/s for 20 s doubled the API server's answer time during 20/s, the plain
//! client's as much as the operator's).
//!
//! The calls go round the Apps; every call names a Service of its own, so no call waits behind an earlier
//! unfinished Redeployment of the same Service (the operator runs those one
//! after the other). Every Deployment has `replicas: 0`: no pods run, so the
//! control plane's work is the operator's writes, not rollouts.
//!
//! The calls are open-loop: one is sent every `1/rate` s whether or not the
//! earlier ones were answered. A watch on Deployments and one on Jobs, from the
//! bench's own client, record when the event carrying the change arrived: the
//! Redeployment named on the Deployment's pod template
//! (`redeploy.dev/redeployment`), the Redeployment owning the Job. Each is
//! matched to the call whose `202` named that Redeployment; the latency is from
//! the moment the call was sent. The operator's metrics are not used.
//!
//! Baselines in the same run, at the same rate just before the calls: the hook
//! answer itself (the operator stores the Redeployment before it answers), and a
//! plain client creating one ConfigMap then patching the pod template of a
//! Deployment of its own per tick (the physical limit of an accepted call that ends in a
//! workload patch: one create and one patch on this API server).
//!
//! Target: p99 < 100 ms at 20/s for both kinds. A missed target is reported,
//! not an error: the exit status is non-zero only when a call was not accepted
//! or its patch or Job was never seen.
//!
//! `cargo bench --bench latency` (or `make latency`) measures. `cargo test
//! --all-targets` runs it without `--bench`: a smoke run at 5/s for 2 s that
//! asserts every call was accepted and observed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::Job,
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use redeploy_operator::{
    api::{App, Redeployment, Service},
    install::FIELD_MANAGER,
    workload::{REDEPLOYMENT_ANNOTATION, restart_patch},
};
use redeploy_testenv::ControlPlane;
use serde_json::json;
use sha2::Sha256;

/// Services of each kind per App: the calls go round the Apps, as the
/// scale bench's Apps of 10 Services each.
const SERVICES_PER_KIND: usize = 5;
const GITHUB_KEY: &str = "latency-github-key";
const GENERIC_KEY: &str = "latency-generic-key";
/// The push fixture's repository and branch, which the Git-built Services build.
const REPOSITORY: &str = "https://github.com/Codertocat/Hello-World";
const BRANCH: &str = "master";
const PUSH: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/github/push-new-branch.json"));
/// What the stand-in builder reports.
const BUILT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
/// Hook calls of the App the operator handles at once: high, so no `429` distorts the run.
const CONCURRENT_PER_APP: usize = 1 << 16;
/// How long an accepted call's patch or Job may take to be seen after the calls.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the Redeployments of a rate may take to finish before the next rate starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a caller waits for the hook's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Untimed calls of each kind before the first rate: every connection and cache is warm.
const WARM_UP: usize = 4;
/// Objects the set-up creates at once.
const CREATE_CONCURRENCY: usize = 32;

/// The target: p99 under 100 ms at 20 calls per second.
const TARGET_RATE: u32 = 20;
const TARGET_P99_MS: f64 = 100.0;

#[derive(Clone, Debug)]
struct Settings {
    rates: Vec<u32>,
    seconds: u32,
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        if support::smoke_run() {
            return Ok(Settings { rates: vec![5], seconds: 2, smoke: true });
        }
        let rates = match std::env::var("LATENCY_RATES") {
            Ok(value) => value
                .split(',')
                .map(|r| {
                    let rate: u32 = r.trim().parse().map_err(|e| anyhow::anyhow!("LATENCY_RATES={value}: {e}"))?;
                    anyhow::ensure!(rate > 0, "LATENCY_RATES: every rate must be at least 1");
                    Ok(rate)
                })
                .collect::<anyhow::Result<Vec<u32>>>()?,
            Err(_) => vec![20, 100],
        };
        let seconds = u32::try_from(support::env_count("LATENCY_SECONDS", 20)?)?;
        Ok(Settings { rates, seconds, smoke: false })
    }

    /// Calls at `rate`: half to image-based Services, half to Git-built ones.
    fn calls(&self, rate: u32) -> usize {
        (rate * self.seconds) as usize
    }
}

fn main() -> ExitCode {
    let smoke = support::smoke_run();
    let result = Settings::from_env().and_then(run);
    match result {
        Ok(report) => {
            report.print();
            let problems = report.problems();
            for problem in &problems {
                eprintln!("latency: {problem}");
            }
            assert!(!smoke || problems.is_empty(), "the smoke run failed: {problems:?}");
            if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            assert!(!smoke, "the smoke run failed: {error:#}");
            eprintln!("latency: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the control plane, the operator on a runtime of its own, and the calls on another.
fn run(settings: Settings) -> anyhow::Result<Report> {
    let control_plane = ControlPlane::start()?;
    let control_plane = &control_plane;
    std::thread::scope(|scope| {
        let operator = support::operator_thread(scope, || support::start_operator(control_plane, CONCURRENT_PER_APP))?;
        let result = support::runtime().and_then(|runtime| runtime.block_on(measure(control_plane, &settings)));
        operator.stop();
        result
    })
}

/// The two kinds of call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// A generic-signed call restarting an image-based Service: measured to the workload's first patch.
    Image,
    /// A signed GitHub push of a Git-built Service: measured to its build Job's creation.
    Git,
}

impl Kind {
    /// The `index`th Service of this kind at `rate`, and its App.
    fn service(self, rate: u32, index: usize) -> (String, String) {
        let app = format!("a{rate}-{:04}", index / SERVICES_PER_KIND);
        let kind = match self {
            Kind::Image => "img",
            Kind::Git => "git",
        };
        (format!("{app}-{kind}-{}", index % SERVICES_PER_KIND), app)
    }
}

fn service(kind: Kind, name: &str, app: &str) -> anyhow::Result<Service> {
    let spec = match kind {
        Kind::Image => json!({
            "app": app, "target": { "name": name },
            "image": { "reference": format!("registry.example.com/{name}:initial") },
        }),
        Kind::Git => {
            let repository = format!("registry.example.com/{name}");
            json!({
                "app": app, "target": { "name": name },
                "git": { "repository": REPOSITORY, "branch": BRANCH },
                "build": {
                    "image": repository,
                    "template": support::stand_in_builder(&support::build_report(&repository, BUILT)),
                },
            })
        }
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": { "name": name }, "spec": spec,
    }))?)
}

/// The Deployment the plain client patches at its `i`th tick at `rate`.
fn plain_name(rate: u32, i: usize) -> String {
    format!("plain-{rate}-{i:05}")
}

/// What the set-up creates.
enum Create<'a> {
    App(&'a str),
    /// A Deployment and its Service, of an App.
    Service(Kind, &'a str, &'a str),
    Deployment(&'a str),
}

fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// When the bench's watches first saw each Redeployment's workload patch and build Job.
#[derive(Default)]
struct Seen {
    patched: HashMap<String, Instant>,
    job_created: HashMap<String, Instant>,
}

fn patched(seen: &mut Seen) -> &mut HashMap<String, Instant> {
    &mut seen.patched
}

fn job_created(seen: &mut Seen) -> &mut HashMap<String, Instant> {
    &mut seen.job_created
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches `api`, recording for each Redeployment `key` names the arrival of the
/// first event carrying it; returns once the watch's initial list is done.
async fn watch<K, F>(
    api: Api<K>,
    seen: Shared<Seen>,
    record: fn(&mut Seen) -> &mut HashMap<String, Instant>,
    key: F,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(&K) -> Option<String> + Send + 'static,
{
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let arrived = Instant::now();
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    if let Some(redeployment) = key(&object) {
                        record(&mut lock(&seen)).entry(redeployment).or_insert(arrived);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), is_ready)
        .await
        .map_err(|_| anyhow::anyhow!("a watch did not list within 60 s"))?
        .map_err(|_| anyhow::anyhow!("a watch ended"))?;
    Ok(task)
}

/// One hook call as its caller saw it.
struct Call {
    kind: Kind,
    sent: Instant,
    /// Until the end of the answer.
    answered: Duration,
    /// The Redeployment a `202` named, or why the call was not accepted.
    outcome: Result<String, String>,
}

/// The hook, and what each call sends.
struct Caller {
    http: reqwest::Client,
    /// Each App's hook URL.
    urls: HashMap<String, String>,
    /// Distinguishes this run's commits and deliveries.
    run: u128,
}

impl Caller {
    async fn call(&self, kind: Kind, rate: u32, index: usize) -> Call {
        let (service, app) = kind.service(rate, index);
        let url = format!("{}?services={service}", self.urls.get(&app).map(String::as_str).unwrap_or_default());
        let request = match kind {
            Kind::Image => {
                let body = format!("at={}-{service}", self.run);
                self.http
                    .post(url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("X-Signature-256", sign(GENERIC_KEY, body.as_bytes()))
                    .body(body)
            }
            Kind::Git => {
                // A commit of its own: a build is never reused from an earlier push.
                let mut push: serde_json::Value = serde_json::from_slice(PUSH).unwrap_or_default();
                let commit = format!("{:016x}{:08x}{:016x}", self.run as u64, rate, index);
                push["after"] = json!(commit);
                push["head_commit"]["id"] = json!(commit);
                let body = serde_json::to_vec(&push).unwrap_or_default();
                self.http
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("latency-{}-{service}", self.run))
                    .header("X-Hub-Signature-256", sign(GITHUB_KEY, &body))
                    .body(body)
            }
        };
        let sent = Instant::now();
        let outcome = async {
            let response = request.timeout(ANSWER_TIMEOUT).send().await.map_err(|e| format!("no answer: {e}"))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| format!("no answer: {e}"))?;
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match answer["redeployment"].as_str() {
                Some(name) if status == 202 => Ok(name.to_string()),
                _ => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
            }
        }
        .await;
        Call { kind, sent, answered: sent.elapsed(), outcome }
    }
}

/// Runs `step(i)` every `1/rate` s for `seconds`, each on a task of its own (open loop).
async fn offered<T, F, Fut>(rate: u32, seconds: u32, step: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = Vec::new();
    for i in 0..(rate * seconds) as usize {
        tick.tick().await;
        tasks.push(tokio::spawn(step(i)));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            results.push(result);
        }
    }
    results
}

async fn measure(control_plane: &ControlPlane, settings: &Settings) -> anyhow::Result<Report> {
    let client = control_plane.client().await?;
    let namespace = control_plane.namespace(&client, "latency").await?;
    let mut report = Report { settings: settings.clone(), rates: Vec::new(), load: Vec::new() };
    report.load("start");

    // The signature keys, the Apps, a Deployment and a Service per call, and a
    // Deployment per plain patch.
    let keys = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "latency-keys" },
        "stringData": { "github": GITHUB_KEY, "generic": GENERIC_KEY },
    });
    support::apply(&client, &namespace, [keys]).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    // The warm-up calls' objects (rate 0); each rate's are made just before it.
    let mut urls = make_objects(&client, &namespace, settings, 0).await?;
    report.load("set up");
    let seen: Shared<Seen> = Default::default();
    let watches = [
        watch(deployments.clone(), seen.clone(), patched, |d: &Deployment| {
            d.spec.template.metadata.as_ref()?.annotations.as_ref()?.get(REDEPLOYMENT_ANNOTATION).cloned()
        })
        .await?,
        watch(Api::<Job>::namespaced(client.clone(), &namespace), seen.clone(), job_created, |j: &Job| {
            j.owner_references().iter().find(|o| o.kind == "Redeployment").map(|o| o.name.clone())
        })
        .await?,
    ];

    let http = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build()?;
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let caller = Arc::new(Caller { http: http.clone(), urls: urls.clone(), run });
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    for index in 0..WARM_UP {
        for kind in [Kind::Image, Kind::Git] {
            let name =
                caller.call(kind, 0, index).await.outcome.map_err(|why| anyhow::anyhow!("a warm-up call: {why}"))?;
            let (seen, name) = (&seen, &name);
            support::eventually("the warm-up call's patch or Job", || async move {
                let seen = lock(seen);
                let at = if kind == Kind::Image { seen.patched.get(name) } else { seen.job_created.get(name) };
                Ok(at.map(drop))
            })
            .await?;
        }
    }
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    for &rate in &settings.rates {
        urls.extend(make_objects(&client, &namespace, settings, rate).await?);
        report.load(&format!("set up for {rate}/s"));
        let caller = Arc::new(Caller { http: http.clone(), urls: urls.clone(), run });
        // The plain client: one create and one patch per tick.
        let before_plain = ServerWork::now(&client).await?;
        let plain = offered(rate, settings.seconds, |i| {
            let (configmaps, deployments) = (configmaps.clone(), deployments.clone());
            let name = plain_name(rate, i);
            async move {
                let started = Instant::now();
                let configmap: ConfigMap = serde_json::from_value(json!({
                    "metadata": { "name": format!("plain-{rate}-{i:05}") }, "data": { "call": i.to_string() },
                }))
                .map_err(|e| e.to_string())?;
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                configmaps.create(&params, &configmap).await.map_err(|e| e.to_string())?;
                let created = started.elapsed();
                let patch = restart_patch(&format!("plain-{rate}-{i:05}"), &format!("{run}-{i}"));
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                deployments.patch(&name, &params, &Patch::Strategic(&patch)).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((created, started.elapsed()))
            }
        })
        .await;
        report.load(&format!("after the plain client at {rate}/s"));
        let plain_server = ServerWork::since(&client, &before_plain).await?;
        let before_calls = ServerWork::now(&client).await?;

        let calls = offered(rate, settings.seconds, |i| {
            let caller = caller.clone();
            let kind = if i % 2 == 0 { Kind::Image } else { Kind::Git };
            async move { caller.call(kind, rate, i / 2).await }
        })
        .await;
        report.load(&format!("after the calls at {rate}/s"));

        // Every accepted call's patch or Job seen, or the wait gave up.
        let expected = |seen: &Seen| {
            calls
                .iter()
                .filter_map(|c| c.outcome.as_ref().ok().map(|name| (c.kind, name)))
                .filter(|(kind, name)| match kind {
                    Kind::Image => !seen.patched.contains_key(*name),
                    Kind::Git => !seen.job_created.contains_key(*name),
                })
                .count()
        };
        let _ = support::wait_for("every patch and Job", OBSERVE_TIMEOUT, Duration::from_millis(200), || async {
            Ok((expected(&lock(&seen)) == 0).then_some(()))
        })
        .await;
        let mut results = {
            let seen = lock(&seen);
            let mut results = RateResults::new(rate, calls.len());
            for call in &calls {
                results.answers.push(call.answered);
                match &call.outcome {
                    Ok(name) => {
                        let at = match call.kind {
                            Kind::Image => seen.patched.get(name),
                            Kind::Git => seen.job_created.get(name),
                        };
                        let latencies = match call.kind {
                            Kind::Image => &mut results.patched,
                            Kind::Git => &mut results.job_created,
                        };
                        match at {
                            Some(at) => latencies.push(at.saturating_duration_since(call.sent)),
                            None => results.unseen.push(format!("{:?} {name}", call.kind)),
                        }
                    }
                    Err(why) => results.rejected.push(why.clone()),
                }
            }
            for result in plain {
                match result {
                    Ok((created, done)) => {
                        results.plain_create.push(created);
                        results.plain.push(done);
                    }
                    Err(why) => results.plain_failed.push(why),
                }
            }
            results
        };
        results.server = Some((plain_server, ServerWork::since(&client, &before_calls).await?));
        report.rates.push(results);
        // The next rate starts once this one's Redeployments have finished.
        let _ = support::wait_for("every Redeployment finished", DRAIN_TIMEOUT, Duration::from_secs(1), || async {
            let all = redeployments.list(&ListParams::default()).await?.items;
            Ok(all
                .iter()
                .all(|r| r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
                .then_some(()))
        })
        .await;
        caught_up(&deployments).await?;
        report.load(&format!("after the Redeployments at {rate}/s finished"));
    }
    for task in watches {
        task.abort();
    }
    Ok(report)
}

/// Makes the objects of the calls at `rate` (0: the warm-up calls): their
/// Apps, a Deployment and a Service per call, and a Deployment per plain
/// patch; then waits until the operator is quiet (every new App's hook known,
/// every Service reconciled) and the Deployment controller has caught up.
/// Each rate's objects are made just before it, so a rate is measured on a
/// control plane holding what the rates before it left, never what the ones
/// after it need. Returns the new Apps' hook URLs.
async fn make_objects(
    client: &kube::Client,
    namespace: &str,
    settings: &Settings,
    rate: u32,
) -> anyhow::Result<HashMap<String, String>> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let apps = Api::<App>::namespaced(client.clone(), namespace);
    let mut app_names: Vec<String> = Vec::new();
    let mut objects: Vec<(Kind, String, String)> = Vec::new();
    let mut plain_deployments: Vec<String> = Vec::new();
    let calls = if rate == 0 { 2 * WARM_UP } else { settings.calls(rate) };
    for index in 0..calls.div_ceil(2) {
        for kind in [Kind::Image, Kind::Git] {
            let (name, app) = kind.service(rate, index);
            if app_names.last() != Some(&app) {
                app_names.push(app.clone());
            }
            objects.push((kind, name, app));
        }
    }
    if rate > 0 {
        plain_deployments.extend((0..calls).map(|i| plain_name(rate, i)));
    }
    let started = Instant::now();
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let key = |key: &str| json!({ "name": "latency-keys", "key": key });
    let creates = app_names
        .iter()
        .map(|app| Create::App(app))
        .chain(objects.iter().map(|(kind, name, app)| Create::Service(*kind, name, app)))
        .chain(plain_deployments.iter().map(|name| Create::Deployment(name)));
    futures::stream::iter(creates)
        .map(|create| {
            let (deployments, services, apps, params, key) = (&deployments, &services, &apps, &params, &key);
            async move {
                match create {
                    Create::App(name) => {
                        let app = serde_json::from_value(json!({
                            "apiVersion": "redeploy.dev/v1alpha1", "kind": "App", "metadata": { "name": name },
                            "spec": { "hook": { "signatureSecrets": { "github": key("github"), "generic": key("generic") } } },
                        }))?;
                        apps.create(params, &app).await?;
                    }
                    Create::Service(kind, name, app) => {
                        deployments.create(params, &support::idle_deployment(name)).await?;
                        services.create(params, &service(kind, name, app)?).await?;
                    }
                    Create::Deployment(name) => {
                        deployments.create(params, &support::idle_deployment(name)).await?;
                    }
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "latency: for {}: created {} Apps, {} Services and their Deployments, {} Deployments for the plain client in {:.1} s",
        if rate == 0 { "the warm-up calls".to_string() } else { format!("{rate}/s") },
        app_names.len(),
        objects.len(),
        plain_deployments.len(),
        started.elapsed().as_secs_f64()
    );

    // Measured on a quiet operator: every App's hook known, every Service reconciled.
    let urls = support::wait_for("every App's hook", Duration::from_secs(600), Duration::from_secs(1), || async {
        let all = apps.list(&ListParams::default()).await?.items;
        let new_with_hook = all
            .iter()
            .filter(|a| app_names.contains(&a.name_any()))
            .filter(|a| a.status.as_ref().is_some_and(|s| s.hook.is_some()))
            .count();
        if new_with_hook < app_names.len() {
            return Ok(None);
        }
        let secrets = Api::<Secret>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
        let mut urls = HashMap::new();
        for secret in &secrets.items {
            if let Some(app) = secret.name_any().strip_suffix("-hook") {
                urls.insert(app.to_string(), support::secret_value(secret, "url")?);
            }
        }
        urls.retain(|app, _| app_names.contains(app));
        Ok(app_names.iter().all(|app| urls.contains_key(app)).then_some(urls))
    })
    .await?;
    support::wait_for("every Service reconciled", Duration::from_secs(600), Duration::from_secs(1), || async {
        let all = services.list(&ListParams::default()).await?.items;
        Ok(all.iter().all(|s| s.status.as_ref().is_some_and(|s| s.type_.is_some())).then_some(()))
    })
    .await?;
    // ...and a quiet control plane: the Deployment controller has caught up
    // with the thousands of Deployments just made (it writes each one's
    // status, and makes its ReplicaSet, long after the creates returned).
    caught_up(&deployments).await?;
    Ok(urls)
}

/// Waits until the Deployment controller has seen the last change of every Deployment.
async fn caught_up(deployments: &Api<Deployment>) -> anyhow::Result<()> {
    support::wait_for("the Deployment controller to catch up", DRAIN_TIMEOUT, Duration::from_secs(1), || async {
        let all = deployments.list(&ListParams::default()).await?.items;
        Ok(all
            .iter()
            .all(|d| {
                let observed = d.status.as_ref().and_then(|s| s.observed_generation).unwrap_or_default();
                observed >= d.metadata.generation.unwrap_or(1)
            })
            .then_some(()))
    })
    .await
}

/// What one offered rate gave.
struct RateResults {
    rate: u32,
    calls: usize,
    /// Every call, until the end of its answer.
    answers: Vec<Duration>,
    /// Image-based calls: sent to the first Deployment event naming the Redeployment.
    patched: Vec<Duration>,
    /// Git-built calls: sent to the first event of the Redeployment's build Job.
    job_created: Vec<Duration>,
    /// The plain client: its create, and its create then patch.
    plain_create: Vec<Duration>,
    plain: Vec<Duration>,
    rejected: Vec<String>,
    unseen: Vec<String>,
    plain_failed: Vec<String>,
    /// What the API server did during the plain client's ticks, and from the
    /// first call until every call's patch or Job was seen.
    server: Option<(ServerWork, ServerWork)>,
}

/// Requests the API server answered (anyone's: the operator's, the
/// controllers', the bench's) and the seconds it spent on them, over a window.
#[derive(Clone, Default)]
struct ServerWork {
    requests: BTreeMap<String, f64>,
    seconds: BTreeMap<String, f64>,
}

impl ServerWork {
    async fn now(client: &kube::Client) -> anyhow::Result<ServerWork> {
        let requests = support::apiserver_requests(client).await?;
        let seconds = support::apiserver_request_seconds(client).await?;
        Ok(ServerWork { requests, seconds })
    }

    async fn since(client: &kube::Client, before: &ServerWork) -> anyhow::Result<ServerWork> {
        let now = Self::now(client).await?;
        let minus = |now: BTreeMap<String, f64>, before: &BTreeMap<String, f64>| {
            now.into_iter()
                .map(|(k, v)| (k.clone(), v - before.get(&k).copied().unwrap_or_default()))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        };
        Ok(ServerWork { requests: minus(now.requests, &before.requests), seconds: minus(now.seconds, &before.seconds) })
    }

    fn total_requests(&self) -> f64 {
        self.requests.values().sum()
    }

    /// Mean time the API server took per answer, in ms.
    fn mean_ms(&self) -> f64 {
        1000.0 * self.seconds.values().sum::<f64>() / self.total_requests().max(1.0)
    }
}

impl RateResults {
    fn new(rate: u32, calls: usize) -> RateResults {
        RateResults {
            rate,
            calls,
            answers: Vec::new(),
            patched: Vec::new(),
            job_created: Vec::new(),
            plain_create: Vec::new(),
            plain: Vec::new(),
            rejected: Vec::new(),
            unseen: Vec::new(),
            plain_failed: Vec::new(),
            server: None,
        }
    }
}

/// p50, p99 and max in milliseconds (nearest rank), or NaN when empty.
fn quantiles(latencies: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let q = |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
    (q(0.5), q(0.99), ms.last().copied().unwrap_or(f64::NAN))
}

struct Report {
    settings: Settings,
    rates: Vec<RateResults>,
    load: Vec<(String, String)>,
}

impl Report {
    fn load(&mut self, when: &str) {
        self.load.push((when.to_string(), support::load_average()));
    }

    /// Calls not accepted, accepted calls never observed, failed plain requests.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for r in &self.rates {
            let mut add = |what: &str, list: &[String]| {
                if let Some(first) = list.first() {
                    problems.push(format!("at {}/s, {} {what} (e.g. {first})", r.rate, list.len()));
                }
            };
            add("calls not accepted", &r.rejected);
            add(&format!("accepted calls whose patch or Job was not seen within {OBSERVE_TIMEOUT:?}"), &r.unseen);
            add("plain requests failed", &r.plain_failed);
        }
        problems
    }

    fn print(&self) {
        let s = &self.settings;
        println!();
        println!(
            "latency{}: offered rates {:?}/s for {} s each, open loop; alternately a generic-signed call restarting \
             an image-based Service and a signed GitHub push building a Git-built Service, each call a Service of \
             its own; observed by watches of the bench's own client; times from the moment each call was sent",
            if s.smoke { " (smoke run; `cargo bench --bench latency` measures)" } else { "" },
            s.rates,
            s.seconds
        );
        println!();
        println!("{:>6}  {:<48} {:>6} {:>9} {:>9} {:>9}", "rate", "measured", "count", "p50 ms", "p99 ms", "max ms");
        let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
        let mut verdicts = Vec::new();
        for r in &self.rates {
            let rows: [(&str, &[Duration]); 5] = [
                ("plain client: create (baseline)", &r.plain_create),
                ("plain client: create + patch (the limit)", &r.plain),
                ("hook answer (202: Redeployment stored)", &r.answers),
                ("image-based: call -> first workload patch", &r.patched),
                ("Git-built: call -> build Job created", &r.job_created),
            ];
            for (what, latencies) in rows {
                let (p50, p99, max) = quantiles(latencies);
                println!("{:>4}/s  {what:<48} {:>6} {p50:>9.1} {p99:>9.1} {max:>9.1}", r.rate, latencies.len());
            }
            println!(
                "{:>4}/s  {} calls, {} accepted, {} not accepted, {} accepted but not seen",
                r.rate,
                r.calls,
                r.calls - r.rejected.len(),
                r.rejected.len(),
                r.unseen.len()
            );
            if let Some((plain, calls)) = &r.server {
                println!(
                    "{:>4}/s  API server during the plain client: {:.0} requests, {:.1} ms each on average; during the \
                     calls (until every patch and Job was seen): {:.0} requests ({:.1} per call), {:.1} ms each on average",
                    r.rate,
                    plain.total_requests(),
                    plain.mean_ms(),
                    calls.total_requests(),
                    calls.total_requests() / r.calls.max(1) as f64,
                    calls.mean_ms()
                );
                let mut busiest: Vec<(&String, &f64)> = calls.requests.iter().collect();
                busiest.sort_by(|a, b| b.1.total_cmp(a.1));
                let busiest: Vec<String> = busiest.iter().take(12).map(|(k, v)| format!("{v:.0} {k}")).collect();
                println!("{:>4}/s  most requests during the calls: {}", r.rate, busiest.join(", "));
            }
            let (_, plain_p99, _) = quantiles(&r.plain);
            for (what, latencies) in [("first workload patch", &r.patched), ("build Job created", &r.job_created)] {
                let (_, p99, _) = quantiles(latencies);
                let complete = r.unseen.is_empty() && r.rejected.is_empty();
                let target = if r.rate == TARGET_RATE {
                    format!(
                        " {} (target p99 < {TARGET_P99_MS} ms at {TARGET_RATE}/s)",
                        verdict(complete && p99 < TARGET_P99_MS)
                    )
                } else {
                    String::new()
                };
                verdicts.push(format!(
                    "at {}/s: {what} p99 {p99:.1} ms, {:.2}x the plain create + patch p99{target}",
                    r.rate,
                    p99 / plain_p99
                ));
            }
        }
        println!();
        for line in verdicts {
            println!("{line}");
        }
        let load: Vec<String> = self.load.iter().map(|(when, value)| format!("{when}: {value}")).collect();
        println!("load average (1/5/15 min): {}", load.join("; "));
    }
}
