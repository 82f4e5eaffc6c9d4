//! Which REST endpoint a request is for (docs/github.md §1–3): the method and path of every
//! call the fake answers, parsed into an [`Endpoint`]. Runner endpoints exist at three
//! scopes (repository, organisation, enterprise) with the same shapes underneath.

use axum::http::Method;

use super::faults::Route;
use super::views::Scope;

/// A parsed REST request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    GenerateJitConfig {
        at: Scope,
    },
    /// `POST …/actions/runners/registration-token` (the scale set auth chain's step b).
    CreateRegistrationToken {
        at: Scope,
    },
    ListRunners {
        at: Scope,
    },
    GetRunner {
        at: Scope,
        id: u64,
    },
    DeleteRunner {
        at: Scope,
        id: u64,
    },
    RunnerDownloads {
        at: Scope,
    },
    /// `GET /orgs/{org}/actions/runner-groups`, `GET /enterprises/{e}/actions/runner-groups`.
    ListRunnerGroups {
        at: Scope,
    },
    ListRuns {
        repo: String,
    },
    GetRun {
        repo: String,
        run_id: u64,
    },
    ListRunJobs {
        repo: String,
        run_id: u64,
    },
    GetJob {
        repo: String,
        job_id: u64,
    },
    GetContents {
        repo: String,
        path: String,
    },
    /// A repository's or an organisation's hook: its events and configuration.
    GetHook {
        at: Scope,
        hook_id: u64,
    },
    /// A repository's or an organisation's hook deliveries.
    ListDeliveries {
        at: Scope,
        hook_id: u64,
    },
    Redeliver {
        at: Scope,
        hook_id: u64,
        delivery_id: u64,
    },
    RateLimit,
    CreateInstallationToken {
        installation_id: u64,
    },
    /// `GET /repos/{o}/{r}/installation`, `/orgs/{org}/installation`, `/users/{u}/installation`.
    Installation {
        at: Scope,
    },
}

impl Endpoint {
    /// Recognises the endpoints of docs/github.md §1–3; `None` means 404.
    pub fn parse(method: &Method, path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["rate_limit"]) => Some(Endpoint::RateLimit),
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                Some(Endpoint::CreateInstallationToken {
                    installation_id: id.parse().ok()?,
                })
            }
            (method, ["repos", owner, name, rest @ ..]) if !owner.is_empty() && !name.is_empty() => {
                Self::parse_repo(method, format!("{owner}/{name}"), rest)
            }
            (method, ["orgs", org, rest @ ..]) if !org.is_empty() => {
                Self::parse_account(method, Scope::Organization((*org).to_owned()), rest)
            }
            (method, ["enterprises", slug, rest @ ..]) if !slug.is_empty() => {
                Self::parse_account(method, Scope::Enterprise((*slug).to_owned()), rest)
            }
            ("GET", ["users", user, "installation"]) if !user.is_empty() => Some(Endpoint::Installation {
                at: Scope::User((*user).to_owned()),
            }),
            _ => None,
        }
    }

    /// The runner endpoints, the same under every scope.
    fn parse_runners(method: &str, at: Scope, rest: &[&str]) -> Option<Self> {
        let num = |s: &str| s.parse::<u64>().ok();
        Some(match (method, rest) {
            ("POST", ["actions", "runners", "generate-jitconfig"]) => Endpoint::GenerateJitConfig { at },
            ("POST", ["actions", "runners", "registration-token"]) => {
                Endpoint::CreateRegistrationToken { at }
            }
            ("GET", ["actions", "runners"]) => Endpoint::ListRunners { at },
            ("GET", ["actions", "runners", "downloads"]) => Endpoint::RunnerDownloads { at },
            ("GET", ["actions", "runners", id]) => Endpoint::GetRunner { at, id: num(id)? },
            ("DELETE", ["actions", "runners", id]) => Endpoint::DeleteRunner { at, id: num(id)? },
            _ => return None,
        })
    }

    /// Hook deliveries, for repository and organisation hooks.
    fn parse_hooks(method: &str, at: Scope, rest: &[&str]) -> Option<Self> {
        let num = |s: &str| s.parse::<u64>().ok();
        Some(match (method, rest) {
            ("GET", ["hooks", hook]) => Endpoint::GetHook {
                at,
                hook_id: num(hook)?,
            },
            ("GET", ["hooks", hook, "deliveries"]) => Endpoint::ListDeliveries {
                at,
                hook_id: num(hook)?,
            },
            ("POST", ["hooks", hook, "deliveries", id, "attempts"]) => Endpoint::Redeliver {
                at,
                hook_id: num(hook)?,
                delivery_id: num(id)?,
            },
            _ => return None,
        })
    }

    /// Organisation and enterprise endpoints. Enterprises have no hook deliveries API and
    /// no installation lookup (GitHub Apps cannot manage enterprise runners, §2.1).
    fn parse_account(method: &str, at: Scope, rest: &[&str]) -> Option<Self> {
        let org = matches!(at, Scope::Organization(_));
        match (method, rest) {
            ("GET", ["actions", "runner-groups"]) => Some(Endpoint::ListRunnerGroups { at }),
            ("GET", ["installation"]) if org => Some(Endpoint::Installation { at }),
            (_, ["hooks", ..]) if org => Self::parse_hooks(method, at, rest),
            _ => Self::parse_runners(method, at, rest),
        }
    }

    fn parse_repo(method: &str, repo: String, rest: &[&str]) -> Option<Self> {
        let num = |s: &str| s.parse::<u64>().ok();
        Some(match (method, rest) {
            (_, ["actions", "runners", ..]) => {
                return Self::parse_runners(method, Scope::Repository(repo), rest);
            }
            (_, ["hooks", ..]) => return Self::parse_hooks(method, Scope::Repository(repo), rest),
            ("GET", ["installation"]) => Endpoint::Installation {
                at: Scope::Repository(repo),
            },
            ("GET", ["actions", "runs"]) => Endpoint::ListRuns { repo },
            ("GET", ["actions", "runs", id]) => Endpoint::GetRun {
                repo,
                run_id: num(id)?,
            },
            ("GET", ["actions", "runs", id, "jobs"]) => Endpoint::ListRunJobs {
                repo,
                run_id: num(id)?,
            },
            ("GET", ["actions", "jobs", id]) => Endpoint::GetJob {
                repo,
                job_id: num(id)?,
            },
            ("GET", ["contents", path @ ..]) if !path.is_empty() => Endpoint::GetContents {
                repo,
                path: percent_decode(&path.join("/"))?,
            },
            _ => return None,
        })
    }

    pub fn route(&self) -> Route {
        match self {
            Endpoint::GenerateJitConfig { .. } => Route::GenerateJitConfig,
            Endpoint::CreateRegistrationToken { .. } => Route::CreateRegistrationToken,
            Endpoint::ListRunners { .. } => Route::ListRunners,
            Endpoint::GetRunner { .. } => Route::GetRunner,
            Endpoint::DeleteRunner { .. } => Route::DeleteRunner,
            Endpoint::RunnerDownloads { .. } => Route::RunnerDownloads,
            Endpoint::ListRunnerGroups { .. } => Route::ListRunnerGroups,
            Endpoint::ListRuns { .. } => Route::ListRuns,
            Endpoint::GetRun { .. } => Route::GetRun,
            Endpoint::ListRunJobs { .. } => Route::ListRunJobs,
            Endpoint::GetJob { .. } => Route::GetJob,
            Endpoint::GetContents { .. } => Route::GetContents,
            Endpoint::GetHook { .. } => Route::GetHook,
            Endpoint::ListDeliveries { .. } => Route::ListHookDeliveries,
            Endpoint::Redeliver { .. } => Route::RedeliverHookDelivery,
            Endpoint::RateLimit => Route::RateLimit,
            Endpoint::CreateInstallationToken { .. } => Route::CreateInstallationToken,
            Endpoint::Installation {
                at: Scope::Organization(_),
            } => Route::OrgInstallation,
            Endpoint::Installation { at: Scope::User(_) } => Route::UserInstallation,
            Endpoint::Installation { .. } => Route::RepoInstallation,
        }
    }

    /// What the call is about, as written in its path; `None` for the App's own endpoints
    /// and the rate limit.
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Endpoint::GenerateJitConfig { at }
            | Endpoint::CreateRegistrationToken { at }
            | Endpoint::ListRunners { at }
            | Endpoint::GetRunner { at, .. }
            | Endpoint::DeleteRunner { at, .. }
            | Endpoint::RunnerDownloads { at }
            | Endpoint::ListRunnerGroups { at }
            | Endpoint::GetHook { at, .. }
            | Endpoint::ListDeliveries { at, .. }
            | Endpoint::Redeliver { at, .. }
            | Endpoint::Installation { at } => Some(at.clone()),
            Endpoint::ListRuns { repo }
            | Endpoint::GetRun { repo, .. }
            | Endpoint::ListRunJobs { repo, .. }
            | Endpoint::GetJob { repo, .. }
            | Endpoint::GetContents { repo, .. } => Some(Scope::Repository(repo.clone())),
            Endpoint::RateLimit | Endpoint::CreateInstallationToken { .. } => None,
        }
    }

    /// The App endpoints, which take the App's JWT rather than a token.
    pub fn wants_jwt(&self) -> bool {
        matches!(
            self,
            Endpoint::CreateInstallationToken { .. } | Endpoint::Installation { .. }
        )
    }
}

/// Decodes `%XX` escapes of a URL path; `None` if malformed or not UTF-8.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> Scope {
        Scope::Repository(name.into())
    }

    #[test]
    fn endpoints_are_recognised_by_method_and_path() {
        let parse = |m: Method, p: &str| Endpoint::parse(&m, p);
        assert_eq!(
            parse(Method::POST, "/repos/acme/w/actions/runners/generate-jitconfig"),
            Some(Endpoint::GenerateJitConfig { at: repo("acme/w") })
        );
        assert_eq!(
            parse(Method::GET, "/repos/acme/w/actions/runners/downloads"),
            Some(Endpoint::RunnerDownloads { at: repo("acme/w") })
        );
        assert_eq!(
            parse(Method::DELETE, "/repos/acme/w/actions/runners/12"),
            Some(Endpoint::DeleteRunner {
                at: repo("acme/w"),
                id: 12
            })
        );
        assert_eq!(
            parse(Method::GET, "/repos/acme/w/contents/.github/workflows/ci%20x.yml"),
            Some(Endpoint::GetContents {
                repo: "acme/w".into(),
                path: ".github/workflows/ci x.yml".into()
            })
        );
        assert_eq!(parse(Method::GET, "/rate_limit"), Some(Endpoint::RateLimit));
        assert_eq!(parse(Method::POST, "/repos/acme/w/actions/runners"), None);
        assert_eq!(parse(Method::GET, "/repos/acme/w/actions/runners/abc"), None);
        assert_eq!(parse(Method::GET, "/nope"), None);
    }

    #[test]
    fn runner_endpoints_exist_at_the_organisation_and_the_enterprise() {
        let parse = |m: Method, p: &str| Endpoint::parse(&m, p);
        let org = Scope::Organization("acme".into());
        let ent = Scope::Enterprise("big".into());
        assert_eq!(
            parse(Method::POST, "/orgs/acme/actions/runners/generate-jitconfig"),
            Some(Endpoint::GenerateJitConfig { at: org.clone() })
        );
        assert_eq!(
            parse(Method::DELETE, "/enterprises/big/actions/runners/3"),
            Some(Endpoint::DeleteRunner {
                at: ent.clone(),
                id: 3
            })
        );
        assert_eq!(
            parse(Method::GET, "/enterprises/big/actions/runner-groups"),
            Some(Endpoint::ListRunnerGroups { at: ent })
        );
        assert_eq!(
            parse(Method::GET, "/orgs/acme/installation"),
            Some(Endpoint::Installation { at: org.clone() })
        );
        assert_eq!(
            parse(Method::GET, "/orgs/acme/hooks/2"),
            Some(Endpoint::GetHook {
                at: org.clone(),
                hook_id: 2
            })
        );
        assert_eq!(
            parse(Method::GET, "/orgs/acme/hooks/2/deliveries"),
            Some(Endpoint::ListDeliveries { at: org, hook_id: 2 })
        );
        assert_eq!(
            parse(Method::GET, "/users/alice/installation"),
            Some(Endpoint::Installation {
                at: Scope::User("alice".into())
            })
        );
        assert_eq!(parse(Method::GET, "/enterprises/big/installation"), None);
        assert_eq!(parse(Method::GET, "/orgs/acme/actions/runs"), None);
    }

    #[test]
    fn percent_decoding_rejects_truncated_escapes() {
        assert_eq!(percent_decode("a%2Fb"), Some("a/b".into()));
        assert_eq!(percent_decode("a%2"), None);
    }
}
