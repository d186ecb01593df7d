//! Shared set-up of the integration tests: one real control plane per test
//! binary (see the `redeploy-testenv` crate), the CRDs installed once, and a
//! namespace of its own for every test. The benches that run on a control
//! plane (`hook_load`, `latency`, `scale`) include it too.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{Container, PodSpec, PodTemplateSpec, Secret},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use redeploy_operator::api::{
    App, DeploymentProfile, DeploymentProfileSpec, ImageSource, Service, ServiceSpec, WorkloadTarget,
};
use redeploy_operator::install::{FIELD_MANAGER, apply_crds};
use redeploy_testenv::ControlPlane;
use tokio::sync::OnceCell;

pub mod chart;
pub mod web_app;

/// `sha256=<hex HMAC-SHA256 of body>`: GitHub's `X-Hub-Signature-256`, Gitea's and the generic
/// `X-Signature-256` header values.
pub fn hmac_sha256_signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The shared control plane, a fresh admin client and a new namespace.
pub async fn setup(prefix: &str) -> anyhow::Result<(&'static ControlPlane, Client, String)> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.client().await?;
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_try_init(|| async { apply_crds(&client, Duration::from_secs(60)).await }).await?;
    let namespace = control_plane.namespace(&client, prefix).await?;
    Ok((control_plane, client, namespace))
}

/// Applies every document of a YAML stream into `namespace` with server-side
/// apply, as `kubectl apply --server-side` would.
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) -> Result<Vec<DynamicObject>, anyhow::Error> {
    apply(client, namespace, serde_saphyr::from_multiple::<serde_json::Value>(yaml)?).await
}

/// Applies objects (typed ones through [`object`]) into `namespace` with
/// server-side apply.
pub async fn apply(
    client: &Client,
    namespace: &str,
    objects: impl IntoIterator<Item = serde_json::Value>,
) -> Result<Vec<DynamicObject>, anyhow::Error> {
    let mut applied = Vec::new();
    for document in objects {
        if document.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(document)?;
        let types = object.types.clone().ok_or_else(|| anyhow::anyhow!("a document has no apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().ok_or_else(|| anyhow::anyhow!("a {} has no name", types.kind))?;
        let params = PatchParams::apply(FIELD_MANAGER);
        applied.push(api.patch(&name, &params, &Patch::Apply(&object)).await?);
    }
    Ok(applied)
}

// ---- typed test objects ----

/// A typed object as [`apply`] takes it.
pub fn object(typed: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(typed).expect("test objects serialize")
}

/// An App with every setting at its default.
pub fn app(name: &str) -> App {
    App::new(name, serde_json::from_value(serde_json::json!({})).expect("an empty AppSpec is valid"))
}

/// An image-based Service of `app` deploying `reference` into Deployment `name`.
pub fn image_service(name: &str, app: &str, reference: &str) -> Service {
    Service::new(
        name,
        ServiceSpec {
            app: app.into(),
            target: WorkloadTarget { name: name.into(), ..Default::default() },
            image: Some(Box::new(ImageSource {
                reference: reference.into(),
                resolve_digest: false,
                pull_secret_ref: None,
            })),
            ..Default::default()
        },
    )
}

/// A DeploymentProfile of `app` for `services`.
pub fn profile(name: &str, app: &str, services: &[&str]) -> DeploymentProfile {
    DeploymentProfile::new(
        name,
        DeploymentProfileSpec {
            app: app.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..serde_json::from_value(serde_json::json!({"app": app})).expect("a minimal profile spec is valid")
        },
    )
}

/// A one-replica Deployment `name` whose container `name` runs `image`.
pub fn deployment(name: &str, image: &str) -> Deployment {
    deployment_of(name, 1, PodSpec { containers: vec![container(name, image)], ..Default::default() })
}

/// A Deployment `name` of `replicas` pods running `pod`, selected by their label `app=<name>`.
pub fn deployment_of(name: &str, replicas: i32, pod: PodSpec) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A Deployment `name` of no pods whose container `main` runs
/// `registry.example.com/<name>:initial`: a workload the benches' hook calls patch.
pub fn idle_deployment(name: &str) -> Deployment {
    let main = container("main", &format!("registry.example.com/{name}:initial"));
    deployment_of(name, 0, PodSpec { containers: vec![main], ..Default::default() })
}

/// Container `name` running `image`.
pub fn container(name: &str, image: &str) -> Container {
    Container { name: name.into(), image: Some(image.into()), ..Default::default() }
}

/// An operator (hook server, admin server, reconcilers) running against the
/// shared control plane, on a runtime of its own so it outlives each test's.
pub struct Operator {
    /// `http://127.0.0.1:<port>`: the hook server, also its public URL.
    pub hook: String,
    /// `http://127.0.0.1:<port>`: `/healthz`, `/readyz`, `/metrics`.
    pub admin: String,
}

/// Hook calls of one App the shared operator handles at once.
pub const CONCURRENCY_PER_APP: usize = 4;
/// Largest body the shared operator accepts.
pub const BODY_LIMIT: usize = 1024 * 1024;

pub fn operator() -> &'static Operator {
    static OPERATOR: std::sync::OnceLock<Operator> = std::sync::OnceLock::new();
    OPERATOR.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = runtime().and_then(|runtime| {
                runtime.block_on(async {
                    let running = start_operator(ControlPlane::shared(), CONCURRENCY_PER_APP).await?;
                    let _ = sender.send(Ok(Operator {
                        hook: format!("http://{}", running.hook_addr),
                        admin: format!("http://{}", running.admin_addr),
                    }));
                    std::future::pending::<()>().await;
                    anyhow::Ok(())
                })
            });
            if let Err(error) = result {
                let _ = sender.send(Err(error));
            }
        });
        receiver
            .recv()
            .unwrap_or_else(|e| panic!("the operator thread died: {e}"))
            .unwrap_or_else(|e| panic!("starting the operator: {e:#}"))
    })
}

/// An operator on a runtime and thread of its own, as in a process of its own.
pub struct OperatorThread<'scope> {
    pub hook_addr: std::net::SocketAddr,
    /// Sending or dropping it shuts the operator down.
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub thread: std::thread::ScopedJoinHandle<'scope, ()>,
}

impl OperatorThread<'_> {
    /// Shuts the operator down and waits for its thread.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Runs the operator `start` returns on a runtime and thread of its own in
/// `scope`, once it has started; until stopped, as the benches run it.
pub fn operator_thread<'scope, F, Fut>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    start: F,
) -> anyhow::Result<OperatorThread<'scope>>
where
    F: FnOnce() -> Fut + Send + 'scope,
    Fut: std::future::Future<Output = anyhow::Result<redeploy_operator::operator::Running>>,
{
    let (started, addr) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = scope.spawn(move || {
        let result = runtime().and_then(|runtime| {
            runtime.block_on(async {
                let running = start().await?;
                let _ = started.send(Ok(running.hook_addr));
                let _ = stopped.await;
                running.shutdown().await;
                anyhow::Ok(())
            })
        });
        if let Err(error) = result {
            let _ = started.send(Err(error));
        }
    });
    let hook_addr = addr
        .recv()
        .map_err(|_| anyhow::anyhow!("the operator thread died"))
        .and_then(|addr| addr.map_err(|e| e.context("starting the operator")))?;
    Ok(OperatorThread { hook_addr, stop, thread })
}

/// Starts an operator on free loopback ports and waits until it is ready.
pub async fn start_operator(
    control_plane: &ControlPlane,
    concurrent_per_app: usize,
) -> anyhow::Result<redeploy_operator::operator::Running> {
    let client = control_plane.client().await?;
    apply_crds(&client, Duration::from_secs(60)).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    start_operator_with(client, operator_config(port, concurrent_per_app)).await
}

/// How the tests run the operator: on loopback, the hook on `hook_port`.
pub fn operator_config(hook_port: u16, concurrent_per_app: usize) -> redeploy_operator::operator::Config {
    redeploy_operator::operator::Config {
        hook_addr: ([127, 0, 0, 1], hook_port).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
        settings: redeploy_operator::context::Settings {
            public_url: format!("http://127.0.0.1:{hook_port}"),
            // Continuous deploy is tested against a local stand-in for GitHub: it sets its own.
            github_api_url: "http://127.0.0.1:1".into(),
            builder_image: redeploy_operator::build::BUILDKIT_IMAGE.into(),
            insecure_registries: Vec::new(),
        },
        limits: redeploy_operator::hook::handler::Limits {
            body_bytes: BODY_LIMIT,
            body_timeout: Duration::from_secs(10),
            concurrent_per_app,
            bodies_in_flight_bytes: redeploy_operator::hook::handler::DEFAULT_BODIES_IN_FLIGHT_BYTES,
        },
        connections: redeploy_operator::server::ConnectionLimits {
            header_timeout: Duration::from_secs(3),
            ..Default::default()
        },
        leader_election: None,
        scope: Default::default(),
    }
}

/// Starts an operator with `client` and waits until it is ready.
pub async fn start_operator_with(
    client: Client,
    config: redeploy_operator::operator::Config,
) -> anyhow::Result<redeploy_operator::operator::Running> {
    let running = redeploy_operator::operator::start(client, config).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !running.is_ready() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the operator did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(running)
}

/// A stand-in builder (`spec.build.template`): pods do not run on the test
/// control plane, so kwok completes the build pod and copies the
/// `testenv.redeploy.dev/termination-message` annotation into its
/// termination message, which is how a real builder reports what it built.
/// `report` is that message, e.g. [`build_report`]; a build that reports
/// nothing is a failed build, so every test states what its build reports.
pub fn stand_in_builder(report: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {"testenv.redeploy.dev/termination-message": report}},
        "spec": {"containers": [{"name": "builder", "image": "registry.example.com/builder:stub"}]},
    })
}

/// What a build of `commit` pushed to `repository` reports: `{"commit","image"}`.
pub fn build_report(repository: &str, commit: &str) -> String {
    serde_json::json!({"commit": commit, "image": format!("{repository}:{commit}")}).to_string()
}

/// The runtime the operator and the load each run on: two worker threads.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Waits for App `app`'s hook Secret; the hook URL it holds.
pub async fn hook_url(client: &Client, namespace: &str, app: &str) -> anyhow::Result<String> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let name = format!("{app}-hook");
    wait_for(&format!("Secret {name}"), Duration::from_secs(120), Duration::from_millis(100), || async {
        let Some(secret) = secrets.get_opt(&name).await? else { return Ok(None) };
        Ok(Some(secret_value(&secret, "url")?))
    })
    .await
}

/// Waits until `check` returns `Some`, polling every 50 ms for up to 90 s
/// (generous: CI machines are small and run the test binaries side by side).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    wait_for(what, Duration::from_secs(90), Duration::from_millis(50), check).await
}

/// Waits until `check` returns `Some`, polling every `every` for up to `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// The value of `key` in a Secret (such as an App's hook Secret: `id`, `token`, `url`).
pub fn secret_value(secret: &Secret, key: &str) -> anyhow::Result<String> {
    let value = secret.data.as_ref().and_then(|data| data.get(key)).ok_or_else(|| {
        anyhow::anyhow!("Secret {} has no key `{key}`", secret.metadata.name.as_deref().unwrap_or_default())
    })?;
    Ok(String::from_utf8(value.0.clone())?)
}

/// Whether a bench binary (`harness = false`) runs as a smoke run: `cargo bench`
/// passes `--bench` and measures; `cargo test --all-targets` runs it without.
pub fn smoke_run() -> bool {
    !std::env::args().any(|arg| arg == "--bench")
}

/// A bench setting from environment variable `name`: a whole number of at
/// least 1, or `default` when the variable is not set.
pub fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => {
            let parsed: usize = value.trim().parse().map_err(|e| anyhow::anyhow!("{name}={value}: {e}"))?;
            anyhow::ensure!(parsed > 0, "{name} must be at least 1");
            Ok(parsed)
        }
        Err(_) => Ok(default),
    }
}

/// The load average over 1, 5 and 15 minutes (`/proc/loadavg`), or an empty string.
pub fn load_average() -> String {
    let value = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    value.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The operator binary as a process of its own, killed (SIGKILL) when dropped.
pub struct OperatorProcess {
    child: Child,
    /// `http://127.0.0.1:<port>`: the hook server, also its public URL.
    pub hook: String,
}

impl OperatorProcess {
    /// Runs `redeploy-operator run` on free loopback ports, with `args` added
    /// and its output appended to `log`, and waits until it is ready.
    pub async fn start(control_plane: &ControlPlane, log: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_at(control_plane, log, args, port, admin).await
    }

    /// As [`start`](Self::start), with the hook on `port` and the admin server
    /// on `admin`: a restarted operator keeps the URL its callers know.
    pub async fn start_at(
        control_plane: &ControlPlane,
        log: &Path,
        args: &[&str],
        port: u16,
        admin: u16,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::options().create(true).append(true).open(log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_redeploy-operator"))
            .args(["run", "--public-url", &format!("http://127.0.0.1:{port}")])
            .args(["--hook-addr", &format!("127.0.0.1:{port}"), "--metrics-addr", &format!("127.0.0.1:{admin}")])
            .args(args)
            .env("KUBECONFIG", control_plane.kubeconfig_path())
            .env("RUST_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()?;
        let process = Self { child, hook: format!("http://127.0.0.1:{port}") };
        eventually("the operator to be ready", || async move {
            let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await.map(|r| r.status() == 200);
            Ok(ready.unwrap_or(false).then_some(()))
        })
        .await?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in KiB: now (`VmRSS`) and its peak so far (`VmHWM`).
pub fn resident_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        Ok(line.split_whitespace().nth(1).unwrap_or_default().parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A GitHub push of `bytes` bytes: the fixture with its commit repeated, as a
/// push of many commits is. Whitespace pads it to the exact size.
pub fn large_push(bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut push: serde_json::Value =
        serde_json::from_slice(include_bytes!("../fixtures/webhooks/github/push-new-branch.json"))?;
    let commit = push["commits"][0].clone();
    let mut size = serde_json::to_vec(&push)?.len() - serde_json::to_vec(&commit)?.len();
    let mut commits = Vec::new();
    for i in 0.. {
        let mut next = commit.clone();
        next["id"] = serde_json::json!(format!("{i:040x}"));
        next["added"] = serde_json::json!([format!("src/file-{i}.rs"), "README.md"]);
        let next_size = serde_json::to_vec(&next)?.len() + 1;
        if size + next_size > bytes {
            break;
        }
        size += next_size;
        commits.push(next);
    }
    push["commits"] = serde_json::Value::Array(commits);
    let mut body = serde_json::to_vec(&push)?;
    anyhow::ensure!(body.len() <= bytes, "the push came out at {} bytes", body.len());
    body.resize(bytes, b' ');
    Ok(body)
}

/// The API server's `apiserver_request_total`, summed by verb, resource
/// (with its subresource) and response code: `"PATCH apps/status 200"`.
pub async fn apiserver_requests(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    apiserver_sums(client, "apiserver_request_total").await
}

/// The seconds the API server spent answering requests
/// (`apiserver_request_duration_seconds_sum`), summed by verb and resource
/// (with its subresource), the code left empty: `"PATCH apps/status "`.
pub async fn apiserver_request_seconds(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    apiserver_sums(client, "apiserver_request_duration_seconds_sum").await
}

async fn apiserver_sums(client: &Client, metric: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    let prefix = format!("{metric}{{");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).map(|i| i + name.len() + 2)?;
            labels[start..].split('"').next()
        };
        let (verb, resource) = (label("verb").unwrap_or_default(), label("resource").unwrap_or_default());
        let resource = match label("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let key = format!("{verb} {resource} {}", label("code").unwrap_or_default());
        *counts.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or_default();
    }
    Ok(counts)
}
