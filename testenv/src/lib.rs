//! A real Kubernetes control plane on loopback: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (one fake Node whose pods
//! go Ready), built from their Go modules by `hack/build-control-plane.sh`;
//! and, for the tests that ask for it, a real node ([`ControlPlane::real_node`]).
//!
//! Tests share one control plane per test binary ([`ControlPlane::shared`])
//! and isolate themselves in namespaces ([`ControlPlane::namespace`]).
//! Processes are stopped when the [`ControlPlane`] is dropped, when the test
//! binary exits, and (through `PR_SET_PDEATHSIG`) when it dies.

mod certs;
mod gitea;
mod node;
mod process;

pub use gitea::{GITEA_ADMIN, Gitea, gitea_binaries};
pub use node::{Images, REAL_NODE_ENV, REAL_NODE_LABEL, REAL_NODE_NAME, REAL_NODE_VALUE, RealNode, node_binaries};

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use process::Process;

/// Name of the one fake Node that kwok manages.
pub const NODE_NAME: &str = "kwok-node-0";

const STAGES: &str = include_str!("../kwok-stages.yaml");
/// The ClusterIP range.
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/16";

pub struct ControlPlane {
    dir: PathBuf,
    // Kept so the directory is removed when the control plane is dropped.
    _temp: Option<tempfile::TempDir>,
    bin: PathBuf,
    kubeconfig: PathBuf,
    api_port: u16,
    etcd_port: u16,
    etcd_peer_port: u16,
    processes: Mutex<Vec<Process>>,
    /// kube-apiserver's flags beyond the ones every control plane here has.
    apiserver_flags: Vec<String>,
    /// Started on first use by [`real_node`](Self::real_node); an error is kept as its message.
    real_node: OnceLock<Result<Option<RealNode>, String>>,
}

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<ControlPlane> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(cp) = SHARED.get() {
                cp.stop();
                if cp._temp.is_some() {
                    let _ = fs::remove_dir_all(&cp.dir);
                }
            }
        }
        SHARED.get_or_init(|| {
            let cp = ControlPlane::start_in(None).unwrap_or_else(|e| panic!("starting the test control plane: {e:#}"));
            // Statics are never dropped: stop the processes and remove the
            // data directory when the test binary exits.
            // SAFETY: registering a plain extern "C" function has no preconditions.
            unsafe { libc::atexit(stop_shared) };
            cp
        })
    }

    /// Starts a control plane of its own, in a temporary directory removed on drop.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_in(None)
    }

    /// Starts a control plane whose state, kubeconfig and logs live in `dir`
    /// (kept after it stops); `None` uses a temporary directory.
    pub fn start_in(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_with(dir, &[])
    }

    /// Starts a control plane of its own, in a temporary directory, whose
    /// kube-apiserver also gets `flags` (for example a feature gate turned off).
    pub fn start_with_apiserver_flags(flags: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(None, flags)
    }

    fn start_with(dir: Option<PathBuf>, apiserver_flags: &[&str]) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let (temp, dir) = match dir {
            Some(dir) => {
                fs::create_dir_all(&dir)?;
                (None, dir)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("redeploy-testenv-").tempdir()?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            _temp: temp,
            bin,
            api_port: free_port()?,
            etcd_port: free_port()?,
            etcd_peer_port: free_port()?,
            processes: Mutex::new(Vec::new()),
            apiserver_flags: apiserver_flags.iter().map(|flag| flag.to_string()).collect(),
            real_node: OnceLock::new(),
        };
        // Run the async parts on a runtime of their own, so this works from
        // plain threads and from inside async tests alike.
        std::thread::scope(|s| {
            s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(cp.boot()))
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("control plane start-up panicked")))
        })?;
        Ok(cp)
    }

    async fn boot(&self) -> anyhow::Result<()> {
        let pki = certs::Pki::generate()?;
        let files = pki.write(&self.dir)?;
        let token = certs::random_token();
        fs::write(self.dir.join("tokens.csv"), format!("{token},admin,admin,\"system:masters\"\n"))?;
        fs::write(&self.kubeconfig, self.kubeconfig_yaml(&pki.ca_pem, &token))?;
        fs::write(self.dir.join("kwok-stages.yaml"), STAGES)?;

        self.start_etcd()?;
        self.start_apiserver()?;
        let client = self.client().await?;
        self.wait_ready(&client, Duration::from_secs(120)).await?;

        let kubeconfig = self.kubeconfig.display().to_string();
        let cm_port = free_port()?.to_string();
        self.spawn(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--authentication-kubeconfig={kubeconfig}"),
                &format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={cm_port}"),
                &format!("--service-account-private-key-file={}", files.service_account_key.display()),
                &format!("--root-ca-file={}", files.ca_cert.display()),
                "--use-service-account-credentials=false",
                "--controllers=*",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
            ],
        )?;
        let scheduler_port = free_port()?.to_string();
        self.spawn(
            "kube-scheduler",
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--authentication-kubeconfig={kubeconfig}"),
                &format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={scheduler_port}"),
            ],
        )?;
        self.create_node(&client).await?;
        self.spawn(
            "kwok",
            &[
                &format!("--kubeconfig={kubeconfig}"),
                &format!("--config={}", self.dir.join("kwok-stages.yaml").display()),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.0.0.1/16",
                // The API server reaches nodes by InternalIP (the real node's is
                // its own); a fake node's is loopback, so that a request for its
                // pods' logs goes nowhere else.
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                "--server-address=127.0.0.1:0",
            ],
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !node_ready(&client).await? {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("node {NODE_NAME} did not become Ready; see {}", self.dir.join("kwok.log").display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts etcd (again, after [`stop_etcd`](Self::stop_etcd)) with the
    /// same flags, ports and data directory.
    pub fn start_etcd(&self) -> anyhow::Result<()> {
        let client_url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        self.spawn(
            "etcd",
            &[
                "--name=default",
                &format!("--data-dir={}", self.dir.join("etcd").display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true",
                "--log-level=warn",
                "--quota-backend-bytes=8589934592",
            ],
        )?;
        // [`stop`](Self::stop) stops processes last-started first: etcd stays last.
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(process) = processes.pop() {
            processes.insert(0, process);
        }
        Ok(())
    }

    /// Stops etcd only (the API server and the rest keep running), for tests
    /// of what clients do while the API server cannot reach its storage.
    pub fn stop_etcd(&self) {
        self.stop_process("etcd");
    }

    /// Starts kube-apiserver (again, after [`stop_apiserver`](Self::stop_apiserver)).
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let extra = self.apiserver_flags.iter().map(String::as_str);
        self.spawn(
            "kube-apiserver",
            &[
                &format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                &format!("--secure-port={}", self.api_port),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                // No DNS: a node's name resolves nowhere.
                "--kubelet-preferred-address-types=InternalIP",
                // The kubernetes Service endpoint reconciler refuses loopback addresses.
                "--endpoint-reconciler-type=none",
                &format!("--tls-cert-file={}", d("apiserver.crt")),
                &format!("--tls-private-key-file={}", d("apiserver.key")),
                &format!("--client-ca-file={}", d("ca.crt")),
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=Node,RBAC",
                &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true",
                &format!("--service-account-issuer=https://127.0.0.1:{}", self.api_port),
                &format!("--service-account-key-file={}", d("service-account.pub")),
                &format!("--service-account-signing-key-file={}", d("service-account.key")),
                "--max-requests-inflight=1000",
                "--max-mutating-requests-inflight=500",
                "--profiling=false",
            ]
            .into_iter()
            .chain(extra)
            .collect::<Vec<_>>(),
        )
    }

    /// Stops kube-apiserver only (etcd and the rest keep running), for tests
    /// of what clients do while the API server is down.
    pub fn stop_apiserver(&self) {
        self.stop_process("kube-apiserver");
    }

    /// SIGTERM (then SIGKILL after a grace period) to the process `name`.
    fn stop_process(&self, name: &str) {
        let stopping = {
            let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
            processes.iter().position(|p| p.name == name).map(|at| processes.remove(at))
        };
        if let Some(process) = stopping {
            process.stop();
        }
    }

    /// Waits for the API server's `/readyz`, failing early with the log of
    /// any process that exited meanwhile.
    pub async fn wait_ready(&self, client: &Client, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            match client.request_text(http_get("/readyz")?).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) if Instant::now() > deadline => bail!("kube-apiserver not ready: /readyz: {body}"),
                Err(e) if Instant::now() > deadline => bail!("kube-apiserver not ready: /readyz: {e}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn check_running(&self) -> anyhow::Result<()> {
        process::check_running(&self.processes, &self.dir, 20)
    }

    fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin.join(name));
        command.args(args).env("HOME", &self.dir).current_dir(&self.dir);
        let process = Process::spawn(name, command, &self.dir.join(format!("{name}.log")))?;
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        Ok(())
    }

    async fn create_node(&self, client: &Client) -> anyhow::Result<()> {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": { "kwok.x-k8s.io/node": "fake" },
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": { "cpu": "1000", "memory": "4Ti", "pods": "100000" },
                "capacity": { "cpu": "1000", "memory": "4Ti", "pods": "100000" },
            },
        }))?;
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await?;
        Ok(())
    }

    fn kubeconfig_yaml(&self, ca_pem: &str, token: &str) -> String {
        let ca = BASE64.encode(ca_pem);
        let server = self.server_url();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: admin\n\
             current-context: testenv\n"
        )
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where state and the processes' logs live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client configuration with admin rights.
    pub async fn config(&self) -> anyhow::Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A client with admin rights.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// A client that authenticates with a bearer `token` (a ServiceAccount's, say)
    /// instead of the administrator's.
    pub async fn client_with_token(&self, token: &str) -> anyhow::Result<Client> {
        let mut config = self.config().await?;
        config.auth_info = kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() };
        Ok(Client::try_from(config)?)
    }

    /// `helm` (built with the control plane) pointed at this control plane.
    pub fn helm(&self) -> Command {
        let mut command = Command::new(self.bin.join("helm"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// `kubectl` pointed at this control plane.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// Creates a namespace of its own for one test and waits until pods can be
    /// created in it (its `default` ServiceAccount exists).
    pub async fn namespace(&self, client: &Client, prefix: &str) -> anyhow::Result<String> {
        let namespace = Namespace {
            metadata: ObjectMeta { generate_name: Some(format!("{prefix}-")), ..Default::default() },
            ..Default::default()
        };
        let created = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
        let name = created.metadata.name.context("created namespace has no name")?;
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("namespace {name} got no default ServiceAccount");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(name)
    }

    /// The real node (kubelet, containerd, CNI, kube-proxy, a registry),
    /// started on first use and stopped with the control plane. `Ok(None)`,
    /// with the reason printed, where this machine cannot run one (not root,
    /// no overlayfs...): a test then skips. See [`RealNode`].
    pub fn real_node(&self) -> anyhow::Result<Option<&RealNode>> {
        match self.real_node.get_or_init(|| RealNode::start(self).map_err(|e| format!("{e:#}"))) {
            Ok(node) => Ok(node.as_ref()),
            Err(e) => bail!("starting the real node: {e}"),
        }
    }

    /// Process ids of the running control-plane processes.
    pub fn pids(&self) -> Vec<u32> {
        let processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        processes.iter().map(|p| p.child.id()).collect()
    }

    /// Stops every process (API server last-but-one, etcd last).
    pub fn stop(&self) {
        if let Some(Ok(Some(node))) = self.real_node.get() {
            node.stop();
        }
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(process) = processes.pop() {
            process.stop();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding the control plane binaries: `$REDEPLOY_CONTROL_PLANE_BIN`,
/// or what `hack/build-control-plane.sh` prints (it builds only what is missing).
fn binaries() -> anyhow::Result<PathBuf> {
    node::script_output("REDEPLOY_CONTROL_PLANE_BIN", "build-control-plane.sh", &[])
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn node_ready(client: &Client) -> anyhow::Result<bool> {
    let node = Api::<Node>::all(client.clone()).get(NODE_NAME).await?;
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}
