//! The config URL a scale set is registered with (contract §1): the web address of the
//! repository, organisation or enterprise, derived from the REST base URL.

use reqwest::Url;

use crate::github::RunnerHome;

/// The web base of a REST base: `https://api.github.com` → `https://github.com`,
/// `https://api.HOST` (GHE.com) → `https://HOST`, `https://HOST/api/v3` (GHES) →
/// `https://HOST`; anything else (a test server) is its own web base.
pub fn web_base(api: &Url) -> String {
    let scheme = api.scheme();
    let host = api.host_str().unwrap_or_default();
    let port = api.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = api.path().trim_end_matches('/');
    if let Some(prefix) = path.strip_suffix("/api/v3") {
        return format!("{scheme}://{host}{port}{prefix}");
    }
    let host = host.strip_prefix("api.").unwrap_or(host);
    format!("{scheme}://{host}{port}{path}")
}

/// `https://<host>/<owner>/<repo>`, `https://<host>/<org>` or
/// `https://<host>/enterprises/<slug>`, without a trailing `/`.
pub fn config_url(api: &Url, home: &RunnerHome) -> String {
    let base = web_base(api);
    match home {
        RunnerHome::Repo(repo) => format!("{base}/{}/{}", repo.owner(), repo.name()),
        RunnerHome::Org(org) => format!("{base}/{org}"),
        RunnerHome::Enterprise(slug) => format!("{base}/enterprises/{slug}"),
    }
}
