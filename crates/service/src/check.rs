//! `modal-github-runner check`: validates a deployment against the real services before
//! its first job, and says what to fix. Every check only reads: GETs at GitHub (no JIT
//! registration, no removal, no redelivery; in scale-set mode also two short-lived tokens), a name lookup at Modal (nothing created), and
//! the store opened read-only (no migration).
//!
//! The checks: the credentials can manage runners where they will be registered (and a
//! classic token has the scope for it); the GitHub App is installed on every allowed owner;
//! each `WEBHOOK_HOOK_ID` hook sends signed `workflow_job` events and its recent deliveries
//! succeeded; the Modal credentials work and the app can be looked up; the runner release
//! can be resolved; the database's schema is one this binary can use. With
//! `JOB_SOURCE=scaleset` the webhooks are not checked; instead the Actions service's auth
//! chain (registration token → `runner-registration` → admin token) and a lookup of each
//! scale set by name, without creating one or opening a session.

use std::fmt;
use std::time::Duration;

use crate::backend::modal::client::{ModalApi, ModalError};
use crate::backend::modal::proto::{AppGetOrCreateRequest, ObjectCreationType};
use crate::config::{BackendSettings, JobSource, ScaleSetSettings, Settings};
use crate::github::{Credentials, GitHub, GitHubConfig, GitHubError, Hook, RunnerHome, RunnerScope};
use crate::retry::Backoff;
use crate::runner_release;
use crate::scaleset::{ScaleSetClient, ScaleSetClientConfig, ScaleSetError};
use crate::store::inspect::{SchemaState, inspect};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Works, but something deserves a look (or will change at the first start).
    Warn,
    /// The deployment would not work: `check` exits non-zero.
    Fail,
}

/// One line of the report. No field ever holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked, e.g. `github token` or `webhook octo/app hook 1`.
    pub name: String,
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

impl CheckResult {
    fn new(name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            outcome,
            detail: detail.into(),
            fix: None,
        }
    }

    fn pass(name: impl Into<String>, detail: impl Into<String>) -> CheckResult {
        CheckResult::new(name, Outcome::Pass, detail)
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult::new(name, Outcome::Warn, detail).with_fix(fix)
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> CheckResult {
        CheckResult::new(name, Outcome::Fail, detail).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> CheckResult {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        write!(f, "{tag} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Runs every check that applies to `settings`, in order.
pub async fn run(settings: &Settings) -> Vec<CheckResult> {
    let mut out = Vec::new();
    match client(settings) {
        Ok(github) => {
            out.extend(runner_access(settings, &github).await);
            out.extend(app_installations(settings, &github).await);
            match &settings.source {
                JobSource::Webhook => out.extend(webhooks(settings, &github).await),
                JobSource::ScaleSet(sets) => {
                    out.push(CheckResult::pass(
                        "webhooks",
                        "not checked: JOB_SOURCE=scaleset takes jobs from the scale sets' message queues, not from webhooks",
                    ));
                    out.extend(scale_sets(settings, &github, sets).await);
                }
            }
            if let Some(r) = runner_release(settings, &github).await {
                out.push(r);
            }
        }
        Err(e) => out.push(CheckResult::fail(
            "github",
            format!("could not build the client: {e}"),
            "check GITHUB_API_URL",
        )),
    }
    if let Some(r) = modal(settings).await {
        out.push(r);
    }
    out.push(database(&settings.store.database_url).await);
    out
}

/// A GitHub client as the service builds it, with fewer retries: a check should answer
/// promptly.
fn client(settings: &Settings) -> Result<GitHub, GitHubError> {
    GitHub::new(
        GitHubConfig {
            api_url: settings.github.api_url.clone(),
            credentials: settings.github.credentials.clone(),
            timeout: settings.github.timeout,
            retry: Backoff::new(2, Duration::from_millis(500), Duration::from_secs(2)),
            scope: settings.github.scope.clone(),
            rate_reserve: settings.github.rate_reserve,
        },
        None,
    )
}

/// The places runners will be registered at, each once, and what cannot be checked.
fn homes(settings: &Settings, github: &GitHub) -> (Vec<RunnerHome>, Option<CheckResult>) {
    let allow = &settings.webhook.allow;
    let mut homes: Vec<RunnerHome> = Vec::new();
    let mut push = |home: RunnerHome| {
        if !homes.iter().any(|h| h.key() == home.key()) {
            homes.push(home);
        }
    };
    match settings.github.scope {
        RunnerScope::Repo => allow
            .listed()
            .unwrap_or_default()
            .iter()
            .for_each(|r| push(github.home_of(r))),
        _ => allow
            .owners()
            .iter()
            .filter_map(|o| github.owner_home(o))
            .for_each(&mut push),
    }
    let unchecked = if allow.owners().is_empty() {
        Some(CheckResult::warn(
            "github runners",
            "ALLOWED_REPOS is unset: every repository the webhook reaches is served, so none can be checked",
            "set ALLOWED_REPOS to the repositories (owner/repo) or owners (owner/*) served",
        ))
    } else if settings.github.scope == RunnerScope::Repo && allow.has_wildcards() {
        Some(CheckResult::warn(
            "github runners",
            "owner/* entries name no repository to check with repository runners",
            "make sure the credentials can administer every repository of those owners",
        ))
    } else {
        None
    };
    (homes, unchecked)
}

/// The credentials, by kind, as a report line names them.
fn credential_name(settings: &Settings) -> &'static str {
    match settings.github.credentials {
        Credentials::Token(_) => "github token",
        Credentials::App(_) => "github app",
    }
}

/// (1) The credentials can read the runner list where runners are registered, and a
/// classic token has the scope that managing them there needs.
async fn runner_access(settings: &Settings, github: &GitHub) -> Vec<CheckResult> {
    let (homes, unchecked) = homes(settings, github);
    let name = credential_name(settings);
    if matches!(settings.github.credentials, Credentials::Token(_)) {
        match github.probe_token().await {
            Ok(()) => {}
            Err(e @ GitHubError::Unauthorized) => {
                return vec![access_failure(name, &RunnerHome::Org(String::new()), &e)];
            }
            Err(e) => {
                return vec![CheckResult::fail(
                    name,
                    format!("could not reach GitHub: {e}"),
                    "check GITHUB_API_URL and that GitHub is reachable from here",
                )];
            }
        }
    }
    let mut out: Vec<CheckResult> = unchecked.into_iter().collect();
    for home in homes {
        let result = match github.probe_runners(&home).await {
            Ok(scopes) => match scopes.as_deref().and_then(|s| missing_scope(&home, s)) {
                Some(needed) => CheckResult::fail(
                    name,
                    format!(
                        "the classic token lacks the `{needed}` scope that managing runners at the {home} needs"
                    ),
                    format!("create a token with the `{needed}` scope"),
                ),
                None => CheckResult::pass(
                    name,
                    format!("can list the runners of the {home} ({} scope)", scope_word(&home)),
                ),
            },
            Err(e) => access_failure(name, &home, &e),
        };
        out.push(result);
    }
    out
}

/// `repository`, `organisation` or `enterprise`.
fn scope_word(home: &RunnerHome) -> &'static str {
    match home {
        RunnerHome::Repo(_) => "repository",
        RunnerHome::Org(_) => "organisation",
        RunnerHome::Enterprise(_) => "enterprise",
    }
}

/// The classic scope managing runners at `home` needs, if `granted` (an `X-OAuth-Scopes`
/// value) lacks it (docs/github.md §2.1).
fn missing_scope(home: &RunnerHome, granted: &str) -> Option<&'static str> {
    let needed = match home {
        RunnerHome::Repo(_) => "repo",
        RunnerHome::Org(_) => "admin:org",
        RunnerHome::Enterprise(_) => "manage_runners:enterprise",
    };
    let has = granted.split(',').map(str::trim).any(|s| s == needed);
    (!has).then_some(needed)
}

/// What a refused runner list means, and the permission to grant.
fn access_failure(name: &str, home: &RunnerHome, e: &GitHubError) -> CheckResult {
    let permission = match home {
        RunnerHome::Repo(_) => {
            "fine-grained token or App: Administration read and write; classic token: repo"
        }
        RunnerHome::Org(_) => {
            "fine-grained token or App: organisation Self-hosted runners read and write; classic token: admin:org"
        }
        RunnerHome::Enterprise(_) => "a classic token with manage_runners:enterprise",
    };
    match e {
        GitHubError::Unauthorized => CheckResult::fail(
            name,
            "GitHub rejected the credentials (401 Bad credentials)",
            "renew GITHUB_TOKEN (or check GITHUB_APP_ID and its private key)",
        ),
        GitHubError::Forbidden { .. } | GitHubError::NotFound => CheckResult::fail(
            name,
            format!("cannot list the runners of the {home} ({e})"),
            format!("grant {permission}, on that {}", scope_word(home)),
        ),
        other => CheckResult::fail(
            name,
            format!("could not list the runners of the {home}: {other}"),
            "check GITHUB_API_URL and that GitHub is reachable from here",
        ),
    }
}

/// (2) The GitHub App is installed on every allowed owner (unless one installation is
/// configured for all, which the runner lists above already exercised).
async fn app_installations(settings: &Settings, github: &GitHub) -> Vec<CheckResult> {
    let Credentials::App(app) = &settings.github.credentials else {
        return Vec::new();
    };
    if let Some(id) = app.installation_id {
        return vec![CheckResult::pass(
            "github app installation",
            format!("GITHUB_APP_INSTALLATION_ID={id} serves every owner"),
        )];
    }
    let mut out = Vec::new();
    for owner in &app.owners {
        let name = format!("github app installation on {owner}");
        out.push(match github.app_installation(owner).await {
            Ok(Some(id)) => CheckResult::pass(name, format!("installation {id}")),
            Ok(None) => continue,
            Err(GitHubError::Forbidden { .. }) => CheckResult::fail(
                name,
                "the GitHub App is not installed on this account",
                format!("install the App on {owner} (its settings page, Install App)"),
            ),
            Err(GitHubError::Unauthorized) => CheckResult::fail(
                name,
                "GitHub rejected the App's JWT (401)",
                "check GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY",
            ),
            Err(e) => CheckResult::fail(
                name,
                format!("could not look the installation up: {e}"),
                "check GITHUB_API_URL and that GitHub is reachable from here",
            ),
        });
    }
    out
}

/// (3, scale-set mode) The Actions service's auth chain works and each scale set can be
/// looked up by name. Read-only: a registration token and an admin token are issued (both
/// expire by themselves), but no scale set is created and no session opened.
async fn scale_sets(settings: &Settings, github: &GitHub, sets: &[ScaleSetSettings]) -> Vec<CheckResult> {
    let Some(home) = sets.first().map(|s| s.home.clone()) else {
        return vec![CheckResult::fail(
            "actions service",
            "JOB_SOURCE=scaleset names no scale set",
            "set SCALE_SET_NAME or SCALE_SETS",
        )];
    };
    let config = ScaleSetClientConfig {
        home: home.clone(),
        timeout: settings.github.timeout,
        poll_timeout: settings.github.timeout,
        owner: "modal-github-runner check".into(),
    };
    let client = match ScaleSetClient::new(github.clone(), config) {
        Ok(client) => client,
        Err(e) => {
            return vec![CheckResult::fail(
                "actions service",
                format!("could not build the client: {e}"),
                "check GITHUB_API_URL and RUNNER_SCOPE",
            )];
        }
    };
    let group_id = settings.provisioner.runner_groups.id_for(&home).unwrap_or(1);
    let mut lines = Vec::new();
    for set in sets {
        let name = format!("scale set {}", set.name);
        match client.find_scale_set(&set.name, group_id).await {
            Ok(found) => {
                if lines.is_empty() {
                    lines.push(CheckResult::pass(
                        "actions service",
                        format!(
                            "registration token, runner-registration and admin token accepted for {}",
                            client.config_url()
                        ),
                    ));
                }
                lines.push(match found {
                    Some(existing) => CheckResult::pass(name, format!("exists (id {})", existing.id)),
                    None => CheckResult::pass(name, "absent: it will be created on first start"),
                });
            }
            Err(e) => {
                let step = if lines.is_empty() {
                    "actions service"
                } else {
                    name.as_str()
                };
                lines.push(actions_failure(step, client.config_url(), &e));
                break;
            }
        }
    }
    lines
}

/// Which step of the chain failed and what to do about it.
fn actions_failure(name: &str, url: &str, e: &ScaleSetError) -> CheckResult {
    let fix = match e {
        ScaleSetError::RegistrationToken(_) => {
            "grant the credentials the right to register self-hosted runners where RUNNER_SCOPE points"
        }
        ScaleSetError::Registration { .. } | ScaleSetError::Unauthorized => {
            "the credentials must administer runners of the scope the config URL names (organisation: Self-hosted runners read and write; enterprise: manage_runners:enterprise)"
        }
        _ if e.is_transient() => "check that GitHub's Actions service is reachable from here",
        _ => "check RUNNER_SCOPE, RUNNER_GROUP and the scale set names",
    };
    CheckResult::fail(name, format!("{e} (config URL {url})"), fix)
}

/// (3) Each `WEBHOOK_HOOK_ID` hook: active, sends `workflow_job`, signed, JSON or form
/// content, and its recent `workflow_job` deliveries succeeded.
async fn webhooks(settings: &Settings, github: &GitHub) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for hook in &settings.reconciler.hooks {
        out.push(webhook(github, hook).await);
    }
    out
}

async fn webhook(github: &GitHub, hook: &Hook) -> CheckResult {
    let name = format!("webhook {hook}");
    let setup = match github.hook_setup(hook).await {
        Ok(s) => s,
        Err(GitHubError::NotFound) => {
            return CheckResult::fail(
                name,
                "no such hook, or the credentials cannot read it (404)",
                "check WEBHOOK_HOOK_ID (the number in the hook's settings URL) and grant webhook read access",
            );
        }
        Err(e) => {
            return CheckResult::fail(
                name,
                format!("could not read the hook: {e}"),
                "grant the credentials webhook read access (fine-grained: Webhooks read; classic: admin:repo_hook or admin:org_hook)",
            );
        }
    };
    if let Some(problem) = hook_problem(&setup) {
        return problem.into_result(name);
    }
    let content = setup.config.content_type.as_deref().unwrap_or("form");
    match github.hook_deliveries(hook, None).await {
        Ok((deliveries, _)) => {
            let jobs: Vec<_> = deliveries
                .iter()
                .filter(|d| d.event.as_deref() == Some("workflow_job"))
                .collect();
            let failed = jobs
                .iter()
                .filter(|d| !d.status_code.is_some_and(|c| (200..300).contains(&c)))
                .count();
            if failed > 0 {
                CheckResult::warn(
                    name,
                    format!(
                        "{failed} of the last {} workflow_job deliveries failed",
                        jobs.len()
                    ),
                    "see the hook's Recent Deliveries page for the answers; the reconciler redelivers failures",
                )
            } else {
                CheckResult::pass(
                    name,
                    format!(
                        "active, sends workflow_job, signed, {content} content; {} recent workflow_job deliveries succeeded",
                        jobs.len()
                    ),
                )
            }
        }
        Err(e) => CheckResult::warn(
            name,
            format!("set up right, but its deliveries could not be read: {e}"),
            "grant the credentials webhook read access",
        ),
    }
}

/// What is wrong with a hook's setup, first problem first.
struct HookProblem {
    detail: &'static str,
    fix: &'static str,
}

impl HookProblem {
    fn into_result(self, name: String) -> CheckResult {
        CheckResult::fail(name, self.detail, self.fix)
    }
}

fn hook_problem(setup: &crate::github::HookSetup) -> Option<HookProblem> {
    if !setup.active {
        return Some(HookProblem {
            detail: "the hook is not active",
            fix: "edit the hook and tick \"Active\"",
        });
    }
    if !setup.sends_workflow_job() {
        return Some(HookProblem {
            detail: "does not send workflow_job",
            fix: "edit the hook and tick \"Workflow jobs\"",
        });
    }
    if !setup.has_secret() {
        return Some(HookProblem {
            detail: "has no secret, so its deliveries are unsigned and refused",
            fix: "edit the hook and set its secret to WEBHOOK_SECRET",
        });
    }
    match setup.config.content_type.as_deref() {
        None | Some("json") | Some("form") => None,
        Some(_) => Some(HookProblem {
            detail: "its content type is neither application/json nor form",
            fix: "edit the hook and choose application/json",
        }),
    }
}

/// (5) The runner release the sandbox image will install (Modal only: the local backend
/// runs the runner in `LOCAL_RUNNER_DIR`).
async fn runner_release(settings: &Settings, github: &GitHub) -> Option<CheckResult> {
    let BackendSettings::Modal { runner_version, .. } = &settings.backend else {
        return None;
    };
    const NAME: &str = "runner version";
    if let Some(v) = runner_version {
        return Some(CheckResult::pass(
            NAME,
            format!("RUNNER_VERSION={v} is new enough for GitHub to register"),
        ));
    }
    let allow = &settings.webhook.allow;
    let home = match allow.listed().and_then(|r| r.first()) {
        Some(repo) => Some(github.home_of(repo)),
        None => allow.owners().first().and_then(|o| github.owner_home(o)),
    };
    Some(match runner_release::resolve(github, home.as_ref()).await {
        Ok(release) => CheckResult::pass(NAME, format!("GitHub serves {}", release.version)),
        Err(e) => CheckResult::fail(
            NAME,
            format!("{e}"),
            "set RUNNER_VERSION to the runner version GitHub (or your GitHub Enterprise Server) ships",
        ),
    })
}

/// (4) The Modal credentials work and the app can be looked up, without creating it.
async fn modal(settings: &Settings) -> Option<CheckResult> {
    let BackendSettings::Modal { settings: modal, .. } = &settings.backend else {
        return None;
    };
    const NAME: &str = "modal";
    let mut connection = modal.connection.clone();
    connection.retry = Backoff::new(2, Duration::from_millis(500), Duration::from_secs(2));
    connection.max_throttle_wait = Duration::from_secs(5);
    let api = match ModalApi::new(connection) {
        Ok(api) => api,
        Err(e) => return Some(CheckResult::fail(NAME, e.message, "check MODAL_SERVER_URL")),
    };
    let request = AppGetOrCreateRequest {
        app_name: modal.app_name.clone(),
        environment_name: modal.environment.clone(),
        object_creation_type: ObjectCreationType::Unspecified as i32,
    };
    let answer = api
        .unary(
            "AppGetOrCreate",
            request,
            Duration::from_secs(30),
            |mut c, r| async move { c.app_get_or_create(r).await },
        )
        .await;
    let app = &modal.app_name;
    Some(match answer {
        Ok(found) => CheckResult::pass(
            NAME,
            format!("credentials accepted; app {app} exists ({})", found.app_id),
        ),
        Err(e) => modal_failure(app, &e),
    })
}

fn modal_failure(app: &str, e: &ModalError) -> CheckResult {
    const NAME: &str = "modal";
    match e.code {
        tonic::Code::NotFound => CheckResult::warn(
            NAME,
            format!("credentials accepted; app {app} does not exist yet"),
            "nothing to do: the service creates it at its first start",
        ),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => CheckResult::fail(
            NAME,
            format!("Modal refused the credentials ({:?})", e.code),
            "set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET to a token of the workspace (modal token new)",
        ),
        _ => CheckResult::fail(
            NAME,
            format!("could not look the app up: {e}"),
            "check MODAL_SERVER_URL, MODAL_ENVIRONMENT and that Modal is reachable from here",
        ),
    }
}

/// (6) The database opens and its schema is one this binary can use.
async fn database(url: &str) -> CheckResult {
    const NAME: &str = "database";
    match inspect(url).await {
        Ok(SchemaState::InMemory) => CheckResult::warn(
            NAME,
            "in memory: every restart forgets every job and runner",
            "set DATABASE_URL to sqlite://PATH on a persistent volume",
        ),
        Ok(SchemaState::Missing(path)) => CheckResult::pass(
            NAME,
            format!(
                "{} does not exist yet; it is created at the first start",
                path.display()
            ),
        ),
        Ok(SchemaState::Current(v)) => CheckResult::pass(NAME, format!("schema {v}, current")),
        Ok(SchemaState::Older { found, known }) => CheckResult::warn(
            NAME,
            format!(
                "schema {} is older than this binary's {known}",
                found.map_or_else(|| "without versions".to_string(), |v| v.to_string())
            ),
            "nothing to do: it is migrated at the next start (back it up first)",
        ),
        Ok(SchemaState::Newer { found, known }) => CheckResult::fail(
            NAME,
            format!("schema {found} was written by a newer version; this binary knows up to {known}"),
            "upgrade the binary (or restore a backup)",
        ),
        Err(e) => CheckResult::fail(
            NAME,
            format!("could not open it: {e}"),
            "check DATABASE_URL and the file's permissions",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RepoName;

    #[test]
    fn a_line_names_the_outcome_the_check_the_finding_and_the_fix() {
        let line = CheckResult::fail("webhook octo/app hook 1", "does not send workflow_job", "tick it");
        assert_eq!(
            line.to_string(),
            "FAIL webhook octo/app hook 1: does not send workflow_job; fix: tick it"
        );
        assert_eq!(
            CheckResult::pass("database", "ok").to_string(),
            "PASS database: ok"
        );
    }

    #[test]
    fn a_classic_token_needs_the_scope_of_where_runners_are_registered() {
        let repo = RunnerHome::Repo(RepoName::parse("o/r").expect("valid"));
        let org = RunnerHome::Org("o".into());
        let ent = RunnerHome::Enterprise("e".into());
        assert_eq!(missing_scope(&repo, "repo, workflow"), None);
        assert_eq!(missing_scope(&repo, "public_repo"), Some("repo"));
        assert_eq!(missing_scope(&org, "repo"), Some("admin:org"));
        assert_eq!(missing_scope(&org, "repo, admin:org"), None);
        assert_eq!(missing_scope(&ent, ""), Some("manage_runners:enterprise"));
    }
}
