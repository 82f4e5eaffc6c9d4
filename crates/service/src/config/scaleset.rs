//! `JOB_SOURCE=scaleset`: the scale set's name, its extra labels and where it lives.

use super::args::{JobSourceKind, ServeArgs};
use super::{ConfigError, err};
use crate::domain::RepoAllowList;
use crate::github::{RunnerHome, RunnerScope};

/// Where jobs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobSource {
    /// Signed webhooks at `POST /webhook` (the default).
    Webhook,
    /// A runner scale set's message queue.
    ScaleSet(ScaleSetSettings),
}

/// One runner scale set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetSettings {
    /// `SCALE_SET_NAME`: what workflows name in `runs-on`.
    pub name: String,
    /// `SCALE_SET_LABELS`: extra labels, each once, without the name.
    pub labels: Vec<String>,
    /// The scope its config URL names (from `RUNNER_SCOPE` and `ALLOWED_REPOS`).
    pub home: RunnerHome,
}

/// `SCALE_SET_LABELS`: comma-separated, blanks dropped, each once (without case), the
/// name left out (it is always the first label).
pub(super) fn labels(raw: Option<&str>, name: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for label in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if label.chars().any(char::is_whitespace) {
            return Err(err(
                "SCALE_SET_LABELS",
                format!("label {label:?} contains whitespace"),
            ));
        }
        let seen = out.iter().any(|l| l.eq_ignore_ascii_case(label)) || label.eq_ignore_ascii_case(name);
        if !seen {
            out.push(label.to_owned());
        }
    }
    Ok(out)
}

/// The one place a scale set lives: an organisation or enterprise scope serves many
/// repositories, a repository scope one. The scope must name exactly one place.
pub(super) fn home(scope: &RunnerScope, allow: &RepoAllowList) -> Result<RunnerHome, ConfigError> {
    match scope {
        RunnerScope::Enterprise(slug) => Ok(RunnerHome::Enterprise(slug.clone())),
        RunnerScope::Org => match allow.owners() {
            [owner] => Ok(RunnerHome::Org(owner.clone())),
            _ => Err(err(
                "ALLOWED_REPOS",
                "with JOB_SOURCE=scaleset and RUNNER_SCOPE=org, must name repositories of exactly one organisation (the scale set's)",
            )),
        },
        RunnerScope::Repo => match allow.listed() {
            Some([repo]) if !allow.has_wildcards() => Ok(RunnerHome::Repo(repo.clone())),
            _ => Err(err(
                "ALLOWED_REPOS",
                "with JOB_SOURCE=scaleset and RUNNER_SCOPE=repo, must name exactly one repository (the scale set's)",
            )),
        },
    }
}

/// The job source the arguments ask for.
pub(super) fn source(
    args: &ServeArgs,
    scope: &RunnerScope,
    allow: &RepoAllowList,
) -> Result<JobSource, ConfigError> {
    match args.job_source {
        JobSourceKind::Webhook => Ok(JobSource::Webhook),
        JobSourceKind::Scaleset => Ok(JobSource::ScaleSet(ScaleSetSettings {
            name: args.scale_set_name.clone(),
            labels: labels(args.scale_set_labels.as_deref(), &args.scale_set_name)?,
            home: home(scope, allow)?,
        })),
    }
}
