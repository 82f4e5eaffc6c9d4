//! Where runners are registered (docs/github.md §2.1–2.3): at the repository of the job
//! (`RUNNER_SCOPE=repo`), at its owner organisation (`org`), or at one enterprise
//! (`enterprise`). A runner's registration, lookup, listing and removal all go to the same
//! place, its [`RunnerHome`]; organisation and enterprise runners join a runner group,
//! named by `RUNNER_GROUP` and resolved to an id once per home at start-up (docs/design.md §8).

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use super::{GitHub, GitHubError};
use crate::domain::RepoName;

/// `RUNNER_SCOPE`: where runners are registered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunnerScope {
    /// At the job's repository (group 1, "Default").
    #[default]
    Repo,
    /// At the organisation owning the job's repository.
    Org,
    /// At the enterprise with this slug (`GITHUB_ENTERPRISE`).
    Enterprise(String),
}

impl RunnerScope {
    /// Where the runner of a job of `repo` is registered.
    pub fn home(&self, repo: &RepoName) -> RunnerHome {
        match self {
            RunnerScope::Repo => RunnerHome::Repo(repo.clone()),
            RunnerScope::Org => RunnerHome::Org(repo.owner().to_string()),
            RunnerScope::Enterprise(slug) => RunnerHome::Enterprise(slug.clone()),
        }
    }

    /// Where the runners of every repository of `owner` are registered; `None` for
    /// repository runners, which live at each repository.
    pub fn owner_home(&self, owner: &str) -> Option<RunnerHome> {
        match self {
            RunnerScope::Repo => None,
            RunnerScope::Org => Some(RunnerHome::Org(owner.to_string())),
            RunnerScope::Enterprise(slug) => Some(RunnerHome::Enterprise(slug.clone())),
        }
    }

    /// The name of the scope, as `RUNNER_SCOPE` spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunnerScope::Repo => "repo",
            RunnerScope::Org => "org",
            RunnerScope::Enterprise(_) => "enterprise",
        }
    }
}

/// One place runners are registered at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerHome {
    Repo(RepoName),
    Org(String),
    Enterprise(String),
}

impl RunnerHome {
    /// URL path segments of `rest` under this place.
    pub(super) fn path(&self, rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = match self {
            RunnerHome::Repo(repo) => vec!["repos".into(), repo.owner().into(), repo.name().into()],
            RunnerHome::Org(org) => vec!["orgs".into(), org.clone()],
            RunnerHome::Enterprise(slug) => vec!["enterprises".into(), slug.clone()],
        };
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    /// The account whose token (and rate-limit budget) calls about this place use: the
    /// repository's owner, the organisation, or the enterprise's slug.
    pub fn owner(&self) -> &str {
        match self {
            RunnerHome::Repo(repo) => repo.owner(),
            RunnerHome::Org(org) => org,
            RunnerHome::Enterprise(slug) => slug,
        }
    }

    /// A case-insensitive key: two homes are the same place when their keys are equal.
    pub fn key(&self) -> String {
        match self {
            RunnerHome::Repo(repo) => format!("repo:{}", repo.key()),
            RunnerHome::Org(org) => format!("org:{}", org.to_ascii_lowercase()),
            RunnerHome::Enterprise(slug) => format!("enterprise:{}", slug.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for RunnerHome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerHome::Repo(repo) => write!(f, "repository {repo}"),
            RunnerHome::Org(org) => write!(f, "organisation {org}"),
            RunnerHome::Enterprise(slug) => write!(f, "enterprise {slug}"),
        }
    }
}

/// The runner group JIT runners join: `RUNNER_GROUP_ID`, or `RUNNER_GROUP` resolved to
/// each home's id of that name (a group's id differs between organisations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerGroups {
    /// The same id everywhere (repository runners: 1, the "Default" group).
    Id(u64),
    /// A group name, and its id at each home resolved so far (by `RunnerHome::key`).
    Named { name: String, ids: HashMap<String, u64> },
}

impl Default for RunnerGroups {
    fn default() -> Self {
        RunnerGroups::Id(1)
    }
}

/// A runner group as `GET …/actions/runner-groups` lists it.
#[derive(Debug, Clone, Deserialize)]
struct GroupItem {
    id: u64,
    name: String,
}

#[derive(Deserialize)]
struct GroupList {
    #[serde(default)]
    runner_groups: Vec<GroupItem>,
}

/// Why the runner group could not be resolved at start-up.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("RUNNER_GROUP: the {home} has no runner group named `{name}`")]
    Missing { name: String, home: String },
    #[error("RUNNER_GROUP: could not list the runner groups of the {home}: {source}")]
    Lookup { home: String, source: GitHubError },
}

impl RunnerGroups {
    /// The group id of runners registered at `home`; `None` for a name not resolved
    /// there.
    pub fn id_for(&self, home: &RunnerHome) -> Option<u64> {
        match self {
            RunnerGroups::Id(id) => Some(*id),
            RunnerGroups::Named { ids, .. } => ids.get(&home.key()).copied(),
        }
    }

    /// Resolves a group name at every home in `homes` (once per home); an id needs no
    /// lookup. A home without a group of that name is an error that names both.
    pub async fn resolve(&mut self, github: &GitHub, homes: &[RunnerHome]) -> Result<(), GroupError> {
        let RunnerGroups::Named { name, ids } = self else {
            return Ok(());
        };
        for home in homes {
            if ids.contains_key(&home.key()) {
                continue;
            }
            let groups = github
                .runner_groups(home)
                .await
                .map_err(|source| GroupError::Lookup {
                    home: home.to_string(),
                    source,
                })?;
            let found = groups
                .into_iter()
                .find(|g| g.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| GroupError::Missing {
                    name: name.clone(),
                    home: home.to_string(),
                })?;
            tracing::info!(home = %home, group = %name, group.id = found.id, "runner group resolved");
            ids.insert(home.key(), found.id);
        }
        Ok(())
    }
}

impl GitHub {
    /// Every runner group of an organisation or enterprise (`GET …/actions/runner-groups`,
    /// paged).
    async fn runner_groups(&self, home: &RunnerHome) -> Result<Vec<GroupItem>, GitHubError> {
        let url = self.url(&home.path(&["actions", "runner-groups"]));
        let call = super::rate_limit::Call::essential(home.owner());
        self.get_pages(call, url, |l: GroupList| l.runner_groups).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scope_puts_a_repositorys_runners_in_its_own_place() {
        let repo = RepoName::parse("Acme/app").expect("valid");
        assert_eq!(
            RunnerScope::Repo.home(&repo).path(&["actions", "runners"]),
            ["repos", "Acme", "app", "actions", "runners"]
        );
        assert_eq!(
            RunnerScope::Org.home(&repo).path(&["actions", "runners"]),
            ["orgs", "Acme", "actions", "runners"]
        );
        assert_eq!(
            RunnerScope::Enterprise("big".into()).home(&repo).path(&["x"]),
            ["enterprises", "big", "x"]
        );
        assert_eq!(
            RunnerHome::Org("ACME".into()).key(),
            RunnerHome::Org("acme".into()).key()
        );
    }

    #[test]
    fn a_named_group_has_an_id_only_where_it_was_resolved() {
        let acme = RunnerHome::Org("acme".into());
        let beta = RunnerHome::Org("beta".into());
        let groups = RunnerGroups::Named {
            name: "ci".into(),
            ids: HashMap::from([(acme.key(), 7)]),
        };
        assert_eq!(groups.id_for(&acme), Some(7));
        assert_eq!(groups.id_for(&beta), None);
        assert_eq!(RunnerGroups::default().id_for(&beta), Some(1));
    }
}
