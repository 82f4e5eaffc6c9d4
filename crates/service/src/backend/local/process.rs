//! The runner's process: a fresh copy of the runner directory, `run.sh` started in its own
//! process group with a withheld environment, supervised until it exits, is terminated
//! or reaches its deadline; and the `/proc` checks that tell our process from another.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio::sync::Notify;

use super::adopt::{Meta, write_meta};
use super::identity::{RunAs, runner_env};
use super::{LocalBackend, Paths, permanent};
use crate::backend::{BackendError, SandboxSpec};
use crate::domain::{RunnerName, now_millis};

/// How long a terminated runner gets to exit on SIGTERM before SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often adopted processes (not our children) are checked.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

impl LocalBackend {
    /// Copies the runner directory, starts `run.sh` in the copy and supervises it.
    pub(super) async fn start(&self, name: &RunnerName, spec: &SandboxSpec) -> Result<(), BackendError> {
        let run_as = self.run_as()?;
        let paths = self.paths(name);
        paths.remove().await;
        let created_at = now_millis();
        let timeout_ms = i64::try_from(spec.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut meta = Meta {
            name: name.clone(),
            pid: 0,
            start_ticks: None,
            created_at,
            deadline: created_at.saturating_add(timeout_ms),
            deployment: Some(self.config.deployment.clone()),
        };
        // Written before the copy is made: it marks the copy as the service's, so a
        // start-up after a crash removes it (and nothing it did not make).
        write_meta(&paths.meta, &meta)
            .await
            .map_err(|e| permanent("write the sandbox's metadata", &paths.meta, e))?;
        let mut cmd = match self.command(&paths, run_as, spec).await {
            Ok(cmd) => cmd,
            Err(e) => {
                paths.remove().await;
                return Err(e);
            }
        };
        let child = match spawn(&mut cmd).await {
            Ok(c) => c,
            Err(e) => {
                paths.remove().await;
                return Err(permanent("start run.sh", &paths.dir, e));
            }
        };
        meta.pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        meta.start_ticks = start_ticks(meta.pid);
        if let Err(e) = write_meta(&paths.meta, &meta).await {
            tracing::warn!(runner.name = %name, error = %e, "could not persist sandbox metadata");
        }
        tracing::info!(runner.name = %name, pid = meta.pid, "local sandbox started");
        self.watch(meta, Some(child));
        Ok(())
    }

    /// Makes the runner's copy (the `LOCAL_RUN_AS` user's, if set) and its log, and the
    /// command that starts it there with only the environment a runner may see.
    async fn command(
        &self,
        paths: &Paths,
        run_as: Option<&RunAs>,
        spec: &SandboxSpec,
    ) -> Result<tokio::process::Command, BackendError> {
        let (from, to) = (self.config.runner_dir.clone(), paths.dir.clone());
        tokio::task::spawn_blocking(move || copy_dir(&from, &to))
            .await
            .map_err(|e| BackendError::Transient(format!("copy task failed: {e}")))?
            .map_err(|e| permanent("copy the runner directory", &self.config.runner_dir, e))?;
        if let Some(user) = run_as {
            user.take_copy(&paths.dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&paths.log)
            .map_err(|e| permanent("create the log", &paths.log, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| permanent("open the log", &paths.log, e))?;
        let env = runner_env(std::env::vars(), run_as, spec.jit_config.expose_secret());
        let mut cmd = tokio::process::Command::new(paths.dir.join("run.sh"));
        cmd.current_dir(&paths.dir)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        if let Some(user) = run_as {
            // As root, the standard library also drops the supplementary groups.
            cmd.uid(user.uid).gid(user.gid);
        }
        Ok(cmd)
    }
}

/// Spawns, retrying "text file busy": another thread's fork can briefly inherit the
/// descriptor that wrote the fresh copy of `run.sh`, and exec refuses a file open for
/// writing until that child has exec'd in turn.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Runs until the sandbox's process ends, stopping it on request or at its deadline.
/// `child` is our own child; `None` for an adopted process. Returns how it ended, for the log.
pub(super) async fn supervise(
    meta: &Meta,
    mut child: Option<tokio::process::Child>,
    stop: &Notify,
) -> String {
    let own = child.is_some();
    let remaining = Duration::from_millis(u64::try_from(meta.deadline - now_millis()).unwrap_or(0));
    let deadline = tokio::time::sleep(remaining);
    tokio::pin!(deadline);
    let reason = tokio::select! {
        exit = wait_exit(meta, child.as_mut()) => {
            // The runner is gone; make sure nothing it started outlives it.
            kill_leftovers(meta);
            wait_group_gone(meta.pid).await;
            return exit;
        }
        () = stop.notified() => "terminated",
        () = &mut deadline => "timed out",
    };
    signal_group(meta, own, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, wait_exit(meta, child.as_mut()))
        .await
        .is_err()
    {
        signal_group(meta, own, Signal::SIGKILL);
        let _ = tokio::time::timeout(KILL_GRACE, wait_exit(meta, child.as_mut())).await;
    }
    kill_leftovers(meta);
    wait_group_gone(meta.pid).await;
    reason.to_string()
}

/// Signals the sandbox's process group while its leader is provably ours: our own child
/// (until we reap it, its pid cannot be reused) or an adopted process whose start time is
/// the recorded one.
fn signal_group(meta: &Meta, own: bool, signal: Signal) {
    if own || is_ours(meta.pid, meta.start_ticks) {
        kill_group(meta.pid, signal);
    }
}

/// Kills what is left of the group once its leader has exited. The leader was ours a
/// moment ago (our child, or an adopted process seen at most `ADOPTED_POLL` earlier), and a
/// process group's id stays reserved while any member lives, so members found now are the
/// leader's. If the pid already names another process, the group ended and the id was
/// reused: nothing is signalled.
fn kill_leftovers(meta: &Meta) {
    match start_ticks(meta.pid) {
        Some(now) if meta.start_ticks != Some(now) => {}
        _ => kill_group(meta.pid, Signal::SIGKILL),
    }
}

/// How long a SIGKILLed group may take to be gone before the sandbox counts as ended anyway.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(2);

/// Waits (briefly) until no process of group `pgid` is left: SIGKILL is delivered at once,
/// but a process that was busy (or the machine loaded) takes a moment to exit, and a sandbox
/// must not count as ended while any of it still runs.
async fn wait_group_gone(pgid: i32) {
    let deadline = tokio::time::Instant::now() + GROUP_EXIT_WAIT;
    while pgid > 1 && group_has_live_process(pgid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_exit(meta: &Meta, child: Option<&mut tokio::process::Child>) -> String {
    match child {
        Some(child) => match child.wait().await {
            Ok(status) => format!("exited ({status})"),
            Err(e) => format!("wait failed: {e}"),
        },
        None => {
            while is_ours(meta.pid, meta.start_ticks) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
            "exited".to_string()
        }
    }
}

pub(super) fn kill_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        // ESRCH (no such group) means it is gone already, which is the goal.
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Whether `pid` is running and is the process we started: it has the recorded start
/// time. Without a recorded start time nothing proves that, so it is not ours.
pub(super) fn is_ours(pid: i32, expected_ticks: Option<u64>) -> bool {
    pid > 1 && expected_ticks.is_some() && start_ticks(pid) == expected_ticks
}

/// Whether any process (zombies aside) still belongs to process group `pgid`. Tests use
/// it to prove that nothing a runner started outlives its sandbox.
pub fn group_has_live_process(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields after the command: state, ppid, pgrp.
        fields.first().is_some_and(|st| *st != "Z")
            && fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
    })
}

/// Field 22 of `/proc/<pid>/stat`; `None` if the process does not exist or is a zombie.
pub(super) fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The last lines of a runner's output, at debug level, before its log is removed.
pub(super) async fn log_tail(name: &str, log: &Path) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Ok(text) = tokio::fs::read_to_string(log).await {
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(20)..] {
            tracing::debug!(runner.name = %name, "runner: {line}");
        }
    }
}

/// Copies a directory tree, keeping permissions and symbolic links.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
