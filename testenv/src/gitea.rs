//! A real Gitea (built from its Go module by `hack/build-gitea.sh`): a Git
//! host that serves repositories over HTTP and sends its own webhooks.
//!
//! It runs from a temporary work directory (SQLite database, repositories,
//! logs), prepared without the web installer (`INSTALL_LOCK`, `gitea migrate`,
//! `gitea admin user create`), and is stopped when the [`Gitea`] is dropped,
//! or killed with the test binary (`PR_SET_PDEATHSIG`).
//!
//! Its `ROOT_URL` is the address it listens on, so the clone URLs it puts in
//! its push payloads are the ones a client there can use: listening on the
//! real node's gateway ([`crate::RealNode::gateway_ip`]), both this process
//! and the node's pods (a build Job cloning) reach it.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use crate::{certs::random_token, node::script_output, process::Process};
use anyhow::{Context, bail};

/// A running Gitea, stopped on drop.
pub struct Gitea {
    // Kept so the work directory is removed when Gitea is dropped.
    _temp: tempfile::TempDir,
    dir: PathBuf,
    bin: PathBuf,
    address: SocketAddr,
    admin_password: String,
    processes: Mutex<Vec<Process>>,
}

/// The administrator [`Gitea::start`] creates (its password is [`Gitea::admin_password`]).
pub const GITEA_ADMIN: &str = "redeploy-admin";

impl Gitea {
    /// Starts Gitea on `listen` (a free port), its webhooks allowed to reach
    /// only `webhook_hosts`: entries of Gitea's `[webhook] ALLOWED_HOST_LIST`
    /// (`loopback`, `private`, a host name, an IP or a CIDR). Gitea blocks
    /// webhooks to loopback and private addresses unless they are listed.
    pub fn start(listen: IpAddr, webhook_hosts: &[&str]) -> anyhow::Result<Gitea> {
        let started = Instant::now();
        let bin = gitea_binaries()?;
        let temp = tempfile::Builder::new().prefix("redeploy-gitea-").tempdir()?;
        let dir = temp.path().to_path_buf();
        let port = TcpListener::bind((listen, 0))?.local_addr()?.port();
        let gitea = Gitea {
            _temp: temp,
            dir,
            bin,
            address: SocketAddr::new(listen, port),
            admin_password: random_token(),
            processes: Mutex::new(Vec::new()),
        };
        fs::write(gitea.config_path(), gitea.config(webhook_hosts))?;
        gitea.run(&["migrate"])?;
        gitea.run(&[
            "admin",
            "user",
            "create",
            "--admin",
            "--username",
            GITEA_ADMIN,
            "--password",
            &gitea.admin_password,
            "--email",
            "admin@redeploy.invalid",
            "--must-change-password=false",
        ])?;
        let process = Process::spawn("gitea", gitea.command(&["web"]), &gitea.log_path())?;
        gitea.processes.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        let deadline = Instant::now() + Duration::from_secs(120);
        while crate::node::http_status(&gitea.address.to_string(), "/api/v1/version") != Some(200) {
            crate::process::check_running(&gitea.processes, &gitea.dir, 30)?;
            if Instant::now() > deadline {
                bail!("Gitea did not answer on {}; see {}", gitea.address, gitea.log_path().display());
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("Gitea on {} ready in {:.1}s", gitea.url(), started.elapsed().as_secs_f64());
        Ok(gitea)
    }

    /// `http://<address>:<port>`, its `ROOT_URL` without the final slash: the
    /// web UI, `/api/v1`, and `/<owner>/<repository>.git` to clone and push.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The password of [`GITEA_ADMIN`].
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Where its configuration, database, repositories and log (`gitea.log`) live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its log: Gitea's own output, webhook deliveries included.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gitea.log")
    }

    /// Stops Gitea (SIGTERM, then SIGKILL after a grace period); also done on drop.
    pub fn stop(&self) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(process) = processes.pop() {
            process.stop();
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("app.ini")
    }

    /// `gitea <args>` with this instance's configuration and work directory.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join("gitea"));
        command
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--work-path")
            .arg(&self.dir)
            .env("HOME", &self.dir)
            .env("GITEA_WORK_DIR", &self.dir)
            .env_remove("GITEA_CUSTOM")
            .current_dir(&self.dir);
        command
    }

    /// Runs a `gitea` subcommand to completion.
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = self.command(args).output().with_context(|| format!("running gitea {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "gitea {} failed ({}): {}{}",
                args.first().copied().unwrap_or_default(),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn config(&self, webhook_hosts: &[&str]) -> String {
        let d = |name: &str| self.dir.join(name).display().to_string();
        let (host, port) = (self.address.ip(), self.address.port());
        format!(
            "APP_NAME = redeploy-testenv\n\
             RUN_MODE = prod\n\
             WORK_PATH = {work}\n\
             ; A test machine runs everything as root; Gitea refuses to otherwise.\n\
             I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true\n\
             \n[server]\n\
             PROTOCOL = http\n\
             HTTP_ADDR = {host}\n\
             HTTP_PORT = {port}\n\
             DOMAIN = {host}\n\
             ROOT_URL = http://{host}:{port}/\n\
             ; No generated bindata: options/, templates/ and public/ are read from here.\n\
             STATIC_ROOT_PATH = {static_root}\n\
             APP_DATA_PATH = {data}\n\
             DISABLE_SSH = true\n\
             START_SSH_SERVER = false\n\
             OFFLINE_MODE = true\n\
             LFS_START_SERVER = false\n\
             \n[database]\n\
             DB_TYPE = sqlite3\n\
             PATH = {db}\n\
             \n[repository]\n\
             ROOT = {repositories}\n\
             DEFAULT_BRANCH = main\n\
             \n[security]\n\
             INSTALL_LOCK = true\n\
             SECRET_KEY = {secret_key}\n\
             INTERNAL_TOKEN = {internal_token}\n\
             \n[oauth2]\n\
             ENABLED = false\n\
             \n[service]\n\
             DISABLE_REGISTRATION = true\n\
             REQUIRE_SIGNIN_VIEW = false\n\
             \n[webhook]\n\
             ALLOWED_HOST_LIST = {webhook_hosts}\n\
             DELIVER_TIMEOUT = 30\n\
             \n[actions]\n\
             ENABLED = false\n\
             \n[indexer]\n\
             REPO_INDEXER_ENABLED = false\n\
             \n[session]\n\
             PROVIDER = memory\n\
             \n[cache]\n\
             ADAPTER = memory\n\
             \n[mailer]\n\
             ENABLED = false\n\
             \n[log]\n\
             MODE = console\n\
             LEVEL = info\n\
             ROOT_PATH = {log}\n",
            work = self.dir.display(),
            static_root = self.bin.display(),
            data = d("data"),
            db = d("data/gitea.db"),
            repositories = d("repositories"),
            secret_key = random_token(),
            internal_token = random_token(),
            webhook_hosts = webhook_hosts.join(","),
            log = d("log"),
        )
    }
}

impl Drop for Gitea {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of Gitea's binary and the source directories it reads:
/// `$REDEPLOY_GITEA_BIN`, or what `hack/build-gitea.sh` prints (it builds
/// only what is missing).
pub fn gitea_binaries() -> anyhow::Result<PathBuf> {
    script_output("REDEPLOY_GITEA_BIN", "build-gitea.sh", &[])
}
