//! The hook under load, next to a plain client creating the same objects.
//!
//! Starts a private control plane and the operator in-process on loopback,
//! makes one App with one Git-built Service that the GitHub push fixture
//! matches, then alternates rounds (raw, hook, raw, hook, ...) on the same API
//! server in the same run, so drift on this shared machine hits both sides:
//!
//! - **raw**: a plain `kube::Client` creates Redeployments built exactly as the
//!   hook builds them (parse, plan, `hook::record::redeployment`, each with a
//!   delivery id of its own), timing each create;
//! - **hook**: POSTs of the fixture (`X-GitHub-Event: push`, a unique
//!   `X-GitHub-Delivery` each, so each is accepted with `202`) over keep-alive
//!   HTTP/1.1 connections, timing each request up to the end of the answer.
//!
//! Both sides run `N` requests per round at concurrency `C` through the same
//! `buffer_unordered`. The operator runs as two replicas, each on a runtime of
//! its own: the leader, which reconciles (it executes the Redeployments of both
//! sides alike), and a follower, which serves hooks and reconciles nothing, as
//! in a two-replica install; the hook rounds POST to the follower
//! (`LOAD_REPLICA=leader`: to the leader). Each round starts once every
//! Redeployment of the round before has finished (or after 120 s), so no round
//! inherits another's backlog, and the time until the round's last one finished
//! is its end-to-end time. Targets: hook rate >= 80% of the raw rate, hook p99 <
//! 2x the raw p99. A missed target is reported, not an error: the exit status
//! is non-zero only when a request failed or the stored objects do not add up.
//!
//! `cargo bench --bench hook_load` (or `make load`) measures; env `LOAD_N`
//! (default 1000), `LOAD_CONCURRENCY` (32), `LOAD_ROUNDS` (rounds per side, 2),
//! `LOAD_REPLICA` (`follower` or `leader`).
//! `cargo test --all-targets` runs it without `--bench`: a smoke run with N=20,
//! C=4 that asserts every request succeeded.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use redeploy_operator::{
    api::{App, Redeployment, Service},
    hook::{
        providers,
        record::{self, DELIVERY_ANNOTATION},
    },
    install::FIELD_MANAGER,
    plan::{self, Modifiers},
};
use redeploy_testenv::ControlPlane;

const FIXTURE: &str = "github/push-new-branch.json";
const BODY: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/github/push-new-branch.json"));
const APP: &str = "load";
const SERVICE: &str = "web";
/// The fixture's repository and branch, which the Service builds.
const REPOSITORY: &str = "https://github.com/Codertocat/Hello-World";
const BRANCH: &str = "master";
/// Hook calls of the App the operator handles at once: high, so no `429` distorts the run.
const CONCURRENT_PER_APP: usize = 1 << 16;

/// Targets from the issue.
const MIN_RATE_RATIO: f64 = 0.80;
const MAX_P99_RATIO: f64 = 2.0;

#[derive(Clone, Copy, Debug)]
struct Settings {
    n: usize,
    concurrency: usize,
    rounds: usize,
    /// The replica the hook rounds POST to.
    replica: Replica,
    smoke: bool,
}

/// Which replica serves the hook rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replica {
    /// A follower (the default): it serves hooks and reconciles nothing, so
    /// the hook side pays for what a hook call costs, not for the leader's
    /// reconcile work, which the raw side's creates cause just as much.
    Follower,
    /// The leader itself: hooks and every reconciler in one process.
    Leader,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        if support::smoke_run() {
            return Ok(Settings { n: 20, concurrency: 4, rounds: 2, replica: Replica::Follower, smoke: true });
        }
        Ok(Settings {
            n: support::env_count("LOAD_N", 1000)?,
            concurrency: support::env_count("LOAD_CONCURRENCY", 32)?,
            rounds: support::env_count("LOAD_ROUNDS", 2)?,
            replica: match std::env::var("LOAD_REPLICA").as_deref() {
                Ok("leader") => Replica::Leader,
                Ok("follower") | Err(_) => Replica::Follower,
                Ok(other) => anyhow::bail!("LOAD_REPLICA={other}: `follower` or `leader`"),
            },
            smoke: false,
        })
    }

    /// Untimed requests per side before the first round: every connection of the pools gets opened.
    fn warm_up(&self) -> usize {
        2 * self.concurrency
    }
}

fn main() -> ExitCode {
    let smoke = support::smoke_run();
    let result = Settings::from_env().and_then(run);
    if smoke && let Err(error) = &result {
        panic!("the smoke run failed: {error:#}");
    }
    match result {
        Ok(report) => {
            report.print();
            let problems = report.problems();
            for problem in &problems {
                eprintln!("hook_load: {problem}");
            }
            assert!(!report.settings.smoke || problems.is_empty(), "the smoke run failed: {problems:?}");
            if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("hook_load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the control plane, runs the operator on a runtime (and thread) of
/// its own, as it would run in its own process, and the load on another.
fn run(settings: Settings) -> anyhow::Result<Report> {
    let control_plane = ControlPlane::start()?;
    let control_plane = &control_plane;
    std::thread::scope(|scope| {
        let replica = |follower: bool| {
            support::operator_thread(scope, move || async move {
                if follower {
                    start_follower(control_plane).await
                } else {
                    support::start_operator(control_plane, CONCURRENT_PER_APP).await
                }
            })
        };
        let leader = replica(false)?;
        let (hook, follower) = match settings.replica {
            Replica::Leader => (leader.hook_addr, None),
            Replica::Follower => {
                // On `?`, dropping `leader` stops it before the scope joins its thread.
                let follower = replica(true)?;
                (follower.hook_addr, Some(follower))
            }
        };
        let result = support::runtime().and_then(|runtime| {
            runtime.block_on(load(control_plane, Addrs { leader: leader.hook_addr, hook }, settings))
        });
        if let Some(follower) = follower {
            follower.stop();
        }
        leader.stop();
        result
    })
}

/// Where the operator's replicas serve hooks.
struct Addrs {
    /// The replica that reconciles (and serves hooks too).
    leader: SocketAddr,
    /// The replica the hook rounds POST to.
    hook: SocketAddr,
}

/// A Lease the leader replica never asks for, held by nobody running for an hour.
const FOLLOWER_LEASE: &str = "redeploy-operator-load";

/// A second replica that follows: it serves hooks from its own caches and
/// reconciles nothing, as the replica that is not the leader of a
/// two-replica install does (the Lease it runs for is held by another).
async fn start_follower(control_plane: &ControlPlane) -> anyhow::Result<redeploy_operator::operator::Running> {
    use k8s_openapi::{
        api::coordination::v1::{Lease, LeaseSpec},
        apimachinery::pkg::apis::meta::v1::MicroTime,
    };
    let client = control_plane.client().await?;
    let now = MicroTime(Timestamp::now());
    let lease = Lease {
        metadata: kube::api::ObjectMeta { name: Some(FOLLOWER_LEASE.into()), ..Default::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("the-leader".into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), "default").create(&PostParams::default(), &lease).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = support::operator_config(port, CONCURRENT_PER_APP);
    config.leader_election =
        Some(redeploy_operator::leader::LeaseConfig::new("default", FOLLOWER_LEASE, "the-follower"));
    let follower = support::start_operator_with(client, config).await?;
    anyhow::ensure!(!follower.is_leading(), "the follower replica took the Lease");
    Ok(follower)
}

fn app_yaml() -> String {
    format!(
        "apiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: {APP}\nspec: {{}}\n---\n\
         apiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {SERVICE}\nspec:\n  app: {APP}\n  \
         target:\n    name: {SERVICE}\n  git:\n    repository: {REPOSITORY}\n    branch: {BRANCH}\n  \
         build:\n    image: registry.example.com/{SERVICE}\n"
    )
}

async fn load(control_plane: &ControlPlane, addrs: Addrs, settings: Settings) -> anyhow::Result<Report> {
    let hook_addr = addrs.leader;
    let client = control_plane.client().await?;
    let namespace = control_plane.namespace(&client, "load").await?;
    support::apply_yaml(&client, &namespace, &app_yaml()).await?;
    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    support::eventually("the App's hook", || async { Ok(apps.get(APP).await?.status.and_then(|s| s.hook)) }).await?;
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace).get(&format!("{APP}-hook")).await?;
    let url = support::secret_value(&secret, "url")?;
    anyhow::ensure!(url.starts_with(&format!("http://{hook_addr}/")), "the hook URL {url} is not on {hook_addr}");
    // The same hook, on the replica the rounds measure.
    let url = url.replacen(&hook_addr.to_string(), &addrs.hook.to_string(), 1);

    // Redeployments are seen as they are created: the operator executes them and
    // its history pruning deletes finished ones, so a list at the end would undercount.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let finished: Finished = Default::default();
    // What a few of the Redeployments that did not succeed said, to tell why.
    let unsuccessful = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, String>::new()));
    let watch = {
        let (seen, finished, unsuccessful, api) = (
            seen.clone(),
            finished.clone(),
            unsuccessful.clone(),
            Api::<Redeployment>::namespaced(client.clone(), &namespace),
        );
        tokio::spawn(async move {
            use futures::StreamExt;
            use kube::{
                ResourceExt,
                runtime::{WatchStreamExt, watcher},
            };
            let mut objects = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
            while let Some(object) = objects.next().await {
                if let Ok(object) = object {
                    let delivery = object.annotations().get(DELIVERY_ANNOTATION).cloned().unwrap_or_default();
                    if let Some(phase) = object.status.as_ref().and_then(|s| s.phase).filter(|p| p.is_finished()) {
                        let mut finished = finished.lock().unwrap_or_else(|e| e.into_inner());
                        finished.entry(delivery.clone()).or_insert((Instant::now(), phase));
                        let mut unsuccessful = unsuccessful.lock().unwrap_or_else(|e| e.into_inner());
                        if !matches!(
                            phase,
                            redeploy_operator::api::Phase::Succeeded | redeploy_operator::api::Phase::Superseded
                        ) && unsuccessful.len() < 3
                        {
                            let message = object.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
                            unsuccessful.insert(object.name_any(), format!("{phase:?}: {message}"));
                        }
                    }
                    seen.lock().unwrap_or_else(|e| e.into_inner()).insert(delivery);
                }
            }
        })
    };

    let http = reqwest::Client::builder().pool_max_idle_per_host(usize::MAX).build()?;
    let hook = Hook { http, url };
    // Until the operator's caches know the hook and the Service, the fixture gets 404 or 200 (nothing to deploy).
    let probe = support::eventually("the hook to accept the fixture (202)", || async {
        Ok(hook.post("probe").await?.ok().and_then(|name| name.strip_prefix("202 ").map(str::to_string)))
    })
    .await?;

    // The raw side builds its objects the way the handler does, from the same App and Services.
    let raw = Raw::new(&client, &namespace).await?;
    let stored = Api::<Redeployment>::namespaced(client.clone(), &namespace).get(&probe).await?;
    raw.check_same_as(&stored, "probe")?;

    let warm_up = settings.warm_up();
    let raw_warm_up = raw.round("warm-raw", warm_up, settings.concurrency).await?;
    let hook_warm_up = hook.round("warm-hook", warm_up, settings.concurrency).await;

    let mut report = Report::new(settings);
    report.load.push(LoadAverage::now("start"));
    let drained = |prefix: String, started: Instant| {
        let finished = finished.clone();
        async move {
            // Every Redeployment of the round finished (or the wait gave up).
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            loop {
                let (done, last) = {
                    let finished = finished.lock().unwrap_or_else(|e| e.into_inner());
                    let ours: Vec<&Instant> =
                        finished.iter().filter(|(d, _)| d.starts_with(&prefix)).map(|(_, (at, _))| at).collect();
                    (ours.len(), ours.into_iter().max().copied())
                };
                if done >= settings.n || Instant::now() > deadline {
                    return Drained { finished: done, after: last.map(|at| at.saturating_duration_since(started)) };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for round in 1..=settings.rounds {
        let name = format!("raw-{round}-");
        let started = Instant::now();
        report.raw.rounds.push(raw.round(&format!("raw-{round}"), settings.n, settings.concurrency).await?);
        report.raw.drained.push(drained(name, started).await);
        report.load.push(LoadAverage::now(&format!("after raw {round}")));
        let name = format!("hook-{round}-");
        let started = Instant::now();
        report.hook.rounds.push(hook.round(&format!("hook-{round}"), settings.n, settings.concurrency).await);
        report.hook.drained.push(drained(name, started).await);
        report.load.push(LoadAverage::now(&format!("after hook {round}")));
    }
    report.phases =
        finished.lock().unwrap_or_else(|e| e.into_inner()).values().fold(BTreeMap::new(), |mut phases, (_, phase)| {
            *phases.entry(format!("{phase:?}")).or_default() += 1;
            phases
        });
    report.unsuccessful = unsuccessful.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.warm_up = [&raw_warm_up, &hook_warm_up].map(|r| (r.ok(), r.failed()));

    // Every 202 and every successful create stored exactly one object (the
    // watch may trail the last creates by a moment: give it time to settle).
    let expected_total = 1 + 2 * warm_up + 2 * settings.n * settings.rounds;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while seen.lock().unwrap_or_else(|e| e.into_inner()).len() < expected_total && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    watch.abort();
    let deliveries = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    for delivery in deliveries {
        let kind = ["raw-", "hook-", "warm-raw-", "warm-hook-", "probe"]
            .into_iter()
            .find(|prefix| delivery.starts_with(prefix))
            .unwrap_or("other");
        *by_kind.entry(kind).or_default() += 1;
    }
    report.objects = by_kind;
    Ok(report)
}

/// The hook side: POSTs of the fixture.
struct Hook {
    http: reqwest::Client,
    url: String,
}

impl Hook {
    /// POSTs the fixture as delivery `delivery`: `Ok(Ok("202 <redeployment>"))`
    /// when accepted, `Ok(Err(why))` for any other answer.
    async fn post(&self, delivery: &str) -> anyhow::Result<Result<String, String>> {
        let response = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .body(BODY)
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        if status != 202 {
            return Ok(Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let name = answer["redeployment"].as_str().unwrap_or_default();
        Ok(Ok(format!("202 {name}")))
    }

    async fn round(&self, name: &str, n: usize, concurrency: usize) -> Round {
        timed(name, n, concurrency, |i| {
            let delivery = format!("{name}-{i}");
            async move {
                match self.post(&delivery).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(answer)) => Err(answer),
                    Err(error) => Err(format!("request failed: {error:#}")),
                }
            }
        })
        .await
    }
}

/// The raw side: a plain client creating the Redeployments the hook would.
struct Raw {
    api: Api<Redeployment>,
    app: App,
    services: Vec<Service>,
}

impl Raw {
    async fn new(client: &Client, namespace: &str) -> anyhow::Result<Raw> {
        let app = Api::<App>::namespaced(client.clone(), namespace).get(APP).await?;
        let services = Api::<Service>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items;
        Ok(Raw { api: Api::namespaced(client.clone(), namespace), app, services })
    }

    /// The Redeployment the handler builds for the fixture as delivery `delivery`.
    fn redeployment(&self, delivery: &str) -> anyhow::Result<Redeployment> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-github-event", HeaderValue::from_static("push"));
        headers.insert("x-github-delivery", HeaderValue::from_str(delivery)?);
        let event = providers::parse(&headers, BODY)?;
        let modifiers = Modifiers::parse(None, None)?;
        let plan = plan::plan(&event, &self.app, &self.services, None, &modifiers)?;
        anyhow::ensure!(!plan.is_empty(), "the fixture plans nothing: {:?}", plan.reason);
        Ok(record::redeployment(&self.app, &event, None, &modifiers, &plan, Timestamp::now()))
    }

    /// Fails unless the handler stored what [`Raw::redeployment`] builds.
    fn check_same_as(&self, stored: &Redeployment, delivery: &str) -> anyhow::Result<()> {
        let built = self.redeployment(delivery)?;
        let (b, s) = (&built.metadata, &stored.metadata);
        let same_meta = (&b.name, &b.labels, &b.annotations, &b.owner_references)
            == (&s.name, &s.labels, &s.annotations, &s.owner_references);
        // Equal but for the moment each was made.
        let comparable = |r: &Redeployment| {
            let mut spec = r.spec.clone();
            spec.trigger.received_at = None;
            serde_json::to_value(spec)
        };
        let same_spec = comparable(&built)? == comparable(stored)?;
        anyhow::ensure!(
            same_meta && same_spec,
            "the raw side builds {built:?}\nbut the hook stored {stored:?}",
            built = (b, &built.spec),
            stored = (s, &stored.spec)
        );
        Ok(())
    }

    async fn round(&self, name: &str, n: usize, concurrency: usize) -> anyhow::Result<Round> {
        // Built before the clock starts: only the creates are timed.
        let objects = (0..n).map(|i| self.redeployment(&format!("{name}-{i}"))).collect::<anyhow::Result<Vec<_>>>()?;
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let (objects, params) = (&objects, &params);
        Ok(timed(name, n, concurrency, |i| async move {
            self.api.create(params, &objects[i]).await.map(drop).map_err(|error| error.to_string())
        })
        .await)
    }
}

/// One round: `n` requests, `concurrency` at a time.
struct Round {
    name: String,
    wall: Duration,
    /// Latency of each successful request.
    latencies: Vec<Duration>,
    /// Failed requests by kind: count and one example.
    errors: BTreeMap<String, (usize, String)>,
}

impl Round {
    fn ok(&self) -> usize {
        self.latencies.len()
    }

    fn failed(&self) -> usize {
        self.errors.values().map(|e| e.0).sum()
    }
}

async fn timed<F, Fut>(name: &str, n: usize, concurrency: usize, request: F) -> Round
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    let results: Vec<(Duration, Result<(), String>)> = futures::stream::iter(0..n)
        .map(|i| {
            let request = request(i);
            async move {
                let start = Instant::now();
                let result = request.await;
                (start.elapsed(), result)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let mut round = Round { name: name.to_string(), wall, latencies: Vec::with_capacity(n), errors: BTreeMap::new() };
    for (latency, result) in results {
        match result {
            Ok(()) => round.latencies.push(latency),
            Err(error) => {
                let kind = error.split(':').next().unwrap_or_default().to_string();
                round.errors.entry(kind).or_insert((0, error)).0 += 1;
            }
        }
    }
    round
}

/// When each delivery's Redeployment was seen finished, and how it ended.
type Finished = std::sync::Arc<std::sync::Mutex<BTreeMap<String, (Instant, redeploy_operator::api::Phase)>>>;

/// How long a round's Redeployments may take to finish after the round.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A round's Redeployments seen finished, and the last one after how long from the round's start.
struct Drained {
    finished: usize,
    after: Option<Duration>,
}

#[derive(Default)]
struct Side {
    rounds: Vec<Round>,
    drained: Vec<Drained>,
}

struct Summary {
    requests: usize,
    errors: usize,
    rate: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Side {
    fn summary(&self) -> Summary {
        let ok: usize = self.rounds.iter().map(Round::ok).sum();
        let errors: usize = self.rounds.iter().map(Round::failed).sum();
        let wall: f64 = self.rounds.iter().map(|r| r.wall.as_secs_f64()).sum();
        let mut ms: Vec<f64> = self.rounds.iter().flat_map(|r| &r.latencies).map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let q = |q: f64| if ms.is_empty() { f64::NAN } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
        Summary {
            requests: ok + errors,
            errors,
            rate: ok as f64 / wall,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

struct LoadAverage {
    when: String,
    value: String,
}

impl LoadAverage {
    fn now(when: &str) -> LoadAverage {
        LoadAverage { when: when.to_string(), value: support::load_average() }
    }
}

struct Report {
    settings: Settings,
    raw: Side,
    hook: Side,
    /// Successful and failed warm-up requests, raw then hook.
    warm_up: [(usize, usize); 2],
    load: Vec<LoadAverage>,
    /// Redeployments in the namespace at the end, by delivery id prefix.
    objects: BTreeMap<&'static str, usize>,
    /// Redeployments seen finished, by phase.
    phases: BTreeMap<String, usize>,
    /// A few Redeployments that finished neither Succeeded nor Superseded, and their message.
    unsuccessful: BTreeMap<String, String>,
}

impl Report {
    fn new(settings: Settings) -> Report {
        Report {
            settings,
            raw: Side::default(),
            hook: Side::default(),
            warm_up: [(0, 0); 2],
            load: Vec::new(),
            objects: BTreeMap::new(),
            phases: BTreeMap::new(),
            unsuccessful: BTreeMap::new(),
        }
    }

    /// Objects the run should have stored: one per accepted hook (the probe
    /// included) and one per successful create.
    fn expected_objects(&self) -> BTreeMap<&'static str, usize> {
        let ok = |side: &Side| side.rounds.iter().map(Round::ok).sum::<usize>();
        BTreeMap::from([
            ("hook-", ok(&self.hook)),
            ("probe", 1),
            ("raw-", ok(&self.raw)),
            ("warm-hook-", self.warm_up[1].0),
            ("warm-raw-", self.warm_up[0].0),
        ])
    }

    /// Failed requests and objects that do not add up (the exit status); a missed target is not one.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (side, name) in [(&self.raw, "raw"), (&self.hook, "hook")] {
            for round in &side.rounds {
                for (kind, (count, example)) in &round.errors {
                    problems.push(format!("{name} round {}: {count} x {kind} (e.g. {example})", round.name));
                }
            }
        }
        for (side, (_, failed)) in ["raw", "hook"].iter().zip(self.warm_up) {
            if failed > 0 {
                problems.push(format!("{failed} {side} warm-up requests failed"));
            }
        }
        let mut objects = self.objects.clone();
        objects.retain(|_, count| *count > 0);
        let mut expected = self.expected_objects();
        expected.retain(|_, count| *count > 0);
        if objects != expected {
            problems.push(format!("Redeployments stored {objects:?}, expected {expected:?}"));
        }
        problems
    }

    fn print(&self) {
        let s = &self.settings;
        let (raw, hook) = (self.raw.summary(), self.hook.summary());
        println!();
        println!(
            "hook_load{}: {FIXTURE} ({} bytes), N={} per round, C={}, {} rounds per side alternating raw/hook, \
             after {} untimed warm-up requests per side; hooks POSTed to the {}",
            if s.smoke { " (smoke run; `cargo bench --bench hook_load` measures)" } else { "" },
            BODY.len(),
            s.n,
            s.concurrency,
            s.rounds,
            s.warm_up(),
            match s.replica {
                Replica::Follower => "follower replica (it reconciles nothing; LOAD_REPLICA=leader: the leader)",
                Replica::Leader => "leader replica (it also runs every reconciler)",
            }
        );
        println!();
        println!(
            "{:<6} {:>9} {:>7} {:>11} {:>8} {:>8} {:>8} {:>8}",
            "side", "requests", "errors", "rate req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (name, x) in [("raw", &raw), ("hook", &hook)] {
            println!(
                "{name:<6} {:>9} {:>7} {:>11.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                x.requests, x.errors, x.rate, x.p50, x.p90, x.p99, x.max
            );
        }
        println!();
        let rounds: Vec<String> = self
            .raw
            .rounds
            .iter()
            .zip(&self.hook.rounds)
            .flat_map(|(r, h)| [r, h])
            .map(|r| format!("{} {:.0}/s", r.name, r.ok() as f64 / r.wall.as_secs_f64()))
            .collect();
        println!("per round: {}", rounds.join(", "));
        let ends: Vec<String> = self
            .raw
            .rounds
            .iter()
            .zip(&self.raw.drained)
            .zip(self.hook.rounds.iter().zip(&self.hook.drained))
            .flat_map(|(r, h)| [r, h])
            .map(|(round, drained)| match drained.after {
                Some(after) if drained.finished == round.ok() => format!(
                    "{} {}/{} in {:.1} s ({:.0}/s)",
                    round.name,
                    drained.finished,
                    round.ok(),
                    after.as_secs_f64(),
                    drained.finished as f64 / after.as_secs_f64()
                ),
                _ => format!("{} {}/{} finished within {DRAIN_TIMEOUT:?}", round.name, drained.finished, round.ok()),
            })
            .collect();
        println!(
            "end to end, from a round's start until its last Redeployment was seen finished (each round waits for \
             the previous one's): {}",
            ends.join(", ")
        );
        println!("Redeployments seen finished, by phase: {:?}", self.phases);
        for (name, said) in &self.unsuccessful {
            println!("  for example {name}: {said}");
        }
        let verdict = |pass: bool| if pass { "PASS" } else { "FAIL" };
        let rate_ratio = hook.rate / raw.rate;
        let p99_ratio = hook.p99 / raw.p99;
        println!(
            "hook rate / raw rate  {rate_ratio:>5.2}  {} (target >= {MIN_RATE_RATIO:.2})",
            verdict(rate_ratio >= MIN_RATE_RATIO)
        );
        println!(
            "hook p99 / raw p99    {p99_ratio:>5.2}  {} (target < {MAX_P99_RATIO:.2})",
            verdict(p99_ratio < MAX_P99_RATIO)
        );
        let total: usize = self.objects.values().sum();
        let expected = self.expected_objects();
        println!(
            "Redeployments stored: {total} = {} accepted hooks + {} raw creates + {} warm-up + 1 probe \
             (expected {}): {}",
            self.objects.get("hook-").unwrap_or(&0),
            self.objects.get("raw-").unwrap_or(&0),
            self.objects.get("warm-hook-").unwrap_or(&0) + self.objects.get("warm-raw-").unwrap_or(&0),
            expected.values().sum::<usize>(),
            if self.objects.iter().filter(|e| *e.1 > 0).eq(expected.iter().filter(|e| *e.1 > 0)) {
                "each 202 and each create stored exactly one object"
            } else {
                "MISMATCH"
            }
        );
        let load: Vec<String> = self.load.iter().map(|l| format!("{}: {}", l.when, l.value)).collect();
        println!("load average (1/5/15 min): {}", load.join("; "));
    }
}
