//! Child processes that die with the test binary.

use std::{
    fs::File,
    io,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) child: Child,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

impl Process {
    /// Spawns `command` with stdout and stderr appended to `log`.
    ///
    /// Children are spawned from one thread that lives as long as the process:
    /// `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, so
    /// a child forked from a short-lived test thread would be killed with it.
    pub(crate) fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        command.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (reply, answer) = mpsc::channel();
        spawner().send((command, reply)).context("the spawner thread is gone")?;
        let child = answer.recv().context("the spawner thread is gone")?.with_context(|| format!("starting {name}"))?;
        Ok(Process { name: name.to_string(), child })
    }

    /// The exit status, if the process has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and waits for the exit.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub(crate) fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
                // Keep the thread (the children's parent) alive until the process exits.
                loop {
                    thread::park();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("cannot start the spawner thread: {e}"));
        requests
    })
}

/// Fails, with the last `lines` lines of its log (`<dir>/<name>.log`), if any
/// of `processes` has exited.
pub(crate) fn check_running(processes: &Mutex<Vec<Process>>, dir: &Path, lines: usize) -> anyhow::Result<()> {
    let mut processes = processes.lock().unwrap_or_else(|e| e.into_inner());
    for process in processes.iter_mut() {
        if let Some(status) = process.exited() {
            let log = std::fs::read_to_string(dir.join(format!("{}.log", process.name))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("{} exited ({status}); last lines of its log:\n{}", process.name, tail.join("\n"));
        }
    }
    Ok(())
}
