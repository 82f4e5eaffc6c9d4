//! The local backend: each runner runs `./run.sh` as a child process in its own fresh copy
//! of `LOCAL_RUNNER_DIR`, in its own process group, with the JIT config in its environment
//! (`ACTIONS_RUNNER_INPUT_JITCONFIG`, which the Actions runner reads like `--jitconfig` and
//! then removes from its environment) so it never shows in a process listing's arguments.
//!
//! A sandbox outlives the service, as a Modal sandbox does: its state is a metadata file
//! next to its directory, and a restarted service adopts the processes still running and
//! cleans up after the ones that ended. When a sandbox ends (exit, terminate, timeout) its
//! whole process group is killed and its directory removed.
//!
//! - this file: the registry of live sandboxes (create, terminate, list, how one ended);
//! - `process`: starting `run.sh` in its copy, supervising it, and the `/proc` checks;
//! - `adopt`: the metadata that outlives the service, and adopting at start-up;
//! - `workdir`: keeping `LOCAL_WORK_DIR` private to the service's user;
//! - `identity`: who a runner runs as (`LOCAL_RUN_AS`) and the environment it gets.

mod adopt;
mod identity;
mod process;
#[cfg(test)]
mod tests;
mod workdir;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use self::adopt::Meta;
use self::identity::RunAs;
use self::process::KILL_GRACE;
use super::{BackendError, SandboxInfo, SandboxSpec};
use crate::domain::RunnerName;

pub use process::group_has_live_process;

/// Where runners come from and where their copies live.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// A directory holding the runner's `run.sh` (an extracted actions-runner release, or
    /// the fake runner in tests).
    pub runner_dir: PathBuf,
    /// Where per-runner copies, logs and metadata live; private to the service's user.
    pub work_dir: PathBuf,
    /// `LOCAL_RUN_AS`: the user runners run as, instead of the service's own.
    pub run_as: Option<String>,
    /// `DEPLOYMENT_ID`, written in each sandbox's metadata: a service adopts only its own
    /// deployment's sandboxes, so deployments sharing a work directory never touch each
    /// other's.
    pub deployment: String,
}

pub struct LocalBackend {
    config: LocalConfig,
    /// The `LOCAL_RUN_AS` user, looked up by `prepare`.
    run_as: OnceLock<RunAs>,
    state: Arc<Mutex<Sandboxes>>,
}

#[derive(Default)]
struct Sandboxes {
    live: HashMap<String, Live>,
    /// Names whose create is under way, so a concurrent create of the same name waits for
    /// it instead of starting a second process.
    starting: HashSet<String>,
    /// How recently ended sandboxes ended (bounded).
    exits: VecDeque<(String, String)>,
}

/// How many ended sandboxes' exit descriptions are kept.
const EXITS_KEPT: usize = 1000;

struct Live {
    created_at: i64,
    stop: Arc<Notify>,
    finished: watch::Receiver<bool>,
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend {
            config,
            run_as: OnceLock::new(),
            state: Arc::new(Mutex::new(Sandboxes::default())),
        }
    }

    /// Creates the sandbox `spec.name`, or returns the running one with that name.
    pub async fn create(&self, spec: SandboxSpec) -> Result<String, BackendError> {
        let name = RunnerName::parse(&spec.name)
            .map_err(|e| BackendError::Permanent(format!("the sandbox name is {e}")))?;
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
        let result = self.start(&name, &spec).await;
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

    /// A finished runner's output for a failure tail. Not kept: the local backend removes a
    /// runner's directory (and its log) when it ends, so failures show their exit status
    /// only (README, "Why a runner failed").
    pub fn output(&self, _id: &str) -> Option<String> {
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sandboxes> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent
        // because every update is a single insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user runners run as, if not the service's; an error if `prepare` has not looked
    /// it up, so a runner never runs as the service's user by mistake.
    fn run_as(&self) -> Result<Option<&RunAs>, BackendError> {
        match (&self.config.run_as, self.run_as.get()) {
            (None, _) => Ok(None),
            (Some(_), Some(user)) => Ok(Some(user)),
            (Some(name), None) => Err(BackendError::Permanent(format!(
                "LOCAL_RUN_AS={name} was not looked up: the backend was not prepared"
            ))),
        }
    }

    /// Paths are built only from checked runner names, which cannot leave the work
    /// directory.
    fn paths(&self, name: &RunnerName) -> Paths {
        Paths {
            dir: self.config.work_dir.join(name.as_str()),
            meta: self.config.work_dir.join(format!("{name}.json")),
            log: self.config.work_dir.join(format!("{name}.log")),
        }
    }

    /// Registers the sandbox as live and spawns the task that ends it.
    fn watch(&self, meta: Meta, child: Option<tokio::process::Child>) {
        let stop = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(false);
        self.lock().live.insert(
            meta.name.to_string(),
            Live {
                created_at: meta.created_at,
                stop: stop.clone(),
                finished: done_rx,
            },
        );
        let paths = self.paths(&meta.name);
        let state = self.state.clone();
        tokio::spawn(async move {
            let how = process::supervise(&meta, child, &stop).await;
            tracing::info!(runner.name = %meta.name, ended = %how, "local sandbox ended");
            process::log_tail(meta.name.as_str(), &paths.log).await;
            paths.remove().await;
            {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                st.live.remove(meta.name.as_str());
                if st.exits.len() == EXITS_KEPT {
                    st.exits.pop_front();
                }
                st.exits.push_back((meta.name.to_string(), how));
            }
            let _ = done_tx.send(true);
        });
    }
}

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

fn permanent(what: &str, path: &Path, e: std::io::Error) -> BackendError {
    BackendError::Permanent(format!("could not {what} ({}): {e}", path.display()))
}
