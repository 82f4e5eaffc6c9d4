//! The runner's process: a fresh copy of the runner directory, `run.sh` started in its own
//! process group with a withheld environment, supervised until it exits, is terminated
//! or reaches its deadline; and the `/proc` checks that tell our process from another.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use tokio::sync::Notify;

use super::adopt::{Meta, write_meta};
use super::{LocalBackend, permanent};
use crate::backend::{BackendError, SandboxSpec};
use crate::domain::now_millis;

/// How long a terminated runner gets to exit on SIGTERM before SIGKILL.
pub(super) const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often adopted processes (not our children) are checked.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// Environment passed through to runners; everything else (tokens above all) is withheld.
const PASSED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TZ"];

impl LocalBackend {
    /// Copies the runner directory, starts `run.sh` in the copy and supervises it.
    pub(super) async fn start(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
        let paths = self.paths(&spec.name);
        paths.remove().await;
        let (from, to) = (self.config.runner_dir.clone(), paths.dir.clone());
        tokio::task::spawn_blocking(move || copy_dir(&from, &to))
            .await
            .map_err(|e| BackendError::Transient(format!("copy task failed: {e}")))?
            .map_err(|e| permanent("copy the runner directory", &self.config.runner_dir, e))?;
        let log =
            std::fs::File::create(&paths.log).map_err(|e| permanent("create the log", &paths.log, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| permanent("open the log", &paths.log, e))?;
        let mut cmd = tokio::process::Command::new(paths.dir.join("run.sh"));
        cmd.current_dir(&paths.dir)
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| PASSED_ENV.contains(&k.as_str())))
            .env("RUNNER_ALLOW_RUNASROOT", "1")
            .env("ACTIONS_RUNNER_INPUT_JITCONFIG", spec.jit_config.expose_secret())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        let child = match spawn(&mut cmd).await {
            Ok(c) => c,
            Err(e) => {
                paths.remove().await;
                return Err(permanent("start run.sh", &paths.dir, e));
            }
        };
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let created_at = now_millis();
        let timeout_ms = i64::try_from(spec.timeout.as_millis()).unwrap_or(i64::MAX);
        let meta = Meta {
            name: spec.name.clone(),
            pid,
            start_ticks: start_ticks(pid),
            created_at,
            deadline: created_at.saturating_add(timeout_ms),
            deployment: Some(self.config.deployment.clone()),
        };
        if let Err(e) = write_meta(&paths.meta, &meta).await {
            tracing::warn!(runner.name = %spec.name, error = %e, "could not persist sandbox metadata");
        }
        tracing::info!(runner.name = %spec.name, pid, "local sandbox started");
        self.watch(meta, Some(child));
        Ok(())
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
/// Returns how it ended, for the log.
pub(super) async fn supervise(
    meta: &Meta,
    mut child: Option<tokio::process::Child>,
    stop: &Notify,
) -> String {
    let remaining = Duration::from_millis(u64::try_from(meta.deadline - now_millis()).unwrap_or(0));
    let deadline = tokio::time::sleep(remaining);
    tokio::pin!(deadline);
    let reason = tokio::select! {
        exit = wait_exit(meta, child.as_mut()) => {
            // The runner is gone; make sure nothing it started outlives it.
            kill_group(meta.pid, Signal::SIGKILL);
            wait_group_gone(meta.pid).await;
            return exit;
        }
        () = stop.notified() => "terminated",
        () = &mut deadline => "timed out",
    };
    kill_group(meta.pid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, wait_exit(meta, child.as_mut()))
        .await
        .is_err()
    {
        kill_group(meta.pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(KILL_GRACE, wait_exit(meta, child.as_mut())).await;
    }
    kill_group(meta.pid, Signal::SIGKILL);
    wait_group_gone(meta.pid).await;
    reason.to_string()
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
            while is_alive(meta.pid, meta.start_ticks) {
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

/// Whether `pid` is running and is the process we started (same start time).
pub(super) fn is_alive(pid: i32, expected_ticks: Option<u64>) -> bool {
    if pid <= 1 {
        return false;
    }
    match (start_ticks(pid), expected_ticks) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
    }
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
