//! Organisations, enterprises and their runner groups (docs/github.md §2.3).
//!
//! An organisation exists as soon as a repository it owns does; an enterprise is added
//! with the organisations it holds. Each has a "Default" runner group with id 1, as on
//! GitHub, plus the groups a test adds. A runner registered at an organisation may take the
//! jobs of every repository of the organisation; at an enterprise, of every repository of
//! its organisations.

use serde_json::{Value, json};

use super::endpoints::{Params, paginate, with_link};
use super::routes::Reply;
use super::state::State;
use super::views::{OwnerKind, RepoView, Scope, stable_id};

/// The id of every organisation's and enterprise's default group.
pub const DEFAULT_GROUP_ID: u64 = 1;

/// A runner group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RunnerGroup {
    pub id: u64,
    pub name: String,
}

impl RunnerGroup {
    fn default_group() -> Self {
        Self {
            id: DEFAULT_GROUP_ID,
            name: "Default".to_owned(),
        }
    }

    /// An item of `GET …/actions/runner-groups`.
    fn json(&self, base: &str) -> Value {
        json!({
            "id": self.id, "name": self.name, "visibility": "all",
            "default": self.id == DEFAULT_GROUP_ID,
            "runners_url": format!("{base}/actions/runner-groups/{}/runners", self.id),
            "inherited": false, "allows_public_repositories": false,
            "restricted_to_workflows": false, "selected_workflows": [],
            "workflow_restrictions_read_only": false,
        })
    }
}

/// An organisation or an enterprise.
#[derive(Debug, Clone)]
pub(super) struct Account {
    /// The login or slug, as first spelled.
    pub name: String,
    /// The enterprise an organisation belongs to.
    pub enterprise: Option<String>,
    pub groups: Vec<RunnerGroup>,
}

impl Account {
    fn new(name: &str, enterprise: Option<String>) -> Self {
        Self {
            name: name.to_owned(),
            enterprise,
            groups: vec![RunnerGroup::default_group()],
        }
    }
}

impl State {
    /// Records the organisation owning `repo`, if an organisation owns it.
    pub fn note_owner(&mut self, repo: &RepoView) {
        if repo.owner_kind == OwnerKind::Organization {
            self.orgs
                .entry(repo.owner.to_ascii_lowercase())
                .or_insert_with(|| Account::new(&repo.owner, None));
        }
    }

    /// Adds an enterprise holding `orgs` (created if unknown).
    pub fn add_enterprise(&mut self, slug: &str, orgs: &[&str]) {
        self.enterprises
            .entry(slug.to_ascii_lowercase())
            .or_insert_with(|| Account::new(slug, None));
        for org in orgs {
            let account = self
                .orgs
                .entry(org.to_ascii_lowercase())
                .or_insert_with(|| Account::new(org, None));
            account.enterprise = Some(slug.to_ascii_lowercase());
        }
    }

    /// Adds a runner group to an organisation or enterprise; its id, or `None` if the
    /// account is unknown.
    pub fn add_runner_group(&mut self, at: &Scope, name: &str) -> Option<u64> {
        let id = self.next_group_id;
        let account = self.account_mut(at)?;
        account.groups.push(RunnerGroup {
            id,
            name: name.to_owned(),
        });
        self.next_group_id += 1;
        Some(id)
    }

    fn account_mut(&mut self, at: &Scope) -> Option<&mut Account> {
        match at {
            Scope::Organization(login) => self.orgs.get_mut(&login.to_ascii_lowercase()),
            Scope::Enterprise(slug) => self.enterprises.get_mut(&slug.to_ascii_lowercase()),
            Scope::Repository(_) | Scope::User(_) => None,
        }
    }

    fn account(&self, at: &Scope) -> Option<&Account> {
        match at {
            Scope::Organization(login) => self.orgs.get(&login.to_ascii_lowercase()),
            Scope::Enterprise(slug) => self.enterprises.get(&slug.to_ascii_lowercase()),
            Scope::Repository(_) | Scope::User(_) => None,
        }
    }

    /// `at` with its canonical spelling, if it exists. A user exists when it owns a
    /// repository the fake knows.
    pub fn resolve(&self, at: &Scope) -> Option<Scope> {
        match at {
            Scope::Repository(name) => self.repo(name).map(|r| Scope::Repository(r.full_name.clone())),
            Scope::Organization(_) => self.account(at).map(|a| Scope::Organization(a.name.clone())),
            Scope::Enterprise(_) => self.account(at).map(|a| Scope::Enterprise(a.name.clone())),
            Scope::User(login) => self
                .repos
                .values()
                .find(|r| r.owner_kind == OwnerKind::User && r.owner.eq_ignore_ascii_case(login))
                .map(|r| Scope::User(r.owner.clone())),
        }
    }

    /// The name of group `id` where runners register at `at`. Repository runners have
    /// only the group the fake was configured with ("Default").
    pub fn group_name(&self, at: &Scope, id: u64) -> Option<String> {
        match at {
            Scope::Repository(_) => (id == self.runner_group_id).then(|| "Default".to_owned()),
            _ => self
                .account(at)?
                .groups
                .iter()
                .find(|g| g.id == id)
                .map(|g| g.name.clone()),
        }
    }

    /// Whether a runner registered at `home` may take the jobs of repository `repo_key`
    /// (lower-cased `owner/repo`).
    pub fn serves(&self, home: &Scope, repo_key: &str) -> bool {
        let owner = repo_key.split_once('/').map_or(repo_key, |(o, _)| o);
        match home {
            Scope::Repository(full) => full.eq_ignore_ascii_case(repo_key),
            Scope::Organization(login) => login.eq_ignore_ascii_case(owner),
            Scope::Enterprise(slug) => self
                .orgs
                .get(owner)
                .and_then(|o| o.enterprise.as_deref())
                .is_some_and(|e| e.eq_ignore_ascii_case(slug)),
            Scope::User(_) => false,
        }
    }

    /// The account id and kind of `owner`, for installation answers.
    pub fn owner_facts(&self, at: &Scope) -> (u64, OwnerKind) {
        let kind = match at {
            Scope::Organization(_) => OwnerKind::Organization,
            Scope::User(_) => OwnerKind::User,
            _ => self
                .repos
                .values()
                .find(|r| r.owner.eq_ignore_ascii_case(at.owner()))
                .map_or(OwnerKind::Organization, |r| r.owner_kind),
        };
        (stable_id(at.owner(), 1_000_000, 150_000_000), kind)
    }
}

/// `GET /orgs/{org}/actions/runner-groups` and the enterprise's, paged.
pub(super) fn list_groups(state: &State, at: &Scope, params: &Params) -> Reply {
    let Some(account) = state.account(at) else {
        return Reply::not_found();
    };
    let base = format!("{}{}", state.api_url, at.path());
    let items: Vec<Value> = account.groups.iter().map(|g| g.json(&base)).collect();
    let (page, link) = paginate(&items, params, &format!("{base}/actions/runner-groups"));
    with_link(
        Reply::json(200, json!({ "total_count": items.len(), "runner_groups": page })),
        link,
    )
}
