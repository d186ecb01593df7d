//! The operator at scale on the test control plane.
//!
//! Starts a private control plane and creates, with a plain client at high
//! concurrency, `APPS` Apps spread over `NAMESPACES` namespaces, each with
//! `SERVICES` image-based Services (action `restart`) and their Deployments,
//! plus one App `big` with `BIG` Services and Deployments. Every Deployment
//! has `replicas: 0`: no pods run, the point is the number of objects.
//!
//! Then it starts the operator as a separate process (the `redeploy-operator`
//! binary of this build: `target/release/` under `cargo bench`) and reports:
//!
//! - the time from spawn to `/readyz` 200, to every App's hook Secret
//!   existing, to the hook of the App whose Secret came last answering a dry
//!   run (`?dry_run=1`, which stores nothing) with 200 instead of 404, to
//!   every App's `.status.hook` being set (the Secrets and statuses as a watch
//!   started before the operator saw them, with how they spread over time),
//!   to every Service reconciled (`.status.type` set) and to the operator
//!   being idle; and the API server's requests (`apiserver_request_total`
//!   from its `/metrics`, by verb, resource and code) from `/readyz` to every
//!   `.status.hook`;
//! - its resident memory (VmRSS, and the peak VmHWM) at those points and after
//!   each fan-out;
//! - rounds of two timed steps, which take turns going first (the plain
//!   client in odd rounds, the hook in even ones): a plain `kube::Client`
//!   applying `workload::restart_patch` (a fresh value each time) to the
//!   `BIG` Deployments at concurrency 32, timed until a watch has seen every
//!   Deployment changed and, for context, until every patch returned; and one
//!   empty POST to App `big`'s hook, timed until the same watch has seen
//!   every one of its Deployments name the new Redeployment on its pod
//!   template, and waited on until that Redeployment finished. The first
//!   round also times, for context, the plain client at concurrency 1 and as
//!   a GET then the PATCH of each Deployment at concurrency 32. Every timed
//!   step waits for the control plane and the operator to be quiet (see
//!   `settle`).
//!
//! Before the operator starts, a plain client creates one Secret per App at
//! concurrency 32: what the App reconciler's writes cost this API server.
//!
//! Targets: within 2x that time after `/readyz`, every App's hook Secret
//! exists and the last one's hook answers (the issue's "every hook Secret
//! exists ... so a restarted operator serves new Apps at once"; the operator
//! serves a hook as soon as its own watch sees the Secret); every App's
//! `.status.hook` is reported against the same 2x (a second write per App,
//! which the operator makes after every Secret); peak resident memory under
//! 64 MiB; the fan-out within 1.0x the plain client's PATCHes at concurrency
//! 32, both timed by the same watch (the ratio to the client's last answer is
//! printed too). A missed target is reported, not an error: the exit
//! status is non-zero only when a step fails, and then the report of what was
//! measured until that step is printed before the error. The bench's own
//! reads (lists, the hook Secret, the Redeployment's phase) are retried a few
//! times when the API server fails them transiently (5xx, 429, no answer);
//! the timed requests are not.
//!
//! `cargo bench --bench scale` (or `make scale`) measures; env `SCALE_APPS`
//! (default 1000), `SCALE_SERVICES` (10), `SCALE_NAMESPACES` (10), `SCALE_BIG`
//! (500), `SCALE_ROUNDS` (4). `cargo test --all-targets` runs it without
//! `--bench`: a smoke run (5 Apps x 2 Services, a fan-out of 10) that asserts
//! the fan-out patched every Deployment.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use redeploy_operator::{
    api::{App, Phase, Redeployment, Service},
    hook::credentials::{APP_LABEL, HOOK_LABEL},
    install::{FIELD_MANAGER, apply_crds},
    workload,
};
use redeploy_testenv::ControlPlane;
use serde_json::json;
use support::wait_for;
use tokio::sync::mpsc;

const BIG: &str = "big";
const BIG_NAMESPACE: &str = "scale-big";

/// Targets from the issue.
const MAX_RSS_MIB: f64 = 64.0;
const MAX_FAN_OUT_RATIO: f64 = 1.0;
/// Start-up: from `/readyz` to every App's hook, at most this many times the
/// plain client's creates of as many Secrets (the writes it cannot do without).
const MAX_START_RATIO: f64 = 2.0;
/// Where the plain client creates the Secrets the start-up is compared with.
const BASELINE_NAMESPACE: &str = "scale-baseline";
/// Concurrency of the plain client's patches the fan-out is compared with.
const BASELINE_CONCURRENCY: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Settings {
    apps: usize,
    services: usize,
    namespaces: usize,
    big: usize,
    rounds: usize,
    /// Creates in flight while the objects are made.
    create_concurrency: usize,
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        if support::smoke_run() {
            return Ok(Settings {
                apps: 5,
                services: 2,
                namespaces: 2,
                big: 10,
                rounds: 1,
                create_concurrency: 16,
                smoke: true,
            });
        }
        Ok(Settings {
            apps: support::env_count("SCALE_APPS", 1000)?,
            services: support::env_count("SCALE_SERVICES", 10)?,
            namespaces: support::env_count("SCALE_NAMESPACES", 10)?,
            big: support::env_count("SCALE_BIG", 500)?,
            rounds: support::env_count("SCALE_ROUNDS", 4)?,
            create_concurrency: 64,
            smoke: false,
        })
    }

    fn total_apps(&self) -> usize {
        self.apps + 1
    }

    fn total_services(&self) -> usize {
        self.apps * self.services + self.big
    }

    /// The timeout of the long waits: generous at scale, short in the smoke run.
    fn patience(&self) -> Duration {
        Duration::from_secs(if self.smoke { 60 } else { 900 })
    }
}

fn main() -> ExitCode {
    let smoke = support::smoke_run();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("scale: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // The report is printed whether or not every step succeeded: a failed run still shows what it measured.
    let mut report = Report::new(settings);
    let result = run(&mut report);
    report.print(result.is_ok());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if smoke => panic!("the smoke run failed: {error:#}"),
        Err(error) => {
            eprintln!("scale: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(report: &mut Report) -> anyhow::Result<()> {
    let control_plane = ControlPlane::start()?;
    support::runtime()?.block_on(scale(&control_plane, report))
}

/// Runs every step, filling `report` as it goes: on an error it holds what was measured until then.
async fn scale(control_plane: &ControlPlane, report: &mut Report) -> anyhow::Result<()> {
    let s = report.settings;
    report.load("start");
    let client = control_plane.client().await?;
    apply_crds(&client, Duration::from_secs(60)).await?;

    // The objects, made by a plain client.
    let namespaces: Vec<String> = (0..s.namespaces).map(|i| format!("scale-{i}")).collect();
    for name in namespaces.iter().map(String::as_str).chain([BIG_NAMESPACE]) {
        let namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    }
    let mut objects = Vec::with_capacity(2 * s.total_services() + s.total_apps());
    for i in 0..s.apps {
        let (namespace, app) = (namespaces[i % s.namespaces].as_str(), format!("app-{i:04}"));
        for j in 0..s.services {
            let name = format!("{app}-s{j:02}");
            objects.push(Object::Deployment { namespace, name: name.clone() });
            objects.push(Object::Service { namespace, app: app.clone(), name });
        }
        objects.push(Object::App { namespace, name: app });
    }
    for j in 0..s.big {
        let name = format!("{BIG}-s{j:03}");
        objects.push(Object::Deployment { namespace: BIG_NAMESPACE, name: name.clone() });
        objects.push(Object::Service { namespace: BIG_NAMESPACE, app: BIG.into(), name });
    }
    objects.push(Object::App { namespace: BIG_NAMESPACE, name: BIG.into() });
    let started = Instant::now();
    let failures: Vec<anyhow::Error> = futures::stream::iter(&objects)
        .map(|object| object.create(&client))
        .buffer_unordered(s.create_concurrency)
        .filter_map(|result| async move { result.err() })
        .collect()
        .await;
    if let Some(first) = failures.into_iter().next() {
        return Err(first.context("creating the objects"));
    }
    report.created = Some((objects.len(), started.elapsed()));
    report.load("after the creates");

    // Let the Deployment controller catch up, so the operator starts on a quiet control plane.
    let started = Instant::now();
    let deployments = Api::<Deployment>::all(client.clone());
    wait_for("every Deployment observed by its controller", s.patience(), Duration::from_secs(2), || async {
        let all = list_all(&deployments).await?;
        let observed = all.iter().filter(|d| observed(d)).count();
        Ok((observed == s.total_services()).then_some(()))
    })
    .await?;
    report.settled = Some(started.elapsed());

    // What the App reconciler's writes cost the API server: as many Secrets
    // as there are Apps, created by a plain client at the same concurrency
    // as the operator's reconcilers (unlabelled: the operator ignores them).
    let namespace = serde_json::from_value(json!({ "metadata": { "name": BASELINE_NAMESPACE } }))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    let baseline_secrets = Api::<Secret>::namespaced(client.clone(), BASELINE_NAMESPACE);
    let started = Instant::now();
    futures::stream::iter(0..s.total_apps())
        .map(|i| {
            let secrets = &baseline_secrets;
            async move {
                let secret: Secret = serde_json::from_value(json!({
                    "metadata": { "name": format!("baseline-{i:04}") },
                    "stringData": { "id": format!("{i:032}"), "token": format!("{i:064}") },
                }))?;
                secrets.create(&PostParams::default(), &secret).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(BASELINE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    report.secrets_baseline = Some(started.elapsed());

    // Watched from before the operator starts: when each hook Secret and each App's `.status.hook` appeared.
    let mut start_watch = StartWatch::start(&client).await?;
    // The operator, in a process of its own.
    let mut operator = Operator::spawn(control_plane)?;
    report.binary = Some(operator.binary.clone());
    let http = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build()?;
    let readyz = format!("{}/readyz", operator.admin);
    operator
        .wait_for("/readyz 200", Duration::from_secs(180), Duration::from_millis(20), || async {
            Ok(http.get(&readyz).send().await.ok().filter(|r| r.status() == 200).map(drop))
        })
        .await?;
    report.point("ready", &operator)?;
    let ready = Instant::now();
    let requests_before = support::apiserver_requests(&client).await?;
    report.load("operator ready");

    // Every hook Secret, then its hook answering a dry run: the operator
    // serves a hook once its own watch of hook Secrets has seen it. The App
    // whose Secret came last is probed (a dry run stores nothing).
    let total = s.total_apps();
    start_watch.wait(&mut operator, "every App's hook Secret", s.patience(), |w| w.secrets.len() >= total).await?;
    let last_secret = start_watch.last_secret().unwrap_or_default();
    report.point("all hook Secrets exist", &operator)?;
    let probe = format!("{last_secret}?dry_run=1");
    operator
        .wait_for("the last App's hook to answer", s.patience(), Duration::from_millis(20), || async {
            let response = http.post(&probe).header("Content-Length", "0").send().await?;
            Ok((response.status() == 200).then_some(()))
        })
        .await?;
    report.point("last hook answers", &operator)?;
    start_watch.wait(&mut operator, "every App's .status.hook", s.patience(), |w| w.hooks.len() >= total).await?;
    let requests_after = support::apiserver_requests(&client).await?;
    report.start_requests = requests_after
        .iter()
        .map(|(key, after)| (key.clone(), after - requests_before.get(key).copied().unwrap_or_default()))
        .filter(|(_, count)| *count >= 1.0)
        .collect();
    report.start_spread = Some(start_watch.spread(ready));
    drop(start_watch);
    report.point("every .status.hook", &operator)?;
    report.load("every App's hook");

    let services = Api::<Service>::all(client.clone());
    operator
        .wait_for("every Service reconciled", s.patience(), Duration::from_secs(1), || async {
            let all = list_all(&services).await?;
            let reconciled = all.iter().filter(|s| s.status.as_ref().is_some_and(|s| s.type_.is_some())).count();
            Ok((reconciled == s.total_services()).then_some(()))
        })
        .await?;
    report.point("all Services reconciled", &operator)?;
    // Idle: under 5% of a core over a whole second.
    let pid = operator.child.id();
    let mut last_ticks = cpu_ticks(pid)?;
    let deadline = Instant::now() + s.patience();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        operator.check_running()?;
        let ticks = cpu_ticks(pid)?;
        if ticks - last_ticks <= IDLE_TICKS_PER_SECOND {
            break;
        }
        last_ticks = ticks;
        anyhow::ensure!(Instant::now() < deadline, "the operator did not go idle within {:?}", s.patience());
    }
    report.point("idle", &operator)?;
    report.load("operator idle");

    // The fan-out against the plain client.
    let big = Api::<Deployment>::namespaced(client.clone(), BIG_NAMESPACE);
    let names: Vec<String> = list_all(&big).await?.iter().map(|d| d.name_any()).collect();
    anyhow::ensure!(names.len() == s.big, "App {BIG} has {} Deployments, not {}", names.len(), s.big);
    let secrets = Api::<Secret>::namespaced(client.clone(), BIG_NAMESPACE);
    let secret_name = format!("{BIG}-hook");
    let secret = retrying(|| secrets.get(&secret_name)).await?;
    let url = support::secret_value(&secret, "url")?;
    let mut tracker = Tracker::start(big.clone()).await?;
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), BIG_NAMESPACE);
    let pids: Vec<u32> = control_plane.pids().into_iter().chain([operator.child.id()]).collect();
    for round in 1..=s.rounds {
        // Pushed first and filled in as it goes, so a failed step leaves what was measured before it.
        report.rounds.push(Round::default());
        let r = report.rounds.len() - 1;
        // The two sides take turns going first, so that neither always meets
        // the machine as the other left it.
        let sides = if round % 2 == 1 { [Side::Plain, Side::Hook] } else { [Side::Hook, Side::Plain] };
        for side in sides {
            settle(&big, &s, &pids).await?;
            tracker.drain();
            match side {
                Side::Plain => {
                    let value = format!("baseline-{round}-c{BASELINE_CONCURRENCY}");
                    let (started, answered) = baseline(&big, &names, &value, BASELINE_CONCURRENCY, Read::No).await?;
                    report.rounds[r].c32 = Some(answered);
                    let (_, last) = tracker.wait_all(&names, &value, s.patience()).await?;
                    report.rounds[r].c32_seen = Some(last.saturating_duration_since(started));
                }
                Side::Hook => {
                    let requests_before = support::apiserver_requests(&client).await?;
                    let started = Instant::now();
                    let response = http.post(&url).header("Content-Length", "0").send().await?;
                    report.rounds[r].posted = Some(started.elapsed());
                    let status = response.status();
                    let body: serde_json::Value = response.json().await?;
                    anyhow::ensure!(status == 202, "the hook answered {status}: {body}");
                    let name = body["redeployment"].as_str().unwrap_or_default().to_string();
                    let (first, last) = tracker.wait_all(&names, &name, s.patience()).await?;
                    report.rounds[r].first = Some(first.saturating_duration_since(started));
                    report.rounds[r].fan_out = Some(last.saturating_duration_since(started));
                    let requests_after = support::apiserver_requests(&client).await?;
                    report.rounds[r].requests = requests_after
                        .iter()
                        .filter(|(key, _)| key.contains(" deployments ") || key.contains(" redeployments"))
                        .map(|(key, after)| {
                            (key.clone(), after - requests_before.get(key).copied().unwrap_or_default())
                        })
                        .filter(|(_, count)| *count >= 1.0)
                        .collect();
                    operator.check_running()?;
                    let patched = list_all(&big).await?;
                    let missing = patched
                        .iter()
                        .filter(|d| workload::redeployment_of(Some(&d.spec.template)).as_deref() != Some(name.as_str()))
                        .count();
                    anyhow::ensure!(missing == 0, "{missing} Deployments of App {BIG} do not name Redeployment {name}");
                    let phase = operator
                        .wait_for(
                            &format!("Redeployment {name} to finish"),
                            s.patience(),
                            Duration::from_millis(200),
                            || async {
                                let phase = retrying(|| redeployments.get(&name)).await?.status.and_then(|s| s.phase);
                                Ok(phase.filter(|p| p.is_finished()))
                            },
                        )
                        .await?;
                    let finished = started.elapsed();
                    anyhow::ensure!(phase == Phase::Succeeded, "Redeployment {name} finished {phase:?}");
                    report.rounds[r].finished = Some(finished);
                    report.point(&format!("after fan-out {round}"), &operator)?;
                }
            }
        }
        // For context only, once: the plain client one patch at a time, and reading each Deployment first.
        if round == 1 {
            settle(&big, &s, &pids).await?;
            report.rounds[r].c1 = Some(baseline(&big, &names, "baseline-c1", 1, Read::No).await?.1);
            settle(&big, &s, &pids).await?;
            let value = format!("baseline-get-c{BASELINE_CONCURRENCY}");
            report.rounds[r].get_c32 = Some(baseline(&big, &names, &value, BASELINE_CONCURRENCY, Read::First).await?.1);
        }
        report.load(&format!("after round {round}"));
    }
    Ok(())
}

/// One object the plain client creates.
enum Object<'a> {
    Deployment { namespace: &'a str, name: String },
    Service { namespace: &'a str, app: String, name: String },
    App { namespace: &'a str, name: String },
}

impl Object<'_> {
    async fn create(&self, client: &Client) -> anyhow::Result<()> {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self {
            Object::Deployment { namespace, name } => {
                let deployment = support::idle_deployment(name);
                Api::<Deployment>::namespaced(client.clone(), namespace).create(&params, &deployment).await?;
            }
            Object::Service { namespace, app, name } => {
                let service = serde_json::from_value(json!({
                    "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
                    "metadata": { "name": name },
                    "spec": {
                        "app": app,
                        "target": { "name": name },
                        "image": { "reference": format!("registry.example.com/{name}:initial") },
                    },
                }))?;
                Api::<Service>::namespaced(client.clone(), namespace).create(&params, &service).await?;
            }
            Object::App { namespace, name } => {
                let app = serde_json::from_value(json!({
                    "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
                    "metadata": { "name": name },
                    "spec": {},
                }))?;
                Api::<App>::namespaced(client.clone(), namespace).create(&params, &app).await?;
            }
        }
        Ok(())
    }
}

/// Attempts of a read the API server fails transiently, and the pause between them.
const READ_ATTEMPTS: u32 = 5;
const READ_PAUSE: Duration = Duration::from_secs(1);

/// Runs `read` (a request that changes nothing) again when it fails
/// transiently, as an overloaded control plane's requests may; up to
/// [`READ_ATTEMPTS`] times, [`READ_PAUSE`] apart.
async fn retrying<T, F, Fut>(mut read: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut attempt = 1;
    loop {
        match read().await {
            Err(error) if attempt < READ_ATTEMPTS && is_transient(&error) => {
                eprintln!("scale: a read failed (attempt {attempt} of {READ_ATTEMPTS}), retrying: {error}");
                attempt += 1;
                tokio::time::sleep(READ_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// An error that may not happen again: the API server answered 5xx or 429,
/// or it did not answer (connection refused or reset, a timeout).
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Every object of `api`, listed in pages.
async fn list_all<K>(api: &Api<K>) -> anyhow::Result<Vec<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(2000);
    loop {
        let page = retrying(|| api.list(&params)).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// The Deployment controller has seen the Deployment's last change.
fn observed(deployment: &Deployment) -> bool {
    let observed = deployment.status.as_ref().and_then(|s| s.observed_generation).unwrap_or_default();
    observed >= deployment.metadata.generation.unwrap_or(1)
}

/// Waits until the Deployment controller has caught up with App `big`'s Deployments.
/// Waits until the Deployment controller has caught up with App `big`'s
/// Deployments, then until the control plane and the operator (`pids`) are
/// quiet, so that no timed step pays for the work the one before left behind
/// (new ReplicaSets, old ones cleaned up). Quiet: under 10% of a core over a
/// second, or 30 s at most.
async fn settle(big: &Api<Deployment>, s: &Settings, pids: &[u32]) -> anyhow::Result<()> {
    wait_for("App big's Deployments observed", s.patience(), Duration::from_millis(100), || async {
        Ok(list_all(big).await?.iter().all(observed).then_some(()))
    })
    .await?;
    let total = || pids.iter().filter_map(|pid| cpu_ticks(*pid).ok()).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = total();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = total();
        if now - last <= QUIET_TICKS_PER_SECOND {
            break;
        }
        last = now;
    }
    Ok(())
}

/// CPU ticks per second under which the control plane and the operator count as quiet: 10%.
const QUIET_TICKS_PER_SECOND: u64 = 10;

/// Who patches App `big`'s Deployments in a timed step of a round.
#[derive(Clone, Copy)]
enum Side {
    /// The plain client, at concurrency 32.
    Plain,
    /// The operator, for one empty POST to the hook.
    Hook,
}

/// Whether the plain client reads each Deployment before it patches it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    No,
    /// A GET of the Deployment, then the PATCH.
    First,
}

/// The plain client: `workload::restart_patch` (as the operator's restart builds it) applied
/// to every Deployment, `concurrency` at a time; timed until every patch returned
/// (returned with when it started). Its requests are timed, so not retried: one that
/// fails fails the run.
async fn baseline(
    big: &Api<Deployment>,
    names: &[String],
    value: &str,
    concurrency: usize,
    read: Read,
) -> anyhow::Result<(Instant, Duration)> {
    let patch = workload::restart_patch(value, &Timestamp::now().to_string());
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let (patch, params) = (&patch, &params);
    let started = Instant::now();
    futures::stream::iter(names)
        .map(|name| async move {
            if read == Read::First {
                big.get(name).await?;
            }
            big.patch(name, params, &Patch::Strategic(patch)).await.map(drop)
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok((started, started.elapsed()))
}

/// Watches App `big`'s Deployments: which Redeployment each pod template names, and since when.
struct Tracker {
    changes: mpsc::UnboundedReceiver<(String, Option<String>, Instant)>,
    state: HashMap<String, (Option<String>, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    async fn start(api: Api<Deployment>) -> anyhow::Result<Tracker> {
        let (sender, changes) = mpsc::unbounded_channel();
        let (synced, is_synced) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut synced = Some(synced);
            let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => {
                        let value = workload::redeployment_of(Some(&d.spec.template));
                        let _ = sender.send((d.name_any(), value, Instant::now()));
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(synced) = synced.take() {
                            let _ = synced.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(error) => eprintln!("scale: watching Deployments: {error}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), is_synced).await??;
        let mut tracker = Tracker { changes, state: HashMap::new(), task };
        tracker.drain();
        Ok(tracker)
    }

    fn record(&mut self, (name, value, at): (String, Option<String>, Instant)) {
        let entry = self.state.entry(name).or_insert((None, at));
        if entry.0 != value {
            *entry = (value, at);
        }
    }

    /// Takes in what the watch has seen so far.
    fn drain(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            self.record(change);
        }
    }

    /// When the first and the last of `names` came to name `redeployment`.
    async fn wait_all(
        &mut self,
        names: &[String],
        redeployment: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            let done: Option<Vec<Instant>> = names
                .iter()
                .map(|n| self.state.get(n).filter(|(v, _)| v.as_deref() == Some(redeployment)).map(|(_, at)| *at))
                .collect();
            if let Some(done) = done {
                let first = done.iter().min().copied().ok_or_else(|| anyhow::anyhow!("no Deployments"))?;
                return Ok((first, done.into_iter().max().unwrap_or(first)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let pending =
                names.iter().filter(|n| self.state.get(*n).is_none_or(|(v, _)| v.as_deref() != Some(redeployment)));
            anyhow::ensure!(
                !left.is_zero(),
                "{} Deployments were not patched by Redeployment {redeployment} within {timeout:?}",
                pending.count()
            );
            match tokio::time::timeout(left, self.changes.recv()).await {
                Ok(Some(change)) => self.record(change),
                Ok(None) => anyhow::bail!("the Deployment watch ended"),
                Err(_) => {}
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches, from before the operator starts, the hook Secrets (labelled) and
/// the Apps: when the watch first saw each App's Secret, and its `.status.hook`.
struct StartWatch {
    changes: mpsc::UnboundedReceiver<StartChange>,
    /// By App (`namespace/name`): when its Secret was first seen, and its hook URL.
    secrets: HashMap<String, (Instant, String)>,
    /// By App: when its `.status.hook` was first seen set.
    hooks: HashMap<String, Instant>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

enum StartChange {
    Secret { app: String, url: String, at: Instant },
    Hook { app: String, at: Instant },
}

/// When the hook Secrets and the Apps' `.status.hook` appeared, after `/readyz`, in order.
struct StartSpread {
    secrets: Vec<Duration>,
    hooks: Vec<Duration>,
}

impl StartWatch {
    async fn start(client: &Client) -> anyhow::Result<StartWatch> {
        let (sender, changes) = mpsc::unbounded_channel();
        let secrets = Api::<Secret>::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{HOOK_LABEL}=true"));
        let (secrets_synced, secrets_listed) = tokio::sync::oneshot::channel();
        let to = sender.clone();
        let secrets_task = tokio::spawn(async move {
            let mut synced = Some(secrets_synced);
            let mut events = watcher(secrets, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                        let app = format!(
                            "{}/{}",
                            secret.namespace().unwrap_or_default(),
                            secret.labels().get(APP_LABEL).cloned().unwrap_or_default()
                        );
                        let url = support::secret_value(&secret, "url").unwrap_or_default();
                        let _ = to.send(StartChange::Secret { app, url, at: Instant::now() });
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(synced) = synced.take() {
                            let _ = synced.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(error) => eprintln!("scale: watching hook Secrets: {error}"),
                }
            }
        });
        let apps = Api::<App>::all(client.clone());
        let (apps_synced, apps_listed) = tokio::sync::oneshot::channel();
        let apps_task = tokio::spawn(async move {
            let mut synced = Some(apps_synced);
            let mut events = watcher(apps, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(app) | watcher::Event::InitApply(app)) => {
                        if app.status.as_ref().is_some_and(|s| s.hook.is_some()) {
                            let app = format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any());
                            let _ = sender.send(StartChange::Hook { app, at: Instant::now() });
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(synced) = synced.take() {
                            let _ = synced.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(error) => eprintln!("scale: watching Apps: {error}"),
                }
            }
        });
        let mut watch = StartWatch {
            changes,
            secrets: HashMap::new(),
            hooks: HashMap::new(),
            tasks: vec![secrets_task, apps_task],
        };
        tokio::time::timeout(Duration::from_secs(60), secrets_listed).await??;
        tokio::time::timeout(Duration::from_secs(60), apps_listed).await??;
        watch.drain();
        Ok(watch)
    }

    /// Takes in what the watches have seen so far (the first sighting of each counts).
    fn drain(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            match change {
                StartChange::Secret { app, url, at } => {
                    self.secrets.entry(app).or_insert((at, url));
                }
                StartChange::Hook { app, at } => {
                    self.hooks.entry(app).or_insert(at);
                }
            }
        }
    }

    /// Returns once `done` holds of what the watches have seen, failing early when the operator exits.
    async fn wait(
        &mut self,
        operator: &mut Operator,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StartWatch) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            operator.check_running()?;
            self.drain();
            if done(self) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The hook URL of the App whose Secret was seen last.
    fn last_secret(&self) -> Option<String> {
        self.secrets.values().max_by_key(|(at, _)| *at).map(|(_, url)| url.clone())
    }

    fn spread(&self, ready: Instant) -> StartSpread {
        let mut secrets: Vec<Duration> =
            self.secrets.values().map(|(at, _)| at.saturating_duration_since(ready)).collect();
        let mut hooks: Vec<Duration> = self.hooks.values().map(|at| at.saturating_duration_since(ready)).collect();
        secrets.sort();
        hooks.sort();
        StartSpread { secrets, hooks }
    }
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|task| task.abort());
    }
}

/// CPU ticks (at the usual 100 per second) over one second below which the operator counts as idle: 5%.
const IDLE_TICKS_PER_SECOND: u64 = 5;

/// The operator binary running as a process of its own; killed on drop.
struct Operator {
    child: Child,
    binary: PathBuf,
    log: PathBuf,
    admin: String,
    started: Instant,
}

impl Operator {
    fn spawn(control_plane: &ControlPlane) -> anyhow::Result<Operator> {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_redeploy-operator"));
        let free = || -> anyhow::Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (hook_port, admin_port) = (free()?, free()?);
        // Kept after the run (the control plane's directory is not).
        let log = std::env::temp_dir().join("redeploy-scale-operator.log");
        let out = File::create(&log)?;
        let started = Instant::now();
        let child = Command::new(&binary)
            .args(["run", "--hook-addr", &format!("127.0.0.1:{hook_port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{admin_port}")])
            .args(["--public-url", &format!("http://127.0.0.1:{hook_port}")])
            .env("KUBECONFIG", control_plane.kubeconfig_path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", binary.display()))?;
        Ok(Operator { child, binary, log, admin: format!("http://127.0.0.1:{admin_port}"), started })
    }

    /// Fails, with the end of its log, once the operator has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            anyhow::bail!("the operator exited ({status}); last lines of its log:\n{}", tail.join("\n"));
        }
        Ok(())
    }

    /// [`wait_for`], failing early when the operator exits.
    async fn wait_for<T, F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        wait_for(what, timeout, every, || {
            let running = self.check_running();
            let check = check();
            async move {
                running?;
                check.await
            }
        })
        .await
    }

    /// VmRSS and VmHWM, in KiB.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        support::resident_kib(self.child.id())
    }
}

/// User and system CPU ticks process `pid` has used so far.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).copied().unwrap_or_default().parse()?) };
    // After the command name: state is field 3, utime 14 and stime 15.
    Ok(tick(11)? + tick(12)?)
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moment of the operator's life: time since spawn and memory.
struct Point {
    what: String,
    since_spawn: Duration,
    rss_kib: u64,
    hwm_kib: u64,
}

/// One round; a value is `None` when the run failed before it was measured.
#[derive(Default)]
struct Round {
    /// The plain client's PATCHes at concurrency 32: until every one was answered, and
    /// until the watch that times the fan-out saw every Deployment changed (the
    /// target's reference: the same stopwatch as the fan-out's).
    c32: Option<Duration>,
    c32_seen: Option<Duration>,
    /// At concurrency 1, until every one was answered.
    c1: Option<Duration>,
    /// The plain client's GET then PATCH of each Deployment at concurrency 32 (for context).
    get_c32: Option<Duration>,
    /// Until the hook answered.
    posted: Option<Duration>,
    /// Until the first Deployment was seen patched.
    first: Option<Duration>,
    /// Until the last Deployment was seen patched.
    fan_out: Option<Duration>,
    /// Until the Redeployment was seen finished (Succeeded).
    finished: Option<Duration>,
    /// The API server's requests on Deployments and Redeployments from before
    /// the POST until the last Deployment was seen patched, by verb, resource and code.
    requests: Vec<(String, f64)>,
}

/// What the run measured; filled in step by step, so it may stop short.
struct Report {
    settings: Settings,
    binary: Option<PathBuf>,
    /// How many objects the plain client created, and in how long.
    created: Option<(usize, Duration)>,
    /// The plain client's creates of one Secret per App, at concurrency 32.
    secrets_baseline: Option<Duration>,
    settled: Option<Duration>,
    points: Vec<Point>,
    /// The API server's requests from `/readyz` to every App's `.status.hook`, by verb, resource and code.
    start_requests: Vec<(String, f64)>,
    start_spread: Option<StartSpread>,
    rounds: Vec<Round>,
    load: Vec<(String, String)>,
}

impl Report {
    fn new(settings: Settings) -> Report {
        Report {
            settings,
            binary: None,
            created: None,
            secrets_baseline: None,
            settled: None,
            points: Vec::new(),
            start_requests: Vec::new(),
            start_spread: None,
            rounds: Vec::new(),
            load: Vec::new(),
        }
    }

    fn point(&mut self, what: &str, operator: &Operator) -> anyhow::Result<()> {
        let (rss_kib, hwm_kib) = operator.memory()?;
        let since_spawn = operator.started.elapsed();
        self.points.push(Point { what: what.into(), since_spawn, rss_kib, hwm_kib });
        Ok(())
    }

    fn load(&mut self, when: &str) {
        self.load.push((when.into(), support::load_average()));
    }

    /// Prints what was measured; `complete` is false when a step failed (its error is printed next).
    fn print(&self, complete: bool) {
        let s = &self.settings;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
        println!();
        println!(
            "scale{}: {} Apps x {} Services over {} namespaces + App `{BIG}` with {} Services",
            if s.smoke { " (smoke run; `cargo bench --bench scale` measures)" } else { "" },
            s.apps,
            s.services,
            s.namespaces,
            s.big
        );
        println!(
            "objects: {} Apps, {} Services, {} Deployments with replicas: 0 (no pods: this measures object count)",
            s.total_apps(),
            s.total_services(),
            s.total_services()
        );
        if let Some((objects, created)) = self.created {
            let settled = match self.settled {
                Some(settled) => format!("caught up {:.1} s later", settled.as_secs_f64()),
                None => "did not catch up".to_string(),
            };
            println!(
                "created {objects} objects in {:.1} s ({:.0}/s, {} at once); the Deployment controller {settled}",
                created.as_secs_f64(),
                objects as f64 / created.as_secs_f64(),
                s.create_concurrency,
            );
        }
        if let Some(binary) = &self.binary {
            println!(
                "operator: {} run (a process of its own; its log: {})",
                binary.display(),
                std::env::temp_dir().join("redeploy-scale-operator.log").display()
            );
        }
        if !self.points.is_empty() {
            println!();
            println!("{:<28} {:>12} {:>11} {:>11}", "operator", "since spawn", "VmRSS MiB", "VmHWM MiB");
        }
        for p in &self.points {
            let what = match p.what.as_str() {
                "ready" => "/readyz 200".to_string(),
                "all hook Secrets exist" => format!("all {} hook Secrets exist", s.total_apps()),
                "last hook answers" => "the last one's hook answers".to_string(),
                "every .status.hook" => format!("all {} .status.hook set", s.total_apps()),
                "all Services reconciled" => format!("all {} Services reconciled", s.total_services()),
                "idle" => "idle (CPU < 5%)".to_string(),
                other => other.to_string(),
            };
            println!(
                "{what:<28} {:>10.2} s {:>11.1} {:>11.1}",
                p.since_spawn.as_secs_f64(),
                mib(p.rss_kib),
                mib(p.hwm_kib)
            );
        }
        // A value, or `-` when it was not measured.
        let cell = |value: Option<f64>, precision: usize| match value {
            Some(value) => format!("{value:.precision$}"),
            None => "-".to_string(),
        };
        let since_spawn = |what: &str| self.points.iter().find(|p| p.what == what).map(|p| p.since_spawn);
        if let (Some(ready), Some(baseline)) = (since_spawn("ready"), self.secrets_baseline) {
            let after_ready = |what: &str| since_spawn(what).map(|at| at.saturating_sub(ready).as_secs_f64());
            let baseline = baseline.as_secs_f64();
            println!(
                "start-up, against a plain client creating {} Secrets (c={BASELINE_CONCURRENCY}) in {baseline:.2} s:",
                s.total_apps()
            );
            // The words: every hook Secret exists and the operator serves it.
            let served =
                self.start_spread.as_ref().and_then(|spread| spread.secrets.last()).map(|last| last.as_secs_f64());
            if let (Some(secrets), Some(answers)) = (served, after_ready("last hook answers")) {
                let ratio = answers.max(secrets) / baseline;
                println!(
                    "  every hook Secret exists {secrets:.2} s after /readyz, the last one's hook answers at {answers:.2} s; ratio {ratio:.2}  {} (target <= {MAX_START_RATIO:.1})",
                    verdict(ratio <= MAX_START_RATIO)
                );
            }
            if let Some(hooks) = self.start_spread.as_ref().and_then(|spread| spread.hooks.last()) {
                let ratio = hooks.as_secs_f64() / baseline;
                // Reported, not a target: each App's status is a write of
                // its own after its Secret's, which the baseline does not make.
                println!(
                    "  every App's .status.hook set {:.2} s after /readyz; ratio {ratio:.2}  (reported: one more write per App than the baseline)",
                    hooks.as_secs_f64(),
                );
            }
            if let Some(spread) = &self.start_spread {
                let at = |times: &[Duration], share: f64| {
                    let i = ((times.len() as f64 * share).ceil() as usize).clamp(1, times.len().max(1)) - 1;
                    cell(times.get(i).map(|d| d.as_secs_f64()), 2)
                };
                println!("  s after /readyz     first    10%    50%    90%   last");
                for (what, times) in [("hook Secret seen", &spread.secrets), (".status.hook seen", &spread.hooks)] {
                    println!(
                        "  {what:<18} {:>6} {:>6} {:>6} {:>6} {:>6}",
                        at(times, 0.0),
                        at(times, 0.1),
                        at(times, 0.5),
                        at(times, 0.9),
                        at(times, 1.0)
                    );
                }
            }
            if !self.start_requests.is_empty() {
                let total: f64 = self.start_requests.iter().map(|(_, count)| count).sum();
                println!("  API server requests from /readyz to every .status.hook: {total:.0}");
                let mut requests = self.start_requests.clone();
                requests.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (what, count) in requests.iter().take(12) {
                    println!("    {count:>7.0}  {what}");
                }
            }
        }
        if let Some(peak) = self.points.iter().map(|p| p.hwm_kib.max(p.rss_kib)).max() {
            println!(
                "peak resident memory {:.1} MiB  {} (target < {MAX_RSS_MIB:.0} MiB)",
                mib(peak),
                verdict(mib(peak) < MAX_RSS_MIB)
            );
        }
        if !self.rounds.is_empty() {
            println!();
            println!(
                "fan-out to {} Deployments: one empty POST to App `{BIG}`'s hook, until a watch saw every Deployment patched",
                s.big
            );
            println!(
                "{:<6} {:>13} {:>13} {:>12} {:>22} {:>8} {:>13} {:>10} {:>12} {:>13} {:>18}",
                "round",
                "plain c=32 s",
                "(answered s)",
                "plain c=1 s",
                "plain GET+PATCH c=32 s",
                "POST ms",
                "1st patch ms",
                "fan-out s",
                "fan-out/c=32",
                "(/answered)",
                "Succeeded after s"
            );
        }
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
        let ratio = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64());
        for (i, r) in self.rounds.iter().enumerate() {
            println!(
                "{:<6} {:>13} {:>13} {:>12} {:>22} {:>8} {:>13} {:>10} {:>12} {:>13} {:>18}",
                i + 1,
                cell(secs(r.c32_seen), 3),
                cell(secs(r.c32), 3),
                cell(secs(r.c1), 3),
                cell(secs(r.get_c32), 3),
                cell(ms(r.posted), 1),
                cell(ms(r.first), 1),
                cell(secs(r.fan_out), 3),
                cell(ratio(r.fan_out, r.c32_seen), 2),
                cell(ratio(r.fan_out, r.c32), 2),
                cell(secs(r.finished), 2)
            );
        }
        for (i, r) in self.rounds.iter().enumerate().filter(|(_, r)| !r.requests.is_empty()) {
            let requests: Vec<String> = r.requests.iter().map(|(what, count)| format!("{count:.0} {what}")).collect();
            println!("round {} requests during the fan-out: {}", i + 1, requests.join(", "));
        }
        // The target compares the rounds whose fan-out was measured with their own
        // baseline, both timed by the same watch: from the first request (the POST, the
        // first PATCH) until it saw the last Deployment changed.
        let measured: Vec<(Duration, Duration, Duration)> =
            self.rounds.iter().filter_map(|r| Some((r.fan_out?, r.c32_seen?, r.c32?))).collect();
        if !measured.is_empty() {
            let total = |pick: fn(&(Duration, Duration, Duration)) -> Duration| {
                measured.iter().map(pick).sum::<Duration>().as_secs_f64()
            };
            let (fan_out, seen, answered) = (total(|m| m.0), total(|m| m.1), total(|m| m.2));
            let rounds = if measured.len() == self.rounds.len() { "all rounds" } else { "measured rounds" };
            println!(
                "fan-out / plain client (c=32), both until the watch saw the last Deployment, {rounds}  {:.2}  {} (target <= {MAX_FAN_OUT_RATIO:.1}); against the plain client's last answer {:.2}",
                fan_out / seen,
                verdict(fan_out / seen <= MAX_FAN_OUT_RATIO),
                fan_out / answered,
            );
        }
        if !self.load.is_empty() {
            let load: Vec<String> = self.load.iter().map(|(when, value)| format!("{when}: {value}")).collect();
            println!("load average (1/5/15 min): {}", load.join("; "));
        }
        if !complete {
            println!("incomplete: a step failed (its error follows); the report shows what was measured before it");
        }
    }
}
