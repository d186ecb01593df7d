//! Faults under load: a stream of signed hook calls (GitHub pushes building
//! Git-built Services, generic-signed calls restarting image-based ones) at a
//! bounded rate against the `redeploy-operator` binary, while
//!
//! 1. the operator is SIGKILLed at a random moment (seeded), right after a
//!    new build Job appears and right after a workload is patched (before
//!    it can record either), and restarted each time;
//! 2. kube-apiserver is stopped and started again;
//! 3. etcd is stopped and started again;
//! 4. of two replicas with leader election, the leader is SIGKILLed.
//!
//! After each scenario, from the callers' answers and the API server's
//! objects (never the operator's own view): every `202` names a Redeployment
//! that exists and has finished; no Redeployment got two build Jobs or rolled
//! a workload out twice (a watch on Jobs and Deployments counts each new Job
//! and each new Deployment generation per Redeployment); no call hung (every
//! call has a client timeout) or got a `500`; calls made while the API
//! server or etcd was away got `503`; and the same operator process accepts
//! calls again afterwards. Each scenario prints one `faults:` line.
//!
//! `FAULTS_SECONDS` (seconds of load per scenario, default 8), `FAULTS_RATE`
//! (calls per second, default 10) and `FAULTS_SEED` (default: from the clock;
//! printed) tune it; `FAULTS_SCENARIOS` (say `stopetcd,killleader`) runs
//! only those. The test stops the API server and etcd, so it has a
//! control plane of its own.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use redeploy_operator::{
    api::{Phase, Redeployment},
    workload::REDEPLOYMENT_ANNOTATION,
};
use redeploy_testenv::ControlPlane;
use serde_json::json;
use support::OperatorProcess;

/// How long a caller waits for an answer: GitHub gives up on a webhook after 10 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the API server or etcd stays away.
const OUTAGE: Duration = Duration::from_secs(5);
/// How long every accepted call has to finish once the faults are over.
const DRAIN: Duration = Duration::from_secs(180);
const APPS: [&str; 2] = ["shop", "blog"];
const GITHUB_KEY: &str = "faults-github-key";
const GENERIC_KEY: &str = "faults-generic-key";
/// What the stand-in builder reports for every build.
const BUILT: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const LEASE: &str = "redeploy-operator";

fn objects(app: &str) -> String {
    let deployment = |name: String| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": "registry.example.com/initial:1"}]}}},
        })
    };
    let repository = format!("registry.example.com/{app}-web");
    let web = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": format!("{app}-web")},
        "spec": {"app": app, "target": {"name": format!("{app}-web")},
            "git": {"repository": "https://github.com/Codertocat/Hello-World", "branch": "master"},
            "build": {"image": repository,
                "template": support::stand_in_builder(&support::build_report(&repository, BUILT))}},
    });
    let worker = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service", "metadata": {"name": format!("{app}-worker")},
        "spec": {"app": app, "target": {"name": format!("{app}-worker")},
            "image": {"reference": "registry.example.com/worker:1"}},
    });
    let keys = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{app}-keys")},
        "stringData": {"github": GITHUB_KEY, "generic": GENERIC_KEY},
    });
    let secret = |key: &str| json!({"name": format!("{app}-keys"), "key": key});
    let app_object = json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "App", "metadata": {"name": app},
        // Every Redeployment of the run is kept, so every one can be checked.
        "spec": {"history": {"limit": 1000},
            "hook": {"signatureSecrets": {"github": secret("github"), "generic": secret("generic")}}},
    });
    [keys, app_object, web, worker, deployment(format!("{app}-web")), deployment(format!("{app}-worker"))]
        .iter()
        .map(|o| format!("---\n{o}\n"))
        .collect()
}

/// How one call ended, as its caller saw it.
#[derive(Clone, Debug)]
enum Answer {
    Status {
        code: u16,
        redeployment: Option<String>,
    },
    /// No connection, or one cut by a SIGKILL of the replica called (the
    /// scenarios that kill one; in the others every replica stays up).
    Refused,
    /// No answer within [`ANSWER_TIMEOUT`].
    Hung,
    /// Any other transport failure.
    Broken(String),
}

/// The replicas a caller may call: their hook URLs, whether each is up, and
/// how many times each was killed (a call that spans a kill may be cut).
struct Replicas {
    urls: Vec<String>,
    up: Mutex<Vec<bool>>,
    kills: Vec<AtomicU64>,
    next: AtomicU64,
}

impl Replicas {
    fn new(urls: Vec<String>) -> Self {
        let n = urls.len();
        Self { up: Mutex::new(vec![true; n]), kills: (0..n).map(|_| AtomicU64::new(0)).collect(), urls, next: 0.into() }
    }

    /// The next replica that is up, round robin (a load balancer in front of
    /// them skips the ones that are down); the only one when none is up.
    fn pick(&self) -> usize {
        let up = self.up.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let turn = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let live: Vec<usize> = (0..up.len()).filter(|&i| up[i]).collect();
        if live.is_empty() { turn % up.len() } else { live[turn % live.len()] }
    }

    fn is_up(&self, replica: usize) -> bool {
        self.up.lock().unwrap_or_else(|e| e.into_inner())[replica]
    }

    /// Marks `replica` down before it is killed, up once it is ready again.
    fn set_up(&self, replica: usize, up: bool) {
        self.up.lock().unwrap_or_else(|e| e.into_inner())[replica] = up;
        self.kills[replica].fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a call to `replica` that began at `epoch` may have been cut by
    /// a kill: the replica was down, or went down, at some point of the call.
    fn cut(&self, replica: usize, epoch: u64, up_at_start: bool) -> bool {
        !up_at_start || !self.is_up(replica) || self.kills[replica].load(Ordering::SeqCst) != epoch
    }
}

struct Hook {
    app: &'static str,
    path: String,
}

/// The callers: one signed call per tick, alternating pushes and restarts over the Apps.
struct Caller {
    http: reqwest::Client,
    hooks: Vec<Hook>,
    replicas: Arc<Replicas>,
    answers: Mutex<Vec<(Answer, Duration)>>,
    sequence: AtomicU64,
    /// Distinguishes this run's commits and bodies from any earlier run's.
    run: u64,
}

impl Caller {
    /// One call, to `replica` or else the next one up.
    async fn call(&self, replica: Option<usize>) -> Answer {
        let n = self.sequence.fetch_add(1, Ordering::SeqCst);
        let hook = &self.hooks[(n as usize / 2) % self.hooks.len()];
        let replica = replica.unwrap_or_else(|| self.replicas.pick());
        let epoch = self.replicas.kills[replica].load(Ordering::SeqCst);
        let up_at_start = self.replicas.is_up(replica);
        let url = format!("{}{}", self.replicas.urls[replica], hook.path);
        let request = if n.is_multiple_of(2) {
            // A GitHub push of a commit of its own: each builds once.
            let mut push: serde_json::Value =
                serde_json::from_slice(include_bytes!("fixtures/webhooks/github/push-new-branch.json"))
                    .unwrap_or_default();
            let commit = format!("{:016x}{:024x}", self.run, n);
            push["after"] = json!(commit);
            push["head_commit"]["id"] = json!(commit);
            let body = serde_json::to_vec(&push).unwrap_or_default();
            self.http
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("faults-{}-{n}", self.run))
                .header("X-Hub-Signature-256", support::hmac_sha256_signature(GITHUB_KEY.as_bytes(), &body))
                .body(body)
        } else {
            // A signed call without Git information, narrowed to the image-based Service.
            let body = format!("at={}-{n}", self.run);
            self.http
                .post(format!("{url}?services={}-worker", hook.app))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .header("X-Signature-256", support::hmac_sha256_signature(GENERIC_KEY.as_bytes(), body.as_bytes()))
                .body(body)
        };
        let started = Instant::now();
        let answer = match request.send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let redeployment = body["redeployment"].as_str().map(str::to_string);
                Answer::Status { code, redeployment }
            }
            Err(error) if error.is_timeout() => Answer::Hung,
            Err(error) if error.is_connect() || self.replicas.cut(replica, epoch, up_at_start) => Answer::Refused,
            Err(error) => {
                let mut chain = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    chain.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                Answer::Broken(chain)
            }
        };
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).push((answer.clone(), started.elapsed()));
        answer
    }

    /// Calls at `rate` per second for `duration`, each call on a task of its own.
    async fn stream(self: Arc<Self>, rate: u64, duration: Duration) {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate as u32);
        let end = Instant::now() + duration;
        let mut calls = Vec::new();
        while Instant::now() < end {
            tick.tick().await;
            let caller = self.clone();
            calls.push(tokio::spawn(async move { caller.call(None).await }));
        }
        for call in calls {
            let _ = call.await;
        }
    }
}

/// What a watch on the namespace saw: build Jobs and new Deployment
/// generations, per Redeployment.
#[derive(Default)]
struct Seen {
    /// Redeployment -> uids of the build Jobs it owns.
    jobs: BTreeMap<String, BTreeSet<String>>,
    /// Deployment -> (generation, Redeployment annotation) last seen.
    deployments: BTreeMap<String, (i64, Option<String>)>,
    /// (Redeployment, Deployment) -> rollouts (new generations) it made.
    rollouts: BTreeMap<(String, String), u32>,
}

/// Wakes whoever waits for the next new build Job or the next rollout: the
/// moments a SIGKILL lands between an action and the status that records it.
#[derive(Default)]
struct Moments {
    job_created: tokio::sync::Notify,
    rolled_out: tokio::sync::Notify,
}

fn watch(
    client: &Client,
    namespace: &str,
    seen: Arc<Mutex<Seen>>,
    moments: Arc<Moments>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let moments_of_jobs = moments.clone();
    let jobs = Api::<Job>::namespaced(client.clone(), namespace);
    let seen_jobs = seen.clone();
    let jobs = tokio::spawn(async move {
        let mut stream = watcher(jobs, watcher::Config::default()).default_backoff().applied_objects().boxed();
        while let Some(event) = stream.next().await {
            let Ok(job) = event else { continue };
            let owner = job.owner_references().iter().find(|o| o.kind == "Redeployment").map(|o| o.name.clone());
            let mut seen = seen_jobs.lock().unwrap_or_else(|e| e.into_inner());
            if seen.jobs.entry(owner.unwrap_or_default()).or_default().insert(job.uid().unwrap_or_default()) {
                moments_of_jobs.job_created.notify_waiters();
            }
        }
    });
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let deployments = tokio::spawn(async move {
        let mut stream = watcher(deployments, watcher::Config::default()).default_backoff().applied_objects().boxed();
        while let Some(event) = stream.next().await {
            let Ok(deployment) = event else { continue };
            let name = deployment.name_any();
            let generation = deployment.metadata.generation.unwrap_or_default();
            let annotation = deployment
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(REDEPLOYMENT_ANNOTATION).cloned());
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let before = seen.deployments.insert(name.clone(), (generation, annotation.clone()));
            if let Some((before, _)) = before
                && generation > before
            {
                *seen.rollouts.entry((annotation.unwrap_or_default(), name)).or_default() += 1;
                moments.rolled_out.notify_waiters();
            }
        }
    });
    vec![jobs, deployments]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillOperator,
    StopApiServer,
    StopEtcd,
    KillLeader,
}

struct Stand {
    control_plane: ControlPlane,
    client: Client,
    log: PathBuf,
    seed: u64,
    rate: u64,
    seconds: u64,
}

impl Stand {
    async fn operators(&self, namespace: &str, count: usize) -> anyhow::Result<(Vec<OperatorProcess>, Vec<u16>)> {
        let mut operators = Vec::new();
        let mut ports = Vec::new();
        for i in 0..count {
            let port = free_port()?;
            ports.push(port);
            operators.push(self.operator(namespace, count, i, port).await?);
        }
        Ok((operators, ports))
    }

    async fn operator(&self, namespace: &str, count: usize, i: usize, port: u16) -> anyhow::Result<OperatorProcess> {
        let identity = format!("replica-{i}");
        let mut args = vec![];
        if count > 1 {
            args = vec!["--leader-election", "--lease-namespace", namespace, "--identity", &identity];
        }
        OperatorProcess::start_at(&self.control_plane, &self.log, &args, port, free_port()?).await
    }

    async fn run(&self, fault: Fault) -> anyhow::Result<()> {
        let name = format!("{fault:?}").to_lowercase();
        let namespace = self.control_plane.namespace(&self.client, &format!("faults-{name}")).await?;
        for app in APPS {
            support::apply_yaml(&self.client, &namespace, &objects(app)).await?;
        }
        let replicas_count = if fault == Fault::KillLeader { 2 } else { 1 };
        let (mut operators, ports) = self.operators(&namespace, replicas_count).await?;
        let pids: Vec<u32> = operators.iter().map(|o| o.pid()).collect();
        let mut hooks = Vec::new();
        let secrets = Api::<Secret>::namespaced(self.client.clone(), &namespace);
        for app in APPS {
            let secret = support::eventually(&format!("the hook Secret of {app}"), || async {
                Ok(secrets.get_opt(&format!("{app}-hook")).await?.filter(|s| s.data.is_some()))
            })
            .await?;
            let path = format!(
                "/stacks/redeploy/{}/{}",
                support::secret_value(&secret, "id")?,
                support::secret_value(&secret, "token")?
            );
            hooks.push(Hook { app, path });
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let moments = Arc::new(Moments::default());
        let watches = watch(&self.client, &namespace, seen.clone(), moments.clone());
        let replicas = Arc::new(Replicas::new(operators.iter().map(|o| o.hook.clone()).collect()));
        let caller = Arc::new(Caller {
            http: reqwest::Client::builder().timeout(ANSWER_TIMEOUT).pool_max_idle_per_host(0).build()?,
            hooks,
            replicas: replicas.clone(),
            answers: Mutex::new(Vec::new()),
            sequence: 0.into(),
            run: self.seed ^ ((fault as u64) << 56),
        });
        // Each Service is known to the hook before the stream starts.
        for (i, _) in ports.iter().enumerate() {
            let hook = &caller.hooks[0];
            let probe = format!("{}{}?services=__probe__", replicas.urls[i], hook.path);
            let http = caller.http.clone();
            support::eventually("the hook to know the Apps", || {
                let (http, probe) = (http.clone(), probe.clone());
                async move {
                    let status = http
                        .post(&probe)
                        .header("X-Signature-256", support::hmac_sha256_signature(GENERIC_KEY.as_bytes(), b""))
                        .send()
                        .await?;
                    Ok((status.status() == 422).then_some(()))
                }
            })
            .await?;
        }

        let load = Duration::from_secs(self.seconds);
        let stream = tokio::spawn(caller.clone().stream(self.rate, load));
        let mut rng = StdRng::seed_from_u64(self.seed ^ fault as u64);
        let started = Instant::now();
        let at = |fraction: f64| started + load.mul_f64(fraction);
        let mut outage_503 = 0;
        match fault {
            Fault::KillOperator => {
                // At a random moment, then as soon as the watch sees a new
                // build Job (before the operator records it in the status),
                // then as soon as it sees a rollout (likewise).
                for kill in 0..3 {
                    let what = match kill {
                        0 => {
                            tokio::time::sleep_until(at(rng.random_range(0.1..0.4)).into()).await;
                            "at random"
                        }
                        1 => {
                            let next = moments.job_created.notified();
                            let _ = tokio::time::timeout_at(at(1.0).into(), next).await;
                            "on a new build Job"
                        }
                        _ => {
                            let next = moments.rolled_out.notified();
                            let _ = tokio::time::timeout_at(at(1.0).into(), next).await;
                            "on a new rollout"
                        }
                    };
                    replicas.set_up(0, false);
                    operators.remove(0).kill();
                    println!("faults: {name}: SIGKILL {what} at {:.2} s", started.elapsed().as_secs_f64());
                    operators.insert(0, self.operator(&namespace, 1, 0, ports[0]).await?);
                    replicas.set_up(0, true);
                }
            }
            Fault::StopApiServer | Fault::StopEtcd => {
                tokio::time::sleep_until(at(0.3).into()).await;
                let before = count_503(&caller);
                if fault == Fault::StopApiServer {
                    self.control_plane.stop_apiserver();
                } else {
                    self.control_plane.stop_etcd();
                }
                tokio::time::sleep(OUTAGE).await;
                outage_503 = count_503(&caller) - before;
                if fault == Fault::StopApiServer {
                    self.control_plane.start_apiserver()?;
                } else {
                    self.control_plane.start_etcd()?;
                }
                self.control_plane.wait_ready(&self.client, Duration::from_secs(120)).await?;
            }
            Fault::KillLeader => {
                tokio::time::sleep_until(at(rng.random_range(0.2..0.5)).into()).await;
                let lease = Api::<Lease>::namespaced(self.client.clone(), &namespace).get(LEASE).await?;
                let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                let leader: usize = holder.trim_start_matches("replica-").parse()?;
                replicas.set_up(leader, false);
                operators.remove(leader).kill();
                println!("faults: {name}: SIGKILL of the leader {holder} at {:.2} s", started.elapsed().as_secs_f64());
                operators.insert(leader, self.operator(&namespace, 2, leader, ports[leader]).await?);
                replicas.set_up(leader, true);
            }
        }
        stream.await?;

        // The operator recovers by itself: a new call is accepted by every
        // replica (the same processes where none was killed).
        for replica in 0..replicas.urls.len() {
            support::eventually("a new call to be accepted", || async {
                Ok(matches!(caller.call(Some(replica)).await, Answer::Status { code: 202, .. }).then_some(()))
            })
            .await?;
        }
        let still_running = operators.iter_mut().all(|o| o.is_running());
        let same_processes = operators.iter().map(|o| o.pid()).collect::<Vec<_>>() == pids;

        // Every 202 ends in one finished Redeployment: read from the API server.
        let answers = caller.answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let accepted: BTreeSet<String> = answers
            .iter()
            .filter_map(|(a, _)| match a {
                Answer::Status { code: 202, redeployment } => redeployment.clone(),
                _ => None,
            })
            .collect();
        let api = Api::<Redeployment>::namespaced(self.client.clone(), &namespace);
        let deadline = Instant::now() + DRAIN;
        let stored = loop {
            let list = api.list(&ListParams::default()).await?.items;
            let finished = |name: &String| {
                list.iter().any(|r| {
                    r.name_any() == *name && r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished())
                })
            };
            if accepted.iter().all(finished) || Instant::now() > deadline {
                break list;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        for watch in watches {
            watch.abort();
        }
        let stored_names: BTreeSet<String> = stored.iter().map(|r| r.name_any()).collect();
        let lost: Vec<&String> = accepted.iter().filter(|n| !stored_names.contains(*n)).collect();
        let stuck: Vec<String> = stored
            .iter()
            .filter(|r| accepted.contains(&r.name_any()))
            .filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
            .map(|r| format!("{} ({:?})", r.name_any(), r.status.as_ref().and_then(|s| s.phase)))
            .collect();
        // Stored although no caller heard 202 for it (a 503 says nothing was done).
        let unanswered: Vec<&String> = stored_names.iter().filter(|n| !accepted.contains(*n)).collect();
        let (jobs, rollouts) = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            (seen.jobs.clone(), seen.rollouts.clone())
        };
        let doubled_builds: Vec<&String> =
            jobs.iter().filter(|(_, uids)| uids.len() > 1).map(|(name, _)| name).collect();
        let doubled_rollouts: Vec<&(String, String)> =
            rollouts.iter().filter(|(_, count)| **count > 1).map(|(key, _)| key).collect();

        let count = |code: u16| {
            answers.iter().filter(|(a, _)| matches!(a, Answer::Status { code: c, .. } if *c == code)).count()
        };
        let refused = answers.iter().filter(|(a, _)| matches!(a, Answer::Refused)).count();
        let hung = answers.iter().filter(|(a, _)| matches!(a, Answer::Hung)).count();
        let other: Vec<String> = answers
            .iter()
            .filter_map(|(a, _)| match a {
                Answer::Status { code: 200 | 202 | 503, .. } | Answer::Refused | Answer::Hung => None,
                Answer::Status { code, .. } => Some(format!("HTTP {code}")),
                Answer::Broken(error) => Some(error.clone()),
            })
            .collect();
        let max_answer = answers.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let finished =
            |phase: Phase| stored.iter().filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(phase)).count();
        println!(
            "faults: {name}: seed={} sent={} 202={} 200={} 503={} refused={} other={} hung={} lost={} stuck={} \
             doubled={} unanswered={} max_answer={}ms builds={} rollouts={} succeeded={} failed={} superseded={} \
             503_during_outage={outage_503}",
            self.seed,
            answers.len(),
            accepted.len(),
            count(200),
            count(503),
            refused,
            other.len(),
            hung,
            lost.len(),
            stuck.len(),
            doubled_builds.len() + doubled_rollouts.len(),
            unanswered.len(),
            max_answer.as_millis(),
            jobs.values().map(BTreeSet::len).sum::<usize>(),
            rollouts.values().sum::<u32>(),
            finished(Phase::Succeeded),
            finished(Phase::Failed),
            finished(Phase::Superseded),
        );
        let failed: Vec<String> = stored
            .iter()
            .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed))
            .map(|r| format!("{}: {:?}", r.name_any(), r.status.as_ref().and_then(|s| s.message.clone())))
            .collect();
        if !failed.is_empty() {
            println!("faults: {name}: failed Redeployments: {failed:?}");
        }
        if !stuck.is_empty() {
            for r in stored.iter().filter(|r| !r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished()))
            {
                println!("faults: {name}: unfinished {}: {}", r.name_any(), serde_json::to_string(&r.status)?);
            }
            let deployments = Api::<Deployment>::namespaced(self.client.clone(), &namespace);
            for d in deployments.list(&ListParams::default()).await?.items {
                let template = d.spec.template.metadata.as_ref().and_then(|m| m.annotations.clone());
                println!(
                    "faults: {name}: Deployment {} generation {:?} template {:?} status {}",
                    d.name_any(),
                    d.metadata.generation,
                    template,
                    serde_json::to_string(&d.status)?
                );
            }
        }
        anyhow::ensure!(count(500) == 0 && hung == 0 && other.is_empty(), "{name}: calls hung or failed: {other:?}");
        anyhow::ensure!(lost.is_empty(), "{name}: accepted but never stored: {lost:?}");
        anyhow::ensure!(stuck.is_empty(), "{name}: accepted but not finished after {DRAIN:?}: {stuck:?}");
        anyhow::ensure!(doubled_builds.is_empty(), "{name}: two build Jobs for one Redeployment: {doubled_builds:?}");
        anyhow::ensure!(doubled_rollouts.is_empty(), "{name}: a workload rolled out twice: {doubled_rollouts:?}");
        anyhow::ensure!(still_running, "{name}: an operator process exited");
        if matches!(fault, Fault::StopApiServer | Fault::StopEtcd) {
            anyhow::ensure!(same_processes, "{name}: the operator was restarted");
            anyhow::ensure!(outage_503 > 0, "{name}: no call was answered 503 while it was away");
        }
        Ok(())
    }
}

fn count_503(caller: &Caller) -> usize {
    let answers = caller.answers.lock().unwrap_or_else(|e| e.into_inner());
    answers.iter().filter(|(a, _)| matches!(a, Answer::Status { code: 503, .. })).count()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_accepted_is_lost_or_doubled_and_no_call_hangs_through_faults() -> anyhow::Result<()> {
    let seed = match std::env::var("FAULTS_SEED") {
        Ok(seed) => seed.trim().parse()?,
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64,
    };
    println!("faults: seed {seed} (FAULTS_SEED={seed} repeats the random moments)");
    let control_plane = ControlPlane::start()?;
    let client = control_plane.client().await?;
    redeploy_operator::install::apply_crds(&client, Duration::from_secs(60)).await?;
    let log = control_plane.dir().join("operator-faults.log");
    let stand = Stand {
        rate: support::env_count("FAULTS_RATE", 10)? as u64,
        seconds: support::env_count("FAULTS_SECONDS", 8)? as u64,
        control_plane,
        client,
        log,
        seed,
    };
    let mut failures = Vec::new();
    let only = std::env::var("FAULTS_SCENARIOS").unwrap_or_default().to_lowercase();
    for fault in [Fault::KillOperator, Fault::StopApiServer, Fault::StopEtcd, Fault::KillLeader] {
        if !only.is_empty() && !only.split(',').any(|name| name.trim() == format!("{fault:?}").to_lowercase()) {
            continue;
        }
        if let Err(error) = stand.run(fault).await {
            println!("faults: {fault:?}: FAILED: {error:#}");
            failures.push(format!("{fault:?}: {error:#}"));
        }
    }
    if !failures.is_empty() {
        let log = std::fs::read_to_string(&stand.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("last lines of the operator log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
