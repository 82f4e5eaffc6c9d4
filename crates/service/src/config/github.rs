//! The GitHub part: the API base, the credentials (a token or a GitHub App, exactly one), the
//! request timeout, where runners are registered and the group they join; and the webhooks
//! whose failed deliveries are redelivered.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::args::{ScopeKind, ServeArgs};
use super::parse::{optional, parse_positive};
use super::{ConfigError, err};
use crate::domain::{RepoAllowList, RepoName};
use crate::github::{AppCredentials, Credentials, Hook, RunnerGroups, RunnerScope};

/// How to reach GitHub.
#[derive(Debug, Clone)]
pub struct GitHubSettings {
    /// `GITHUB_API_URL`, else from `GITHUB_ENTERPRISE_DOMAIN`, else `https://api.github.com`;
    /// without a trailing slash.
    pub api_url: String,
    /// A token (`GITHUB_TOKEN`) or a GitHub App (`GITHUB_APP_ID`, …).
    pub credentials: Credentials,
    /// `GITHUB_TIMEOUT_SECS`: per-request timeout.
    pub timeout: Duration,
    /// `RUNNER_SCOPE` (and `GITHUB_ENTERPRISE`): where runners are registered.
    pub scope: RunnerScope,
    /// `GITHUB_RATE_RESERVE`: calls of each budget kept for registrations and deletions;
    /// `None` = a tenth of the limit, at least 100.
    pub rate_reserve: Option<u32>,
}

pub(super) fn settings(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    allowed: &RepoAllowList,
) -> Result<GitHubSettings, ConfigError> {
    let credentials = credentials(args, env, allowed)?;
    Ok(GitHubSettings {
        scope: scope(args, allowed, &credentials)?,
        credentials,
        api_url: api_url(
            args.github_api_url.as_deref(),
            args.github_enterprise_domain.as_deref(),
        )?,
        timeout: args.github_timeout_secs,
        rate_reserve: args.github_rate_reserve,
    })
}

/// `RUNNER_SCOPE` with `GITHUB_ENTERPRISE`. Organisation and enterprise runners need
/// `ALLOWED_REPOS` to say whose jobs they serve; enterprise runners cannot be managed by a
/// GitHub App (docs/github.md §2.1).
fn scope(
    args: &ServeArgs,
    allowed: &RepoAllowList,
    credentials: &Credentials,
) -> Result<RunnerScope, ConfigError> {
    let enterprise = optional("GITHUB_ENTERPRISE", args.github_enterprise.as_deref(), |slug| {
        let ok = !slug.is_empty()
            && slug.len() <= 100
            && slug
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(slug.to_string())
        } else {
            Err(format!(
                "`{slug}` is not an enterprise slug (letters, digits, `-`, `_`)"
            ))
        }
    })?;
    let scope = match (args.runner_scope, enterprise) {
        (ScopeKind::Repo, None) => return Ok(RunnerScope::Repo),
        (ScopeKind::Org, None) => RunnerScope::Org,
        (ScopeKind::Enterprise, Some(slug)) => RunnerScope::Enterprise(slug),
        (ScopeKind::Enterprise, None) => {
            return Err(err(
                "GITHUB_ENTERPRISE",
                "is required with RUNNER_SCOPE=enterprise: the enterprise's slug",
            ));
        }
        (_, Some(_)) => {
            return Err(err(
                "GITHUB_ENTERPRISE",
                "is used only with RUNNER_SCOPE=enterprise; unset it or set RUNNER_SCOPE=enterprise",
            ));
        }
    };
    if allowed.owners().is_empty() {
        return Err(err(
            "ALLOWED_REPOS",
            format!(
                "is required with RUNNER_SCOPE={}: name the organisations served (owner/* or owner/repo)",
                scope.as_str()
            ),
        ));
    }
    if matches!(scope, RunnerScope::Enterprise(_)) && matches!(credentials, Credentials::App(_)) {
        return Err(err(
            "GITHUB_APP_ID",
            "GitHub Apps cannot manage enterprise runners; use RUNNER_SCOPE=org or a classic token with manage_runners:enterprise",
        ));
    }
    Ok(scope)
}

/// `RUNNER_GROUP` (a name, resolved at start-up) or `RUNNER_GROUP_ID`, not both; default
/// group 1 ("Default"). Repository runners have no named groups.
pub(super) fn runner_groups(args: &ServeArgs) -> Result<RunnerGroups, ConfigError> {
    let name = args
        .runner_group
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    match (name, args.runner_group_id) {
        (Some(_), Some(_)) => Err(err(
            "RUNNER_GROUP",
            "set RUNNER_GROUP or RUNNER_GROUP_ID, not both",
        )),
        (Some(_), None) if args.runner_scope == ScopeKind::Repo => Err(err(
            "RUNNER_GROUP",
            "repository runners have no runner groups; set RUNNER_SCOPE=org or enterprise",
        )),
        (Some(name), None) => Ok(RunnerGroups::Named {
            name: name.to_string(),
            ids: Default::default(),
        }),
        (None, id) => Ok(RunnerGroups::Id(id.unwrap_or(1))),
    }
}

/// `GITHUB_TOKEN`, or a GitHub App: exactly one of them. A blank `GITHUB_APP_ID` means no
/// App.
fn credentials(
    args: &ServeArgs,
    env: &impl Fn(&str) -> Option<String>,
    allowed: &RepoAllowList,
) -> Result<Credentials, ConfigError> {
    let Some(app_id) = optional(
        "GITHUB_APP_ID",
        args.github_app_id.as_deref(),
        parse_positive::<u64>,
    )?
    else {
        return secret(
            "GITHUB_TOKEN",
            "--github-token-file",
            args.github_token_file.as_ref(),
            env,
        )
        .map(Credentials::Token);
    };
    if args.github_token_file.is_some() || env("GITHUB_TOKEN").is_some_and(|t| !t.trim().is_empty()) {
        return Err(err(
            "GITHUB_APP_ID",
            "set either GITHUB_TOKEN or a GitHub App, not both",
        ));
    }
    let private_key = secret(
        "GITHUB_APP_PRIVATE_KEY",
        "--github-app-private-key-file",
        args.github_app_private_key_file.as_ref(),
        env,
    )?;
    let installation_id = optional(
        "GITHUB_APP_INSTALLATION_ID",
        args.github_app_installation_id.as_deref(),
        parse_positive::<u64>,
    )?;
    let owners = allowed.owners().to_vec();
    if installation_id.is_none() && owners.is_empty() {
        return Err(err(
            "GITHUB_APP_INSTALLATION_ID",
            "is required with a GitHub App unless ALLOWED_REPOS names the owners to find the installations of",
        ));
    }
    let app = AppCredentials {
        app_id,
        private_key,
        installation_id,
        owners,
    };
    app.validate().map_err(|m| err("GITHUB_APP_PRIVATE_KEY", m))?;
    Ok(Credentials::App(app))
}

/// A secret from the file given with `flag`, else from the environment variable `var`.
pub(super) fn secret(
    var: &'static str,
    flag: &str,
    file: Option<&PathBuf>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<SecretString, ConfigError> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| err(var, format!("could not read {flag} {}: {e}", path.display())))?,
        None => env(var).ok_or_else(|| {
            err(
                var,
                format!("is required: set the {var} environment variable or pass {flag}"),
            )
        })?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(err(var, "is empty"));
    }
    Ok(SecretString::from(value.to_string()))
}

/// The API base: `GITHUB_API_URL` (http:// allowed, for tests), else the Enterprise Server
/// host's `/api/v3`, else github.com. Blank values are unset.
fn api_url(explicit: Option<&str>, ghes: Option<&str>) -> Result<String, ConfigError> {
    if let Some(url) = optional("GITHUB_API_URL", explicit, |url| {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        Ok(url.trim_end_matches('/').to_string())
    })? {
        return Ok(url);
    }
    let host = optional("GITHUB_ENTERPRISE_DOMAIN", ghes, |domain| {
        let url = format!("https://{domain}/api/v3");
        match reqwest::Url::parse(&url) {
            Ok(u) if u.host_str().is_some() && !domain.contains('/') => Ok(url),
            _ => Err(format!(
                "`{domain}` is not a host name (give it without https://)"
            )),
        }
    })?;
    Ok(host.unwrap_or_else(|| "https://api.github.com".into()))
}

/// `WEBHOOK_HOOK_ID`: `ID` (the hook of the single allowed repository), or a comma list of
/// `owner/repo:ID` and `org:NAME:ID`.
pub(super) fn hooks(raw: Option<&str>, allowed: &RepoAllowList) -> Result<Vec<Hook>, ConfigError> {
    const VAR: &str = "WEBHOOK_HOOK_ID";
    let mut out = Vec::new();
    for entry in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let id = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| err(VAR, format!("`{s}` is not a hook id")))
        };
        if let Some(rest) = entry.strip_prefix("org:") {
            let (org, hook) = rest
                .rsplit_once(':')
                .ok_or_else(|| err(VAR, format!("`{entry}` is not org:NAME:ID")))?;
            out.push(Hook::Org {
                org: org.to_string(),
                id: id(hook)?,
            });
        } else if let Some((repo, hook)) = entry.rsplit_once(':') {
            let repo = RepoName::parse(repo).map_err(|e| err(VAR, e.to_string()))?;
            out.push(Hook::Repo { repo, id: id(hook)? });
        } else {
            let repo = match allowed.listed() {
                Some([only]) if !allowed.has_wildcards() => only.clone(),
                _ => {
                    return Err(err(
                        VAR,
                        "a bare hook id needs exactly one repository in ALLOWED_REPOS; use owner/repo:ID entries",
                    ));
                }
            };
            out.push(Hook::Repo { repo, id: id(entry)? });
        }
    }
    Ok(out)
}
