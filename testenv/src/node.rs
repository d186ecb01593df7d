//! A real node beside the kwok one: containerd, runc, CNI (bridge, host-local,
//! portmap, loopback), kubelet and kube-proxy, plus a Distribution registry
//! holding images built on this machine (`hack/build-images.sh`).
//!
//! The node runs in namespaces of its own, made with `unshare`: a PID
//! namespace (its init is killed with the test binary through
//! `PR_SET_PDEATHSIG`, and the kernel then kills every process in it:
//! containerd, shims, containers, kubelet, kube-proxy), a mount namespace (the
//! overlay and volume mounts and the pods' network namespace mounts vanish
//! with it) and a network namespace (the CNI bridge, the pods' veths and every
//! iptables rule of kube-proxy, portmap and the bridge plugin vanish with it).
//! A veth pair links it to this machine's namespace: the node's address (`.2`
//! of a /30) and the gateway (`.1`, this side), where the test-side servers
//! listen: the registry, a proxy to the loopback-only API server, and
//! whatever a test starts for its pods (a Git server). The node namespace has
//! no default route: pods reach the node, the gateway and each other, nothing
//! else. This side routes the pod CIDR to the node, so a test reaches pods.
//!
//! The Node carries the label and `NoSchedule` taint [`REAL_NODE_LABEL`]`=`
//! [`REAL_NODE_VALUE`], so only pods that ask for it land there
//! ([`RealNode::place_on_node`]).

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::api::{
    core::v1::Node,
    discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams},
};

use crate::{ControlPlane, process::Process};

/// Name of the real Node.
pub const REAL_NODE_NAME: &str = "real-node-0";
/// Label (on the Node) and taint key (`NoSchedule`) of the real node.
pub const REAL_NODE_LABEL: &str = "redeploy.dev/node";
/// Value of [`REAL_NODE_LABEL`] and of its taint.
pub const REAL_NODE_VALUE: &str = "real";
/// Environment: `require` turns "this machine cannot run a real node" into an
/// error, `skip` skips real-node tests even where they could run.
pub const REAL_NODE_ENV: &str = "REDEPLOY_REAL_NODE";

const REGISTRY_PORT: u16 = 5000;
const FIELD_MANAGER: &str = "redeploy-testenv";

/// A running real node; stopped with its [`ControlPlane`].
pub struct RealNode {
    dir: PathBuf,
    bin: PathBuf,
    node_ip: Ipv4Addr,
    gateway: Ipv4Addr,
    pod_cidr: String,
    veth: String,
    cgroup_root: String,
    init_pid: u32,
    images: Images,
    processes: Mutex<Vec<Process>>,
    proxy_stop: Arc<AtomicBool>,
    stopped: AtomicBool,
}

/// References (by digest) of the images pushed to the node's registry.
#[derive(Clone, Debug)]
pub struct Images {
    /// busybox (sh, httpd, wget, ...): what the test apps are built `FROM`.
    pub base: String,
    /// The pod sandbox image the node's containerd is pinned to.
    pub pause: String,
    /// BuildKit (buildkitd, buildctl, buildctl-daemonless.sh), runc and git on
    /// the base image, configured to pull from and push to the node's registry
    /// over plain HTTP.
    pub buildkit: String,
}

impl RealNode {
    /// The node's own address (kubelet's `--node-ip`).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// This side's address on the link to the node: servers a test starts for
    /// its pods (a Git server, say) listen here.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The pods' address range.
    pub fn pod_cidr(&self) -> &str {
        &self.pod_cidr
    }

    /// `host:port` of the registry (plain HTTP) the node pulls from and builds push to.
    pub fn registry(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.gateway)
    }

    /// The images pushed to [`registry`](Self::registry).
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// Where the node's configuration, state and logs live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command run in the node's network namespace (to reach ClusterIPs, say).
    pub fn command_in_node(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--target={}", self.init_pid)).arg("--net").arg("--").arg(program);
        command
    }

    /// Runs a server for the node's pods (a Git server, say; it should listen
    /// on [`gateway_ip`](Self::gateway_ip)), stopped with the node and killed
    /// with the test binary. Its output goes to `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, command: Command) -> anyhow::Result<()> {
        self.push_process(name, command)
    }

    /// Serves the Git repositories under `base` (`<base>/team/web.git`, say)
    /// read-only with `git daemon` on [`gateway_ip`](Self::gateway_ip), where
    /// the node's pods reach it; stopped with the node. Its URL,
    /// `git://<gateway>:<port>`, to which a repository's path under `base` is appended.
    pub fn serve_git(&self, base: &Path) -> anyhow::Result<String> {
        let port = TcpListener::bind((self.gateway, 0))?.local_addr()?.port();
        // git-daemon itself, not `git daemon`: the `git` wrapper would be the
        // child killed with this process, leaving the daemon behind.
        let exec_path = Command::new("git").arg("--exec-path").output().context("running git --exec-path")?;
        let exec_path = String::from_utf8(exec_path.stdout)?.trim().to_string();
        let mut daemon = Command::new(Path::new(&exec_path).join("git-daemon"));
        daemon
            .args(["--reuseaddr", "--export-all"])
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--listen={}", self.gateway))
            .arg(format!("--port={port}"))
            .arg(base);
        self.spawn(&format!("git-daemon-{port}"), daemon)?;
        let address = SocketAddr::from((self.gateway, port));
        self.wait_for("git daemon", Duration::from_secs(20), || Ok(TcpStream::connect(address).is_ok()))?;
        Ok(format!("git://{address}"))
    }

    /// Makes the real node the only one new pods can land on: the kwok node
    /// is cordoned and the real node's taint removed, for test binaries whose
    /// every pod must really run, such as the operator's default build Job,
    /// which carries no toleration. For the rest of the control plane's life.
    pub async fn take_all_pods(&self, client: &Client) -> anyhow::Result<()> {
        let nodes = Api::<Node>::all(client.clone());
        let params = PatchParams::default();
        let cordon = serde_json::json!({ "spec": { "unschedulable": true } });
        nodes.patch(crate::NODE_NAME, &params, &Patch::Merge(&cordon)).await?;
        let untaint = serde_json::json!({ "spec": { "taints": [] } });
        nodes.patch(REAL_NODE_NAME, &params, &Patch::Merge(&untaint)).await?;
        Ok(())
    }

    /// `crane` (built with the node), for reading the registry.
    pub fn crane(&self) -> Command {
        let mut command = Command::new(self.bin.join("crane"));
        command.arg("--insecure");
        command
    }

    /// Places a pod spec (JSON) on the real node: its node selector and a
    /// toleration of its taint.
    pub fn place_on_node(pod_spec: &mut serde_json::Value) {
        pod_spec["nodeSelector"] = serde_json::json!({ REAL_NODE_LABEL: REAL_NODE_VALUE });
        let toleration = serde_json::json!({
            "key": REAL_NODE_LABEL, "operator": "Equal", "value": REAL_NODE_VALUE, "effect": "NoSchedule",
        });
        match pod_spec["tolerations"].as_array_mut() {
            Some(tolerations) => tolerations.push(toleration),
            None => pod_spec["tolerations"] = serde_json::json!([toleration]),
        }
    }

    /// Why no real node is started here, if none is: [`REAL_NODE_ENV`]`=skip`,
    /// or what this machine lacks (root, overlayfs, tools, cgroups).
    pub fn unavailable_reason() -> Option<String> {
        match std::env::var(REAL_NODE_ENV).as_deref() {
            Ok("skip") => Some(format!("{REAL_NODE_ENV}=skip")),
            _ => Self::unavailable(),
        }
    }

    /// Why this machine cannot run a real node, if it cannot.
    fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not running as root (a node needs namespaces, mounts, cgroups and iptables)".into());
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
            return Some("the kernel has no overlay filesystem (containerd's snapshotter)".into());
        }
        for (tool, package) in [
            ("unshare", "util-linux"),
            ("nsenter", "util-linux"),
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("tar", "tar"),
        ] {
            if !on_path(tool) {
                return Some(format!("{tool} is not on PATH (install {package})"));
            }
        }
        if !Path::new("/sys/fs/cgroup/memory").is_dir() && !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
            return Some("no cgroup hierarchy under /sys/fs/cgroup".into());
        }
        None
    }

    /// Starts the node for `cp`; `Ok(None)` (with the reason printed) where
    /// this machine cannot run one.
    pub(crate) fn start(cp: &ControlPlane) -> anyhow::Result<Option<RealNode>> {
        let mode = std::env::var(REAL_NODE_ENV).unwrap_or_default();
        if let Some(reason) = Self::unavailable_reason() {
            if mode == "require" {
                bail!("{REAL_NODE_ENV}=require, but this machine cannot run a real node: {reason}");
            }
            eprintln!("real node unavailable, skipping: {reason}");
            return Ok(None);
        }
        let started = Instant::now();
        let bin = node_binaries()?;
        let layers = script_output("REDEPLOY_NODE_IMAGES", "build-images.sh", &[bin.as_os_str()])?;
        sweep_stale_cgroups();

        let dir = cp.dir().join("real-node");
        fs::create_dir_all(&dir)?;
        let (gateway, node_ip, pod_cidr, veth) = pick_addresses()?;
        // SAFETY: getpid has no preconditions.
        let cgroup_root = format!("redeploy-node-{}", unsafe { libc::getpid() });
        let mut node = RealNode {
            dir,
            bin,
            node_ip,
            gateway,
            pod_cidr,
            veth,
            cgroup_root,
            init_pid: 0,
            images: Images { base: String::new(), pause: String::new(), buildkit: String::new() },
            processes: Mutex::new(Vec::new()),
            proxy_stop: Arc::new(AtomicBool::new(false)),
            stopped: AtomicBool::new(false),
        };
        // From here on, a failure stops what was started.
        match node.boot(cp, &layers) {
            Ok(()) => {
                eprintln!("real node {REAL_NODE_NAME} ready in {:.1}s", started.elapsed().as_secs_f64());
                Ok(Some(node))
            }
            Err(e) => {
                node.stop();
                Err(e)
            }
        }
    }

    fn boot(&mut self, cp: &ControlPlane, layers: &Path) -> anyhow::Result<()> {
        self.start_namespaces()?;
        self.link()?;
        let api = self.start_api_proxy(cp.api_port)?;
        self.start_registry()?;
        self.images = self.push_images(layers)?;
        self.write_configs(cp, api)?;
        self.make_cgroup_root()?;
        self.spawn_in_node(
            "containerd",
            &[
                self.bin.join("containerd").as_os_str(),
                "--config".as_ref(),
                self.dir.join("containerd.toml").as_os_str(),
            ],
        )?;
        self.wait_for("containerd's socket", Duration::from_secs(30), || {
            Ok(self.dir.join("containerd.sock").exists())
        })?;
        let d = |name: &str| self.dir.join(name).display().to_string();
        self.spawn_in_node(
            "kubelet",
            &[
                self.bin.join("kubelet").as_os_str(),
                format!("--config={}", d("kubelet.yaml")).as_ref(),
                format!("--kubeconfig={}", d("kubelet.kubeconfig")).as_ref(),
                format!("--root-dir={}", d("kubelet")).as_ref(),
                format!("--hostname-override={REAL_NODE_NAME}").as_ref(),
                format!("--node-ip={}", self.node_ip).as_ref(),
                format!("--node-labels={REAL_NODE_LABEL}={REAL_NODE_VALUE}").as_ref(),
                "--v=2".as_ref(),
            ],
        )?;
        self.spawn_in_node(
            "kube-proxy",
            &[self.bin.join("kube-proxy").as_os_str(), format!("--config={}", d("kube-proxy.yaml")).as_ref()],
        )?;
        let (node_ip, proxy) = (self.node_ip, api);
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
                    let client = cp.client().await?;
                    publish_api_endpoint(&client, proxy).await?;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !real_node_ready(&client).await? {
                        self.check_running()?;
                        if Instant::now() > deadline {
                            bail!(
                                "node {REAL_NODE_NAME} ({node_ip}) did not become Ready; see {}",
                                self.dir.join("kubelet.log").display()
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    anyhow::Ok(())
                })
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("real node start-up panicked")))
        })
    }

    /// The node's init: a PID, mount and network namespace that die with it.
    fn start_namespaces(&mut self) -> anyhow::Result<()> {
        let ready = self.dir.join("init-ready");
        // /run and /var/lib/cni hold containerd's, runc's and CNI's state:
        // private to the node, gone with it. Nothing else in the machine's
        // directories is written: every other path is configured into `dir`.
        let init = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             mkdir -p /run/netns /run/lock /var/lib/cni\n\
             mount -t tmpfs -o mode=0755 tmpfs /var/lib/cni\n\
             ip link set lo up\n\
             echo 1 > /proc/sys/net/ipv4/ip_forward\n\
             touch '{}'\n\
             set +e\n\
             # PID 1 of the namespace: bash reaps the orphans it inherits (exited shims).\n\
             while :; do sleep 3600 & wait $!; done\n",
            ready.display()
        );
        let mut command = Command::new("unshare");
        command.args(["--pid", "--fork", "--kill-child", "--mount", "--net", "--mount-proc", "--propagation=private"]);
        command.args(["--", "bash", "-c", &init]);
        let process = Process::spawn("node-init", command, &self.dir.join("node-init.log"))?;
        let unshare_pid = process.child.id();
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        self.wait_for("the node's namespaces", Duration::from_secs(20), || Ok(ready.exists()))?;
        let children = fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))?;
        self.init_pid = children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .context("unshare has no child: the node's init is gone")?;
        Ok(())
    }

    /// The veth pair between this namespace and the node's, and the route to its pods.
    fn link(&self) -> anyhow::Result<()> {
        let pid = self.init_pid.to_string();
        let gateway = format!("{}/30", self.gateway);
        let node = format!("{}/30", self.node_ip);
        let node_ip = self.node_ip.to_string();
        run("ip", &["link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", &pid])?;
        run("ip", &["addr", "add", &gateway, "dev", &self.veth])?;
        run("ip", &["link", "set", &self.veth, "up"])?;
        let in_node = |args: &[&str]| {
            let mut all = vec!["--target", &pid, "--net", "--", "ip"];
            all.extend_from_slice(args);
            run("nsenter", &all)
        };
        in_node(&["addr", "add", &node, "dev", "eth0"])?;
        in_node(&["link", "set", "eth0", "up"])?;
        // The node's own connections to ClusterIPs need a route before kube-proxy's
        // DNAT rewrites them; what no rule rewrites dies on this side (no forwarding).
        in_node(&["route", "add", crate::SERVICE_CIDR, "via", &self.gateway.to_string(), "dev", "eth0"])?;
        run("ip", &["route", "add", &self.pod_cidr, "via", &node_ip, "dev", &self.veth])?;
        Ok(())
    }

    /// The API server listens on loopback only: a proxy on the gateway
    /// address lets the node (kubelet, kube-proxy, pods through the
    /// `kubernetes` Service) reach it.
    fn start_api_proxy(&self, api_port: u16) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind((self.gateway, 0))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = self.proxy_stop.clone();
        thread::Builder::new().name("real-node-api-proxy".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", api_port)) {
                            splice(client, server);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
        Ok(addr)
    }

    fn start_registry(&self) -> anyhow::Result<()> {
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
             rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            self.dir.join("registry").display(),
            self.registry()
        );
        fs::write(self.dir.join("registry.yml"), config)?;
        let mut command = Command::new(self.bin.join("registry"));
        command.arg("serve").arg(self.dir.join("registry.yml")).env_clear();
        self.push_process("registry", command)?;
        let registry = self.registry();
        self.wait_for("the registry", Duration::from_secs(20), || Ok(http_status(&registry, "/v2/") == Some(200)))
    }

    /// Assembles the images from the cached layers and pushes them. Layers
    /// and configs carry no timestamps, so the digests are the same every run.
    fn push_images(&self, layers: &Path) -> anyhow::Result<Images> {
        let registry = self.registry();
        let crane = |args: &[&str]| -> anyhow::Result<String> {
            let output = self.crane().args(args).stderr(Stdio::inherit()).output()?;
            if !output.status.success() {
                bail!("crane {} failed ({})", args.join(" "), output.status);
            }
            Ok(String::from_utf8(output.stdout)?.trim().to_string())
        };
        let busybox = layers.join("busybox.tar").display().to_string();
        let buildkit = layers.join("buildkit.tar").display().to_string();
        let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

        let layer = format!("{registry}/redeploy/busybox-layer:latest");
        crane(&["append", "--oci-empty-base", "-f", &busybox, "-t", &layer])?;
        let base = format!("{registry}/redeploy/base:latest");
        let base = crane(&["mutate", "--set-platform=linux/amd64", "-e", path, "--cmd=/bin/sh", "-t", &base, &layer])?;
        let pause = format!("{registry}/redeploy/pause:latest");
        let pause = crane(&[
            "mutate",
            "--set-platform=linux/amd64",
            "-e",
            path,
            "--entrypoint=/bin/sleep",
            "--cmd=infinity",
            "-t",
            &pause,
            &layer,
        ])?;

        // BuildKit pulls `FROM` images from and pushes to this plain-HTTP registry.
        let etc = self.dir.join("buildkit-config/etc/buildkit");
        fs::create_dir_all(&etc)?;
        fs::write(etc.join("buildkitd.toml"), format!("[registry.\"{registry}\"]\n  http = true\n"))?;
        let config_layer = self.dir.join("buildkit-config.tar");
        run(
            "tar",
            &[
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
                &self.dir.join("buildkit-config").display().to_string(),
                "-cf",
                &config_layer.display().to_string(),
                "etc",
            ],
        )?;
        let buildkit_ref = format!("{registry}/redeploy/buildkit:latest");
        crane(&[
            "append",
            "-b",
            &base,
            "-f",
            &buildkit,
            "-f",
            &config_layer.display().to_string(),
            "-t",
            &buildkit_ref,
        ])?;
        let buildkit = crane(&["digest", "--full-ref", &buildkit_ref])?;
        Ok(Images { base, pause, buildkit })
    }

    fn write_configs(&self, cp: &ControlPlane, api: SocketAddr) -> anyhow::Result<()> {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let ca = cp.dir().join("ca.crt").display().to_string();
        let registry = self.registry();
        let bridge_ip = bridge_address(&self.pod_cidr);

        for (stem, user) in
            [("kubelet", format!("system:node:{REAL_NODE_NAME}")), ("kube-proxy", "system:kube-proxy".into())]
        {
            // The API server's certificate names `kubernetes`, not the gateway.
            let kubeconfig = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: https://{api}\n    \
                 certificate-authority: {ca}\n    tls-server-name: kubernetes\nusers:\n- name: {user}\n  user:\n    \
                 client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: testenv\n  context:\n    \
                 cluster: testenv\n    user: {user}\ncurrent-context: testenv\n",
                crt = cp.dir().join(format!("{stem}.crt")).display(),
                key = cp.dir().join(format!("{stem}.key")).display(),
            );
            fs::write(self.dir.join(format!("{stem}.kubeconfig")), kubeconfig)?;
        }

        let certs = self.dir.join("certs.d").join(&registry);
        fs::create_dir_all(&certs)?;
        fs::write(
            certs.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        fs::create_dir_all(self.dir.join("cni"))?;
        let cni = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "redeploy-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": d("cni-ipam"),
                        "ranges": [[{ "subnet": self.pod_cidr, "gateway": bridge_ip }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        fs::write(self.dir.join("cni/10-redeploy.conflist"), serde_json::to_string_pretty(&cni)?)?;

        let containerd = format!(
            r#"version = 3
root = "{root}"
state = "/run/containerd"

[grpc]
  address = "{sock}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs}"

[plugins.'io.containerd.cri.v1.runtime']
  # Even root cannot lower oom_score_adj in some VMs; runc would fail every sandbox.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc}"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "{node_ip}"
"#,
            root = d("containerd"),
            sock = d("containerd.sock"),
            pause = self.images.pause,
            certs = d("certs.d"),
            runc = self.bin.join("runc").display(),
            cni_bin = self.bin.join("cni").display(),
            cni_conf = d("cni"),
            node_ip = self.node_ip,
        );
        fs::write(self.dir.join("containerd.toml"), containerd)?;

        fs::write(self.dir.join("resolv.conf"), "")?;
        let kubelet = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup_root),
            "containerRuntimeEndpoint": format!("unix://{}", d("containerd.sock")),
            "address": self.node_ip.to_string(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": { "enabled": true },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": ca },
            },
            "authorization": { "mode": "AlwaysAllow" },
            "registerWithTaints": [{ "key": REAL_NODE_LABEL, "value": REAL_NODE_VALUE, "effect": "NoSchedule" }],
            "resolvConf": d("resolv.conf"),
            "podLogsDir": d("pod-logs"),
            "volumePluginDir": d("volume-plugins"),
            "failSwapOn": false,
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "5s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": { "memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%" },
            "localStorageCapacityIsolation": false,
            "makeIPTablesUtilChains": false,
        });
        fs::write(self.dir.join("kubelet.yaml"), serde_json::to_string_pretty(&kubelet)?)?;

        let kube_proxy = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": { "kubeconfig": d("kube-proxy.kubeconfig") },
            "hostnameOverride": REAL_NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": self.pod_cidr,
            "bindAddress": self.node_ip.to_string(),
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            // Pods on one bridge reach each other through a ClusterIP only if
            // the reply comes back through the node: masquerade everything.
            "iptables": { "masqueradeAll": true, "syncPeriod": "5s", "minSyncPeriod": "0s" },
            // The conntrack table is the machine's, not the namespace's: leave it.
            "conntrack": { "maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s" },
        });
        fs::write(self.dir.join("kube-proxy.yaml"), serde_json::to_string_pretty(&kube_proxy)?)?;
        Ok(())
    }

    /// kubelet's `cgroupRoot` in every cgroup hierarchy, removed on stop.
    fn make_cgroup_root(&self) -> anyhow::Result<()> {
        for hierarchy in cgroup_hierarchies(false) {
            let dir = hierarchy.join(&self.cgroup_root);
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // cgroup v1 cpuset: a new group has no CPUs or memory nodes until given its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(value) = fs::read_to_string(hierarchy.join(file)) {
                    fs::write(dir.join(file), value.trim())?;
                }
            }
        }
        Ok(())
    }

    /// Spawns `args` inside the node's namespaces, with the node's binaries on PATH.
    fn spawn_in_node(&self, name: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let mut command = Command::new("nsenter");
        command.arg(format!("--target={}", self.init_pid)).args(["--pid", "--mount", "--net", "--"]).args(args);
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}:/usr/sbin:/sbin", self.bin.display()));
        command.current_dir(&self.dir);
        self.push_process(name, command)
    }

    fn push_process(&self, name: &str, command: Command) -> anyhow::Result<()> {
        let process = Process::spawn(name, command, &self.dir.join(format!("{name}.log")))?;
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        Ok(())
    }

    fn check_running(&self) -> anyhow::Result<()> {
        crate::process::check_running(&self.processes, &self.dir, 30)
    }

    fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done()? {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("timed out waiting for {what} (logs in {})", self.dir.display());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops everything: killing the node's init makes the kernel kill every
    /// process of its PID namespace; its mounts and network go with the last.
    pub(crate) fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.proxy_stop.store(true, Ordering::Relaxed);
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        // unshare ignores SIGTERM while it waits for its child.
        if let Some(at) = processes.iter().position(|p| p.name == "node-init") {
            processes.remove(at).kill();
        }
        while let Some(process) = processes.pop() {
            process.stop();
        }
        drop(processes);
        // The veth goes when the network namespace does, once its last process has exited.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new("/sys/class/net").join(&self.veth).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        while !remove_cgroup_root(&self.cgroup_root) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Copies both ways between two sockets, a thread per direction.
fn splice(a: TcpStream, b: TcpStream) {
    let pairs = [(a.try_clone(), b.try_clone()), (Ok(b), Ok(a))];
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            let _ = thread::Builder::new().name("real-node-api-proxy-conn".into()).spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
        }
    }
}

/// The `kubernetes` Service's endpoint: the API server as the node reaches it.
async fn publish_api_endpoint(client: &Client, proxy: SocketAddr) -> anyhow::Result<()> {
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("kubernetes".into()),
            namespace: Some("default".into()),
            labels: Some(
                [
                    ("kubernetes.io/service-name".to_string(), "kubernetes".to_string()),
                    ("endpointslice.kubernetes.io/managed-by".to_string(), FIELD_MANAGER.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint { addresses: vec![proxy.ip().to_string()], ..Default::default() }]),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            port: Some(i32::from(proxy.port())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .patch("kubernetes", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&slice))
        .await?;
    Ok(())
}

async fn real_node_ready(client: &Client) -> anyhow::Result<bool> {
    let Some(node) = Api::<Node>::all(client.clone()).get_opt(REAL_NODE_NAME).await? else {
        return Ok(false);
    };
    Ok(node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Gateway, node address, pod CIDR and veth name, picked at random so that
/// nodes of test binaries running side by side do not collide: the link is
/// `10.240-247.x.0/30`, the pods `10.248-255.x.0/24`.
fn pick_addresses() -> anyhow::Result<(Ipv4Addr, Ipv4Addr, String, String)> {
    let routes = Command::new("ip").args(["-4", "route"]).output()?;
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    for _ in 0..20 {
        let n: u16 = rand::random::<u16>() % 2048;
        let (a, b) = ((n / 256) as u8, (n % 256) as u8);
        let link = format!("10.{}.{b}.0/30", 240 + a);
        let pods = format!("10.{}.{b}.0/24", 248 + a);
        let veth = format!("rdn{n:04x}");
        if routes.contains(&link) || routes.contains(&pods) || Path::new("/sys/class/net").join(&veth).exists() {
            continue;
        }
        return Ok((Ipv4Addr::new(10, 240 + a, b, 1), Ipv4Addr::new(10, 240 + a, b, 2), pods, veth));
    }
    bail!("found no free address range for the real node")
}

/// `.1` of the pod CIDR: the bridge, the pods' gateway.
fn bridge_address(pod_cidr: &str) -> String {
    let network = pod_cidr.split('/').next().unwrap_or_default();
    let mut octets: Vec<&str> = network.split('.').collect();
    octets.pop();
    format!("{}.1", octets.join("."))
}

/// The cgroup hierarchies: v2's root, or v1's; `with_unified` adds a hybrid
/// system's (empty) v2 hierarchy, where runc mirrors the groups it makes.
fn cgroup_hierarchies(with_unified: bool) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").is_file() {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").is_file() && (with_unified || !p.ends_with("unified")))
        .filter(|p| fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false))
        .collect()
}

/// Removes `name` and every group below it in each hierarchy; true when all are gone.
fn remove_cgroup_root(name: &str) -> bool {
    fn remove(dir: &Path) -> bool {
        let children: Vec<PathBuf> = fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        let mut all = true;
        for child in children {
            all &= remove(&child);
        }
        all && (fs::remove_dir(dir).is_ok() || !dir.exists())
    }
    // Every hierarchy is tried, even after one fails.
    let mut all = true;
    for dir in cgroup_hierarchies(true).iter().map(|h| h.join(name)).filter(|d| d.exists()) {
        all &= remove(&dir);
    }
    all
}

/// Groups left by nodes of test binaries that were killed: their owner's pid is in the name.
fn sweep_stale_cgroups() {
    for hierarchy in cgroup_hierarchies(true) {
        let Ok(entries) = fs::read_dir(&hierarchy) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(pid) = name.strip_prefix("redeploy-node-").and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                remove_cgroup_root(&name);
            }
        }
    }
}

/// The status code of `GET path` on a plain-HTTP server, if it answers.
pub(crate) fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(tool).is_file())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The directory of the node's binaries (and the registry's): `$REDEPLOY_NODE_BIN`,
/// or what `hack/build-node.sh` prints (it builds only what is missing).
pub fn node_binaries() -> anyhow::Result<PathBuf> {
    script_output("REDEPLOY_NODE_BIN", "build-node.sh", &[])
}

/// `$env`, or the last line `hack/<script> args...` prints (it builds only what is missing).
pub(crate) fn script_output(env: &str, script: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(env) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack").join(script);
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let dir = String::from_utf8(output.stdout)?.lines().last().unwrap_or_default().trim().to_string();
    Ok(PathBuf::from(dir))
}
