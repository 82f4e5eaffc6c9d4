//! A sandbox outlives the service: a metadata file next to its directory says which
//! process it is, so a restarted service adopts the processes still running and cleans up
//! after the ones that ended (or whose create never finished).

use std::collections::HashSet;
use std::path::Path;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::process::{is_alive, kill_group};
use super::{LocalBackend, permanent};
use crate::backend::BackendError;

/// Persisted next to each sandbox directory so a restarted service can find it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Meta {
    pub name: String,
    pub pid: i32,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to tell
    /// our process from an unrelated one that reused its pid.
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

impl LocalBackend {
    /// Checks the runner directory, then adopts this deployment's sandboxes left by an
    /// earlier process and cleans up those that ended while no one watched. Another
    /// deployment's sandboxes (their metadata says whose) are left alone.
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
        let mut kept = HashSet::new();
        for path in metas {
            if let Some(name) = self.adopt(&path).await {
                kept.insert(name);
            }
        }
        for dir in dirs {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !kept.contains(&n)) {
                // A copy whose process never started (crash during create).
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
        Ok(())
    }

    /// Takes over a sandbox described by a metadata file; returns its name if it runs, or
    /// if it is another deployment's (whose files stay).
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
        if !meta.belongs_to(&self.config.deployment) {
            tracing::debug!(runner.name = %name, deployment = ?meta.deployment, "another deployment's local sandbox; left alone");
            return Some(name);
        }
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
}

/// Writes the metadata atomically (a temporary file, then a rename), so a crash never
/// leaves half a file to adopt.
pub(super) async fn write_meta(path: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
