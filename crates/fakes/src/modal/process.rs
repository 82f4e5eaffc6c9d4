//! A sandbox's "container": the configured runner command in its own process group and
//! temp directory, watched by a supervisor task that decides the sandbox's result.
//!
//! The supervisor kills the group before it reaps the leader, while the group id cannot
//! have been recycled. After a normal exit it signals the group once more to clear
//! stragglers: a group id is not reused while any member lives, so only a group that has
//! just emptied and been re-created by an unrelated process in between could be hit.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use modal_proto::GenericResult;
use modal_proto::generic_result::GenericStatus;

use super::lifecycle::Lifecycle;
use super::state::Shared;

/// Host variables every sandbox inherits; everything else comes from its secrets.
const HOST_VARIABLES: [&str; 3] = ["PATH", "HOME", "TMPDIR"];
/// Bytes of the entrypoint's output kept once its directory is removed.
const LOG_TAIL_BYTES: u64 = 4096;
/// Name of the output file in the sandbox directory.
const LOG_FILE: &str = "sandbox.log";

/// Process groups of live entrypoints, so dropping the fake can still kill them.
#[derive(Debug, Default)]
pub(crate) struct ProcessGroups {
    groups: Mutex<HashSet<Pid>>,
}

impl ProcessGroups {
    fn insert(&self, pgid: Pid) {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pgid);
    }

    fn remove(&self, pgid: Pid) {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pgid);
    }

    /// SIGKILLs every group still registered (last resort when the fake is dropped).
    pub(crate) fn kill_all(&self) {
        let groups: Vec<Pid> = self
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        groups.into_iter().for_each(kill_group);
    }
}

/// SIGKILL to a whole process group; a group that is already gone is fine.
fn kill_group(pgid: Pid) {
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(pgid = pgid.as_raw(), %error, "cannot kill sandbox process group")
        }
    }
}

/// What the supervisor runs for one sandbox.
pub(crate) struct Launch {
    pub(crate) sandbox_id: String,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    pub(crate) lifecycle: Lifecycle,
}

/// Starts the sandbox's supervisor in the background.
pub(crate) fn launch(shared: &Arc<Shared>, launch: Launch) {
    let shared_for_task = Arc::clone(shared);
    shared.tracker.spawn(async move {
        let log_tail = if shared_for_task.settings.runner_command.is_empty() {
            idle(&shared_for_task, &launch).await;
            None
        } else {
            run_entrypoint(&shared_for_task, &launch).await
        };
        launch.lifecycle.mark_stopped(log_tail);
    });
}

/// A sandbox without a command: it lives until terminated, timed out or shut down.
async fn idle(shared: &Shared, launch: &Launch) {
    tokio::select! {
        () = launch.lifecycle.decided() => {}
        () = tokio::time::sleep(launch.timeout) => {
            launch.lifecycle.finish(timeout_result(launch.timeout));
        }
        () = shared.shutdown.cancelled() => {
            launch.lifecycle.finish(shutdown_result());
        }
    }
}

/// Why the supervisor stopped watching the entrypoint.
enum End {
    Exited(io::Result<ExitStatus>),
    Terminated,
    TimedOut,
    Shutdown,
}

/// Runs the command until it exits or must be killed; returns the tail of its output.
async fn run_entrypoint(shared: &Shared, launch: &Launch) -> Option<String> {
    let dir = match SandboxDir::create(&launch.sandbox_id) {
        Ok(dir) => dir,
        Err(error) => {
            let message = format!("cannot create the sandbox directory: {error}");
            launch.lifecycle.finish(init_failure(message));
            return None;
        }
    };
    let mut child = match spawn(&shared.settings.runner_command, launch, &dir) {
        Ok(child) => child,
        Err(error) => {
            let message = format!("cannot start the entrypoint: {error}");
            launch.lifecycle.finish(init_failure(message));
            return dir.log_tail();
        }
    };
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    if let Some(pgid) = pgid {
        shared.groups.insert(pgid);
    }
    let end = watch_child(shared, launch, &mut child).await;
    if let Some(pgid) = pgid {
        // Kills the leader if still alive, and any stragglers it left behind otherwise.
        kill_group(pgid);
        let _ = child.wait().await;
        shared.groups.remove(pgid);
    }
    let result = match end {
        End::Exited(status) => Some(exit_result(status)),
        End::TimedOut => Some(timeout_result(launch.timeout)),
        End::Shutdown => Some(shutdown_result()),
        End::Terminated => None,
    };
    if let Some(result) = result {
        launch.lifecycle.finish(result);
    }
    dir.log_tail()
}

/// Waits for the first reason to stop. `biased` polls the child first, so a `Terminated`
/// end guarantees the leader has not been reaped yet.
async fn watch_child(shared: &Shared, launch: &Launch, child: &mut Child) -> End {
    tokio::select! {
        biased;
        status = child.wait() => End::Exited(status),
        () = launch.lifecycle.decided() => End::Terminated,
        () = tokio::time::sleep(launch.timeout) => End::TimedOut,
        () = shared.shutdown.cancelled() => End::Shutdown,
    }
}

/// The command in `dir`, in a new process group, with only the host basics, the
/// secrets' variables and `MODAL_SANDBOX_ID` in its environment.
fn spawn(command: &[String], launch: &Launch, dir: &SandboxDir) -> io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty runner command"))?;
    let stdout = File::create(dir.log_path())?;
    let stderr = stdout.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir.path()).env_clear();
    for key in HOST_VARIABLES {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(&launch.env)
        .env("MODAL_SANDBOX_ID", OsStr::new(&launch.sandbox_id))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

fn exit_result(status: io::Result<ExitStatus>) -> GenericResult {
    match status {
        Ok(status) if status.success() => GenericResult {
            status: GenericStatus::Success as i32,
            ..GenericResult::default()
        },
        Ok(status) => {
            let (exitcode, exception) = match (status.code(), status.signal()) {
                (Some(code), _) => (code, format!("Sandbox exited with code {code}")),
                (None, Some(signal)) => (128 + signal, format!("Sandbox killed by signal {signal}")),
                (None, None) => (1, "Sandbox exited".to_owned()),
            };
            GenericResult {
                status: GenericStatus::Failure as i32,
                exception,
                exitcode,
                ..GenericResult::default()
            }
        }
        Err(error) => GenericResult {
            status: GenericStatus::InternalFailure as i32,
            exception: format!("cannot wait for the entrypoint: {error}"),
            ..GenericResult::default()
        },
    }
}

fn timeout_result(timeout: Duration) -> GenericResult {
    GenericResult {
        status: GenericStatus::Timeout as i32,
        exception: format!("Sandbox timed out after {}s", timeout.as_secs()),
        ..GenericResult::default()
    }
}

fn shutdown_result() -> GenericResult {
    GenericResult {
        status: GenericStatus::Terminated as i32,
        exception: "fake Modal shut down".to_owned(),
        ..GenericResult::default()
    }
}

fn init_failure(exception: String) -> GenericResult {
    tracing::warn!(%exception, "fake Modal sandbox failed to start");
    GenericResult {
        status: GenericStatus::InitFailure as i32,
        exception,
        ..GenericResult::default()
    }
}

/// The sandbox's working directory; removed (with its log) when dropped.
struct SandboxDir {
    path: PathBuf,
}

impl SandboxDir {
    fn create(sandbox_id: &str) -> io::Result<Self> {
        let name = format!("fake-modal-{sandbox_id}-{}", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(Self { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn log_path(&self) -> PathBuf {
        self.path.join(LOG_FILE)
    }

    /// The last [`LOG_TAIL_BYTES`] of the output, if the log can be read.
    fn log_tail(&self) -> Option<String> {
        let mut file = File::open(self.log_path()).ok()?;
        let len = file.metadata().ok()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
            .ok()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove sandbox directory");
            }
        }
    }
}
