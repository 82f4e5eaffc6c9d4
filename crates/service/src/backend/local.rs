//! The local backend: each runner runs `./run.sh` as a child process in its own fresh copy
//! of `LOCAL_RUNNER_DIR`, in its own process group, with the JIT config in its environment
//! (`ACTIONS_RUNNER_INPUT_JITCONFIG`, which the Actions runner reads like `--jitconfig` and
//! then removes from its environment) so it never shows in a process listing's arguments.
//!
//! A sandbox outlives the service, as a Modal sandbox does: its state is a metadata file
//! next to its directory, and a restarted service adopts the processes still running and
//! cleans up after the ones that ended. When a sandbox ends (exit, terminate, timeout) its
//! whole process group is killed and its directory removed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::{BackendError, SandboxInfo, SandboxSpec};
use crate::domain::now_millis;

/// Where runners come from and where their copies live.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// A directory holding the runner's `run.sh` (an extracted actions-runner release, or
    /// the fake runner in tests).
    pub runner_dir: PathBuf,
    /// Where per-runner copies, logs and metadata live.
    pub work_dir: PathBuf,
}

/// How long a terminated runner gets to exit on SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often adopted processes (not our children) are checked.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

pub struct LocalBackend {
    config: LocalConfig,
    state: Arc<Mutex<Sandboxes>>,
}

#[derive(Default)]
struct Sandboxes {
    live: HashMap<String, Live>,
    /// Names whose create is under way, so a concurrent create of the same name waits for
    /// it instead of starting a second process.
    starting: HashSet<String>,
    /// How recently ended sandboxes ended (bounded).
    exits: std::collections::VecDeque<(String, String)>,
}

/// How many ended sandboxes' exit descriptions are kept.
const EXITS_KEPT: usize = 1000;

struct Live {
    created_at: i64,
    stop: Arc<Notify>,
    finished: watch::Receiver<bool>,
}

/// Persisted next to each sandbox directory so a restarted service can find it.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    pid: i32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell
    /// our process from an unrelated one that reused its pid.
    start_ticks: Option<u64>,
    created_at: i64,
    deadline: i64,
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend {
            config,
            state: Arc::new(Mutex::new(Sandboxes::default())),
        }
    }

    /// Checks the runner directory, then adopts sandboxes left by an earlier process and
    /// cleans up those that ended while no one watched.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        let run_sh = self.config.runner_dir.join("run.sh");
        if !run_sh.is_file() {
            return Err(BackendError::Permanent(format!(
                "LOCAL_RUNNER_DIR {} has no run.sh",
                self.config.runner_dir.display()
            )));
        }
        tokio::fs::create_dir_all(&self.config.work_dir)
            .await
            .map_err(|e| permanent("create the work directory", &self.config.work_dir, e))?;
        let mut entries = tokio::fs::read_dir(&self.config.work_dir)
            .await
            .map_err(|e| permanent("read the work directory", &self.config.work_dir, e))?;
        let mut metas = Vec::new();
        let mut dirs = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                metas.push(path);
            } else if path.is_dir() {
                dirs.push(path);
            }
        }
        let mut adopted = HashSet::new();
        for path in metas {
            if let Some(name) = self.adopt(&path).await {
                adopted.insert(name);
            }
        }
        for dir in dirs {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !adopted.contains(&n)) {
                // A copy whose process never started (crash during create).
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
        Ok(())
    }

    /// Creates the sandbox `spec.name`, or returns the running one with that name.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        loop {
            {
                let mut st = self.lock();
                if st.live.contains_key(&spec.name) {
                    return Ok(spec.name.clone());
                }
                if !st.starting.contains(&spec.name) {
                    st.starting.insert(spec.name.clone());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let result = self.start(&spec).await;
        self.lock().starting.remove(&spec.name);
        result.map(|()| spec.name)
    }

    /// Stops the sandbox and waits until its processes are gone and its directory removed.
    pub async fn terminate(&self, id: &str) -> Result<(), BackendError> {
        let live = self
            .lock()
            .live
            .get(id)
            .map(|l| (l.stop.clone(), l.finished.clone()));
        if let Some((stop, mut finished)) = live {
            stop.notify_one();
            let wait = finished.wait_for(|done| *done);
            if tokio::time::timeout(KILL_GRACE * 3, wait).await.is_err() {
                return Err(BackendError::Transient(format!(
                    "sandbox {id} did not stop in time"
                )));
            }
        }
        Ok(())
    }

    /// Sandboxes whose process is running.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, BackendError> {
        let st = self.lock();
        let mut out: Vec<SandboxInfo> = st
            .live
            .iter()
            .map(|(name, l)| SandboxInfo {
                id: name.clone(),
                name: name.clone(),
                created_at: l.created_at,
            })
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// How a sandbox that ended recently ended.
    pub fn exit_status(&self, id: &str) -> Option<String> {
        self.lock()
            .exits
            .iter()
            .rev()
            .find(|(name, _)| name == id)
            .map(|(_, how)| how.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sandboxes> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every update is a single insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn paths(&self, name: &str) -> Paths {
        Paths {
            dir: self.config.work_dir.join(name),
            meta: self.config.work_dir.join(format!("{name}.json")),
            log: self.config.work_dir.join(format!("{name}.log")),
        }
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), BackendError> {
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
        };
        if let Err(e) = write_meta(&paths.meta, &meta).await {
            tracing::warn!(runner.name = %spec.name, error = %e, "could not persist sandbox metadata");
        }
        tracing::info!(runner.name = %spec.name, pid, "local sandbox started");
        self.watch(meta, Some(child));
        Ok(())
    }

    /// Takes over a sandbox described by a metadata file; returns its name if it runs.
    async fn adopt(&self, meta_path: &Path) -> Option<String> {
        let meta: Meta = match tokio::fs::read(meta_path)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(m) => m,
            None => {
                let _ = tokio::fs::remove_file(meta_path).await;
                return None;
            }
        };
        let name = meta.name.clone();
        if is_alive(meta.pid, meta.start_ticks) {
            tracing::info!(runner.name = %name, pid = meta.pid, "adopted a running local sandbox");
            self.watch(meta, None);
            Some(name)
        } else {
            kill_group(meta.pid, Signal::SIGKILL);
            self.paths(&name).remove().await;
            None
        }
    }

    /// Registers the sandbox as live and spawns the task that ends it.
    fn watch(&self, meta: Meta, child: Option<tokio::process::Child>) {
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(false);
        self.lock().live.insert(
            meta.name.clone(),
            Live {
                created_at: meta.created_at,
                stop: stop.clone(),
                finished: done_rx,
            },
        );
        let paths = self.paths(&meta.name);
        let state = self.state.clone();
        tokio::spawn(async move {
            let how = supervise(&meta, child, &stop).await;
            tracing::info!(runner.name = %meta.name, ended = %how, "local sandbox ended");
            log_tail(&meta.name, &paths.log).await;
            paths.remove().await;
            {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.live.remove(&meta.name);
                if st.exits.len() == EXITS_KEPT {
                    st.exits.pop_front();
                }
                st.exits.push_back((meta.name.clone(), how));
            }
            let _ = done_tx.send(true);
        });
    }
}

/// Environment passed through to runners; everything else (tokens above all) is withheld.
const PASSED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TZ"];

struct Paths {
    dir: PathBuf,
    meta: PathBuf,
    log: PathBuf,
}

impl Paths {
    async fn remove(&self) {
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        let _ = tokio::fs::remove_file(&self.meta).await;
        let _ = tokio::fs::remove_file(&self.log).await;
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
async fn supervise(meta: &Meta, mut child: Option<tokio::process::Child>, stop: &Notify) -> String {
    let remaining = Duration::from_millis(u64::try_from(meta.deadline - now_millis()).unwrap_or(0));
    let deadline = tokio::time::sleep(remaining);
    tokio::pin!(deadline);
    let reason = tokio::select! {
        exit = wait_exit(meta, child.as_mut()) => {
            // The runner is gone; make sure nothing it started outlives it.
            kill_group(meta.pid, Signal::SIGKILL);
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
    reason.to_string()
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

fn kill_group(pgid: i32, signal: Signal) {
    if pgid > 1 {
        // ESRCH (no such group) means it is gone already, which is the goal.
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// Whether `pid` is running and is the process we started (same start time).
fn is_alive(pid: i32, expected_ticks: Option<u64>) -> bool {
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
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

async fn write_meta(path: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The last lines of a runner's output, at debug level, before its log is removed.
async fn log_tail(name: &str, log: &Path) {
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

fn permanent(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Permanent(format!("could not {what} ({}): {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn runner_dir(script: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run.sh");
        std::fs::write(&run, format!("#!/bin/sh\n{script}\n")).expect("write run.sh");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    fn spec(name: &str, timeout: Duration) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            jit_config: SecretString::from("c2VjcmV0"),
            tags: vec![],
            timeout,
            machine: Default::default(),
        }
    }

    async fn wait_gone(b: &LocalBackend, name: &str) {
        for _ in 0..200 {
            if b.list().await.expect("list").iter().all(|s| s.name != name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sandbox {name} still listed");
    }

    #[tokio::test]
    async fn a_runner_gets_the_jit_config_in_its_environment_and_its_directory_is_removed() {
        // Arrange: run.sh records what it was given in a file outside its own directory.
        let out = tempfile::tempdir().expect("tempdir");
        let seen = out.path().join("seen");
        let rd = runner_dir(&format!(
            "echo \"args=$# root=$RUNNER_ALLOW_RUNASROOT jit=$ACTIONS_RUNNER_INPUT_JITCONFIG token=${{GITHUB_TOKEN:-none}}\" > {}",
            seen.display()
        ));
        let work = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(LocalConfig {
            runner_dir: rd.path().into(),
            work_dir: work.path().into(),
        });
        b.prepare().await.expect("prepare");

        // Act
        let id = b
            .create(spec("r-1-1", Duration::from_secs(30)))
            .await
            .expect("create");
        wait_gone(&b, &id).await;

        // Assert
        let text = std::fs::read_to_string(&seen).expect("run.sh ran");
        assert_eq!(text.trim(), "args=0 root=1 jit=c2VjcmV0 token=none");
        assert!(!work.path().join("r-1-1").exists(), "the copy is removed");
        assert!(!work.path().join("r-1-1.json").exists());
    }

    #[tokio::test]
    async fn create_is_idempotent_on_the_name_and_terminate_kills_the_process_group() {
        let rd = runner_dir("sleep 30 & sleep 30");
        let work = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(LocalConfig {
            runner_dir: rd.path().into(),
            work_dir: work.path().into(),
        });
        b.prepare().await.expect("prepare");
        let first = b
            .create(spec("r-2-1", Duration::from_secs(30)))
            .await
            .expect("create");
        let second = b
            .create(spec("r-2-1", Duration::from_secs(30)))
            .await
            .expect("create again");
        assert_eq!(first, second);
        assert_eq!(b.list().await.expect("list").len(), 1);
        let meta: Meta =
            serde_json::from_slice(&std::fs::read(work.path().join("r-2-1.json")).expect("meta"))
                .expect("json");

        b.terminate(&first).await.expect("terminate");

        assert!(b.list().await.expect("list").is_empty());
        assert!(
            !group_has_live_process(meta.pid),
            "no process of the group is left"
        );
        assert!(!work.path().join("r-2-1").exists());
        b.terminate(&first)
            .await
            .expect("terminating a gone sandbox is fine");
    }

    #[tokio::test]
    async fn a_sandbox_is_stopped_at_its_timeout() {
        let rd = runner_dir("exec sleep 30");
        let work = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(LocalConfig {
            runner_dir: rd.path().into(),
            work_dir: work.path().into(),
        });
        b.prepare().await.expect("prepare");
        b.create(spec("r-3-1", Duration::from_millis(300)))
            .await
            .expect("create");
        wait_gone(&b, "r-3-1").await;
        assert!(!work.path().join("r-3-1").exists());
    }

    #[tokio::test]
    async fn a_new_backend_adopts_running_sandboxes_and_clears_dead_ones() {
        let rd = runner_dir("exec sleep 30");
        let work = tempfile::tempdir().expect("tempdir");
        let config = LocalConfig {
            runner_dir: rd.path().into(),
            work_dir: work.path().into(),
        };
        let first = LocalBackend::new(config.clone());
        first.prepare().await.expect("prepare");
        first
            .create(spec("r-4-1", Duration::from_secs(30)))
            .await
            .expect("create");
        // A dead sandbox's leftovers and a half-made copy.
        std::fs::create_dir(work.path().join("r-5-1")).expect("dir");
        std::fs::write(
            work.path().join("r-5-1.json"),
            br#"{"name":"r-5-1","pid":999999,"start_ticks":1,"created_at":0,"deadline":0}"#,
        )
        .expect("meta");
        std::fs::create_dir(work.path().join("r-6-1")).expect("dir");

        // Act: a second backend over the same directory, as after a restart.
        let second = LocalBackend::new(config);
        second.prepare().await.expect("prepare");

        // Assert
        let names: Vec<String> = second
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["r-4-1"]);
        assert!(!work.path().join("r-5-1").exists());
        assert!(!work.path().join("r-6-1").exists());
        second.terminate("r-4-1").await.expect("terminate adopted");
        assert!(!work.path().join("r-4-1").exists());
    }

    #[tokio::test]
    async fn a_runner_directory_without_run_sh_is_a_permanent_error() {
        let empty = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        let b = LocalBackend::new(LocalConfig {
            runner_dir: empty.path().into(),
            work_dir: work.path().into(),
        });
        let err = b.prepare().await.expect_err("no run.sh");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("run.sh"));
    }
}
