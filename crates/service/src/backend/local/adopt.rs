//! A sandbox outlives the service: a metadata file next to its directory says which
//! process it is, so a restarted service adopts the processes still running and cleans up
//! after the ones that ended (or whose create never finished).
//!
//! The metadata file is written before the sandbox's directory is made, so it also marks
//! what the service made: start-up removes only directories that a metadata file names,
//! and leaves anything else in the work directory alone. A name read from a file is checked
//! as a runner name before any path is built from it, and a process is adopted only if its
//! start time is the recorded one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::identity::RunAs;
use super::process::is_ours;
use super::workdir::ensure_private;
use super::{LocalBackend, permanent};
use crate::backend::BackendError;
use crate::domain::RunnerName;

/// Persisted next to each sandbox directory so a restarted service can find it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Meta {
    /// Checked when read: a file naming anything but a runner name is not ours.
    #[serde(serialize_with = "write_name", deserialize_with = "read_name")]
    pub name: RunnerName,
    /// 0 until the process is started.
    pub pid: i32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell
    /// our process from an unrelated one that reused its pid. `None`: never adopted.
    pub start_ticks: Option<u64>,
    pub created_at: i64,
    pub deadline: i64,
    /// The deployment that made it; absent in metadata written before deployments had
    /// ids (such a sandbox is adopted by whoever starts).
    #[serde(default)]
    pub deployment: Option<String>,
}

impl Meta {
    /// Whether the sandbox belongs to `deployment`.
    pub fn belongs_to(&self, deployment: &str) -> bool {
        self.deployment.as_deref().is_none_or(|d| d == deployment)
    }
}

fn write_name<S: Serializer>(name: &RunnerName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn read_name<'de, D: Deserializer<'de>>(d: D) -> Result<RunnerName, D::Error> {
    let text = String::deserialize(d)?;
    RunnerName::parse(&text).map_err(serde::de::Error::custom)
}

/// Mode of the work directory: private, or passable (not readable) by the `LOCAL_RUN_AS`
/// group, whose runners must reach their own copies through it.
const PRIVATE: u32 = 0o700;
const PASSABLE_BY_GROUP: u32 = 0o710;

impl LocalBackend {
    /// Checks the runner directory and the work directory, looks up `LOCAL_RUN_AS`, then
    /// adopts this deployment's sandboxes left by an earlier process and cleans up those
    /// that ended while no one watched. Another deployment's sandboxes (their metadata says
    /// whose) are left alone.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        let run_sh = self.config.runner_dir.join("run.sh");
        if !run_sh.is_file() {
            return Err(BackendError::Permanent(format!(
                "LOCAL_RUNNER_DIR {} has no run.sh",
                self.config.runner_dir.display()
            )));
        }
        let run_as = match &self.config.run_as {
            Some(name) => {
                let resolved = RunAs::resolve(name)?;
                Some(self.run_as.get_or_init(|| resolved))
            }
            None => None,
        };
        match run_as {
            Some(user) => ensure_private(&self.config.work_dir, PASSABLE_BY_GROUP, Some(user.gid))?,
            None => ensure_private(&self.config.work_dir, PRIVATE, None)?,
        }
        for path in self.meta_files().await? {
            self.adopt(&path).await;
        }
        Ok(())
    }

    /// The work directory's `*.json` files.
    async fn meta_files(&self) -> Result<Vec<PathBuf>, BackendError> {
        let dir = &self.config.work_dir;
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| permanent("read the work directory", dir, e))?;
        let mut metas = Vec::new();
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                metas.push(path);
            }
        }
        Ok(metas)
    }

    /// Takes over a sandbox described by a metadata file if its process runs.
    /// A sandbox whose process is gone (or is not provably ours) has its files removed;
    /// a file that is not our metadata is left alone.
    async fn adopt(&self, meta_path: &Path) {
        let meta = match read_meta(meta_path).await {
            Ok(m) => m,
            Err(why) => {
                tracing::warn!(path = %meta_path.display(), %why, "left alone: not a local sandbox's metadata");
                return;
            }
        };
        if !meta.belongs_to(&self.config.deployment) {
            tracing::debug!(runner.name = %meta.name, deployment = ?meta.deployment, "another deployment's local sandbox; left alone");
            return;
        }
        if is_ours(meta.pid, meta.start_ticks) {
            tracing::info!(runner.name = %meta.name, pid = meta.pid, "adopted a running local sandbox");
            self.watch(meta, None);
        } else {
            // The process ended, or its pid now names another process: nothing is
            // signalled, since a group whose leader is gone cannot be told from a stranger's.
            self.paths(&meta.name).remove().await;
        }
    }
}

/// Reads a metadata file, which must name the sandbox its file name says.
async fn read_meta(path: &Path) -> Result<Meta, String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let stem = path.file_stem().and_then(|s| s.to_str());
    if stem != Some(meta.name.as_str()) {
        return Err("it names another sandbox than its file name".into());
    }
    Ok(meta)
}

/// Writes the metadata atomically (a temporary file, then a rename), so a crash never
/// leaves half a file to adopt. Only the service's user can read it.
pub(super) async fn write_meta(path: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}
