//! Who a runner runs as, and what environment it gets.
//!
//! By default a runner runs as the service's own user, so a job can read the service's
//! environment through `/proc/<pid>/environ` and the files the service can read.
//! `LOCAL_RUN_AS=user` runs runners as another user instead, which needs the service to
//! run as root. In every mode a runner's environment is built from an allowlist: the
//! service's tokens and secrets are never passed on.

use std::path::{Path, PathBuf};

use nix::unistd::{User, geteuid};

use super::permanent;
use crate::backend::BackendError;

/// The `LOCAL_RUN_AS` user, resolved once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks the user up and checks the service can switch to it, and that switching
    /// protects anything (a runner running as the service's own user could still read it).
    pub fn resolve(name: &str) -> Result<RunAs, BackendError> {
        let refuse = |why: String| BackendError::Permanent(format!("LOCAL_RUN_AS={name}: {why}"));
        let user = User::from_name(name)
            .map_err(|e| refuse(format!("the user could not be looked up: {e}")))?
            .ok_or_else(|| refuse("there is no such user on this machine".into()))?;
        let me = geteuid().as_raw();
        if user.uid.as_raw() == me {
            return Err(refuse(format!(
                "that is the service's own user (uid {me}), so runners would still see the \
                 service; name another user or leave LOCAL_RUN_AS unset"
            )));
        }
        if me != 0 {
            return Err(refuse(format!(
                "running runners as another user needs the service to run as root (it runs as uid {me})"
            )));
        }
        Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }

    /// Gives the runner's fresh copy to the user (owner-only), so the runner can write in
    /// it and other users cannot read it.
    pub fn take_copy(&self, dir: &Path) -> Result<(), BackendError> {
        chown_tree(dir, self.uid, self.gid)
            .map_err(|e| permanent("give the runner's copy to LOCAL_RUN_AS", dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| permanent("make the runner's copy private", dir, e))
    }
}

/// Service variables a runner may see, whoever it runs as: none of them is a secret.
const PASSED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];
/// Service variables passed only when the runner runs as the service's user, since they
/// describe that user.
const PASSED_ENV_SAME_USER: &[&str] = &["HOME", "USER", "TMPDIR"];

/// The runner's whole environment: the allowlisted part of the service's (`service_env`),
/// the user's identity, and the JIT config. Nothing else: not `GITHUB_TOKEN`,
/// `WEBHOOK_SECRET`, `MODAL_TOKEN_*` nor any variable added later.
pub(super) fn runner_env(
    service_env: impl Iterator<Item = (String, String)>,
    run_as: Option<&RunAs>,
    jit_config: &str,
) -> Vec<(String, String)> {
    let passed = |k: &str| PASSED_ENV.contains(&k) || (run_as.is_none() && PASSED_ENV_SAME_USER.contains(&k));
    let mut env: Vec<(String, String)> = service_env.filter(|(k, _)| passed(k)).collect();
    match run_as {
        Some(user) => env.extend([
            ("HOME".to_string(), user.home.display().to_string()),
            ("USER".to_string(), user.name.clone()),
            ("LOGNAME".to_string(), user.name.clone()),
        ]),
        // The runner refuses to run as root unless told it may; as the service's user it
        // runs as root whenever the service does.
        None => env.push(("RUNNER_ALLOW_RUNASROOT".to_string(), "1".to_string())),
    }
    env.push((
        "ACTIONS_RUNNER_INPUT_JITCONFIG".to_string(),
        jit_config.to_string(),
    ));
    env
}

/// `chown -R` without following symbolic links.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
