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
    /// The message queues of one or more runner scale sets (`SCALE_SETS`), all at one place.
    ScaleSet(Vec<ScaleSetSettings>),
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
    /// The machine of its runners (`cpu=`, `memory=`, `gpu=` labels from `SCALE_SETS`), for
    /// jobs that do not ask for one themselves.
    pub machine: Vec<String>,
}

/// `SCALE_SETS`: `NAME[:LABEL;LABEL…]` entries, comma-separated; names unique (without case),
/// machine labels among `cpu=`, `memory=`, `gpu=` and valid as a job's would be.
pub(super) fn sets(raw: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let bad = |m: String| err("SCALE_SETS", m);
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, spec) = entry.split_once(':').unwrap_or((entry, ""));
        let name = name.trim();
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(bad(format!("{entry:?} has no valid scale set name")));
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(bad(format!("the scale set {name} is named twice")));
        }
        let machine: Vec<String> = spec
            .split(';')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        for label in &machine {
            let key = label.split_once('=').map(|(k, _)| k.trim().to_ascii_lowercase());
            if !matches!(key.as_deref(), Some("cpu" | "memory" | "gpu")) {
                return Err(bad(format!(
                    "{label:?} of {name} is not a cpu=, memory= or gpu= label"
                )));
            }
        }
        crate::domain::MachineSpec::from_labels(&crate::domain::LabelSet::new(
            machine.iter().map(String::as_str),
        ))
        .map_err(|e| bad(format!("the machine of {name}: {e}")))?;
        out.push((name.to_owned(), machine));
    }
    if out.is_empty() {
        return Err(bad("names no scale set".into()));
    }
    Ok(out)
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
        JobSourceKind::Scaleset => {
            let home = home(scope, allow)?;
            let named = match args.scale_sets.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(raw) => sets(raw)?,
                None => vec![(args.scale_set_name.clone(), Vec::new())],
            };
            named
                .into_iter()
                .map(|(name, machine)| {
                    Ok(ScaleSetSettings {
                        labels: labels(args.scale_set_labels.as_deref(), &name)?,
                        name,
                        home: home.clone(),
                        machine,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(JobSource::ScaleSet)
        }
    }
}
