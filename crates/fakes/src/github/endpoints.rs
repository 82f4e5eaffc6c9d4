//! The REST endpoints (docs/github.md §1 deliveries API, §2). Each handler is a
//! plain function over the locked [`State`]; the pipeline in `routes.rs`
//! has already dealt with auth, limits, faults and latency.

use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::deliveries_api;
use super::paths::Endpoint;
use super::payload::{WEB_URL, job_json, run_json};
use super::routes::Reply;
use super::runners::{DeleteError, MAX_RUNNERS_PER_GROUP, RegisterError, Registration};
use super::state::State;
use super::views::{RepoView, Scope};

/// Runs one endpoint.
pub(super) fn dispatch(state: &mut State, endpoint: &Endpoint, query: Option<&str>, body: &[u8]) -> Reply {
    let params = Params::parse(query);
    match endpoint {
        Endpoint::RateLimit => return rate_limit(state),
        Endpoint::CreateInstallationToken { installation_id } => {
            return match state.app.clone() {
                Some(app) => super::app::create_token(state, &app, *installation_id),
                None => Reply::not_found(),
            };
        }
        _ => {}
    }
    let Some(at) = endpoint.scope().and_then(|at| state.resolve(&at)) else {
        return Reply::not_found();
    };
    match endpoint {
        Endpoint::GenerateJitConfig { .. } => generate_jitconfig(state, &at, body),
        Endpoint::CreateRegistrationToken { .. } => registration_token(state, &at),
        Endpoint::ListRunners { .. } => list_runners(state, &at, &params),
        Endpoint::GetRunner { id, .. } => get_runner(state, &at, *id),
        Endpoint::DeleteRunner { id, .. } => delete_runner(state, &at, *id),
        Endpoint::RunnerDownloads { .. } => downloads(state),
        Endpoint::ListRunnerGroups { .. } => super::accounts::list_groups(state, &at, &params),
        Endpoint::GetHook { hook_id, .. } => deliveries_api::get_hook(state, &at, *hook_id),
        Endpoint::ListDeliveries { hook_id, .. } => deliveries_api::list(state, &at, *hook_id, &params),
        Endpoint::Redeliver {
            hook_id, delivery_id, ..
        } => deliveries_api::redeliver(state, &at, *hook_id, *delivery_id),
        Endpoint::Installation { .. } => match &state.app {
            Some(app) => {
                let (id, kind) = state.owner_facts(&at);
                super::app::installation(app, at.owner(), id, kind)
            }
            None => Reply::not_found(),
        },
        _ => dispatch_repo(state, endpoint, &at, &params),
    }
}

/// The endpoints that exist only under a repository.
fn dispatch_repo(state: &mut State, endpoint: &Endpoint, at: &Scope, params: &Params) -> Reply {
    let Some(repo) = state.repo(at.name()).cloned() else {
        return Reply::not_found();
    };
    match endpoint {
        Endpoint::ListRuns { .. } => list_runs(state, &repo, params),
        Endpoint::GetRun { run_id, .. } => get_run(state, &repo, *run_id),
        Endpoint::ListRunJobs { run_id, .. } => list_run_jobs(state, &repo, *run_id, params),
        Endpoint::GetJob { job_id, .. } => get_job(state, &repo, *job_id),
        Endpoint::GetContents { path, .. } => get_contents(state, &repo, path, params),
        _ => Reply::not_found(),
    }
}

/// Decoded query parameters.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
        Self(pairs.map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `per_page` clamped to 1..=100 (default 30), as GitHub does.
    pub fn per_page(&self) -> usize {
        self.get("per_page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30)
            .clamp(1, 100)
    }

    fn page(&self) -> usize {
        self.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
    }

    /// The query string with `key` set to `value` (other parameters kept).
    pub fn with(&self, key: &str, value: &str) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.0.iter().filter(|(k, _)| k != key) {
            out.append_pair(k, v);
        }
        out.append_pair(key, value);
        out.finish()
    }
}

/// One page of `items` plus the `Link` header GitHub would send with it.
pub(super) fn paginate<T: Clone>(items: &[T], params: &Params, url: &str) -> (Vec<T>, Option<String>) {
    let per_page = params.per_page();
    let page = params.page();
    let last = items.len().div_ceil(per_page).max(1);
    let slice = items
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let link =
        |n: usize, rel: &str| format!("<{url}?{}>; rel=\"{rel}\"", params.with("page", &n.to_string()));
    let mut links = Vec::new();
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
    }
    (slice, (!links.is_empty()).then(|| links.join(", ")))
}

pub(super) fn with_link(reply: Reply, link: Option<String>) -> Reply {
    match link {
        Some(link) => reply.with_header("link", link),
        None => reply,
    }
}

fn validation_error(message: &str) -> Reply {
    Reply::error(422, message)
}

/// Checks a `generate-jitconfig` body the way GitHub's schema does.
fn parse_registration(home: &Scope, body: &[u8]) -> Result<Registration, Reply> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| Reply::error(400, "Problems parsing JSON"))?;
    let object = value
        .as_object()
        .ok_or_else(|| Reply::error(400, "Problems parsing JSON"))?;
    let missing =
        |key: &str| validation_error(&format!("Invalid input: object is missing required key: {key}"));
    let name = object.get("name").ok_or_else(|| missing("name"))?;
    let group = object
        .get("runner_group_id")
        .ok_or_else(|| missing("runner_group_id"))?;
    let labels = object.get("labels").ok_or_else(|| missing("labels"))?;
    let name = name
        .as_str()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| validation_error("Invalid input: name must be a non-empty string"))?;
    if name.chars().count() > 64 {
        return Err(validation_error(
            "Invalid input: name is too long (maximum is 64 characters)",
        ));
    }
    let group_id = group
        .as_u64()
        .ok_or_else(|| validation_error("Invalid input: runner_group_id must be an integer"))?;
    let labels: Vec<String> = labels
        .as_array()
        .and_then(|items| items.iter().map(|l| l.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| validation_error("Invalid input: labels must be an array of strings"))?;
    if labels.is_empty() || labels.len() > 100 {
        return Err(validation_error(
            "Invalid input: labels must have between 1 and 100 items",
        ));
    }
    let work_folder = match object.get("work_folder") {
        None | Some(Value::Null) => "_work".to_owned(),
        Some(Value::String(folder)) => folder.clone(),
        Some(_) => {
            return Err(validation_error("Invalid input: work_folder must be a string"));
        }
    };
    Ok(Registration {
        home: home.clone(),
        name: name.to_owned(),
        group_id,
        labels,
        work_folder,
    })
}

fn generate_jitconfig(state: &mut State, home: &Scope, body: &[u8]) -> Reply {
    let registration = match parse_registration(home, body) {
        Ok(registration) => registration,
        Err(reply) => return reply,
    };
    let name = registration.name.clone();
    let group_id = registration.group_id;
    match state.register_runner(registration) {
        Ok((runner, encoded)) => Reply::json(201, json!({ "runner": runner, "encoded_jit_config": encoded })),
        Err(RegisterError::GroupNotFound) => Reply::not_found(),
        Err(RegisterError::AlreadyExists) => Reply::error(
            409,
            &format!("Already exists - A runner with the name {name} already exists."),
        ),
        Err(RegisterError::GroupFull) => validation_error(&format!(
            "Invalid Argument - Runner group {group_id} has reached max limit of {MAX_RUNNERS_PER_GROUP} runners."
        )),
    }
}

fn list_runners(state: &State, home: &Scope, params: &Params) -> Reply {
    let now = Instant::now();
    let name = params.get("name");
    let runners: Vec<Value> = state
        .runners
        .values()
        .filter(|r| r.home == *home && name.is_none_or(|n| r.name == n))
        .map(|r| r.json(now))
        .collect();
    let url = format!("{}{}/actions/runners", state.api_url, home.path());
    let (page, link) = paginate(&runners, params, &url);
    with_link(
        Reply::json(200, json!({ "total_count": runners.len(), "runners": page })),
        link,
    )
}

fn get_runner(state: &State, home: &Scope, id: u64) -> Reply {
    match state.runners.get(&id).filter(|r| r.home == *home) {
        Some(runner) => Reply::json(200, runner.json(Instant::now())),
        None => Reply::not_found(),
    }
}

fn delete_runner(state: &mut State, home: &Scope, id: u64) -> Reply {
    match state.delete_runner(home, id) {
        Ok(()) => Reply::no_content(),
        Err(DeleteError::NotFound) => Reply::not_found(),
        Err(DeleteError::Busy(name)) => {
            validation_error(&format!("Bad request - Runner \"{name}\" is still running a job"))
        }
    }
}

fn downloads(state: &State) -> Reply {
    let version = &state.runner_version;
    let platforms = [
        ("linux", "x64", "tar.gz"),
        ("linux", "arm64", "tar.gz"),
        ("linux", "arm", "tar.gz"),
        ("osx", "x64", "tar.gz"),
        ("osx", "arm64", "tar.gz"),
        ("win", "x64", "zip"),
    ];
    let items: Vec<Value> = platforms
        .iter()
        .map(|(os, arch, ext)| {
            let filename = format!("actions-runner-{os}-{arch}-{version}.{ext}");
            json!({
                "os": os, "architecture": arch, "filename": filename,
                "download_url": format!("{WEB_URL}/actions/runner/releases/download/v{version}/{filename}"),
                "sha256_checksum": hex::encode(Sha256::digest(filename.as_bytes())),
            })
        })
        .collect();
    Reply::json(200, Value::Array(items))
}

const CONCLUSIONS: &[&str] = &[
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
];

fn list_runs(state: &State, repo: &RepoView, params: &Params) -> Reply {
    let wanted = params.get("status");
    let runs: Vec<Value> = state
        .runs
        .values()
        .rev()
        .filter(|run| run.repo == repo.full_name)
        .filter(|run| {
            let (status, conclusion) = state.run_status(run);
            match wanted {
                None => true,
                Some(w) if CONCLUSIONS.contains(&w) => conclusion == Some(w),
                Some(w) => status == w,
            }
        })
        .map(|run| run_json(&state.api_url, &state.run_facts(run), repo))
        .collect();
    let url = format!("{}/repos/{}/actions/runs", state.api_url, repo.full_name);
    let (page, link) = paginate(&runs, params, &url);
    with_link(
        Reply::json(200, json!({ "total_count": runs.len(), "workflow_runs": page })),
        link,
    )
}

fn get_run(state: &State, repo: &RepoView, run_id: u64) -> Reply {
    match state.runs.get(&run_id).filter(|r| r.repo == repo.full_name) {
        Some(run) => Reply::json(200, run_json(&state.api_url, &state.run_facts(run), repo)),
        None => Reply::not_found(),
    }
}

fn list_run_jobs(state: &State, repo: &RepoView, run_id: u64, params: &Params) -> Reply {
    let Some(run) = state.runs.get(&run_id).filter(|r| r.repo == repo.full_name) else {
        return Reply::not_found();
    };
    if !matches!(params.get("filter"), None | Some("latest" | "all")) {
        return validation_error("Invalid input: filter must be one of latest, all");
    }
    let jobs: Vec<Value> = run
        .job_ids
        .iter()
        .filter_map(|id| state.jobs.get(id))
        .map(|job| job_json(&state.api_url, &job.view, repo))
        .collect();
    let url = format!(
        "{}/repos/{}/actions/runs/{run_id}/jobs",
        state.api_url, repo.full_name
    );
    let (page, link) = paginate(&jobs, params, &url);
    with_link(
        Reply::json(200, json!({ "total_count": jobs.len(), "jobs": page })),
        link,
    )
}

fn get_job(state: &State, repo: &RepoView, job_id: u64) -> Reply {
    match state.jobs.get(&job_id).filter(|j| j.view.repo == repo.full_name) {
        Some(job) => Reply::json(200, job_json(&state.api_url, &job.view, repo)),
        None => Reply::not_found(),
    }
}

fn get_contents(state: &State, repo: &RepoView, path: &str, params: &Params) -> Reply {
    let git_ref = params.get("ref").unwrap_or(&repo.default_branch);
    let key = (repo.full_name.clone(), path.to_owned(), git_ref.to_owned());
    let Some(content) = state.files.get(&key) else {
        return Reply::not_found();
    };
    // A stand-in for the git blob sha: 40 hex digits, stable per content.
    let sha = hex::encode(&Sha256::digest(content.as_bytes())[..20]);
    let api = format!(
        "{}/repos/{}/contents/{path}?ref={git_ref}",
        state.api_url, repo.full_name
    );
    let git = format!("{}/repos/{}/git/blobs/{sha}", state.api_url, repo.full_name);
    let html = format!("{WEB_URL}/{}/blob/{git_ref}/{path}", repo.full_name);
    let name = path.rsplit('/').next().unwrap_or(path);
    Reply::json(
        200,
        json!({
            "type": "file", "encoding": "base64", "size": content.len(), "name": name, "path": path,
            "content": wrapped_base64(content.as_bytes()), "sha": sha, "url": api, "git_url": git,
            "html_url": html,
            "download_url": format!("https://raw.githubusercontent.com/{}/{git_ref}/{path}", repo.full_name),
            "_links": { "self": api, "git": git, "html": html },
        }),
    )
}

/// Base64 with a newline after every 60 characters, as the contents API sends it.
pub(super) fn wrapped_base64(bytes: &[u8]) -> String {
    let encoded = STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 60 + 1);
    for line in encoded.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out
}

fn rate_limit(state: &mut State) -> Reply {
    let rate = state.rates.snapshot();
    let core = json!({
        "limit": rate.limit, "remaining": rate.remaining, "reset": rate.reset_epoch,
        "used": rate.used, "resource": "core",
    });
    Reply::json(
        200,
        json!({ "resources": { "core": core.clone() }, "rate": core }),
    )
}

/// `POST …/actions/runners/registration-token`: a one-hour token for `runner-registration`.
fn registration_token(state: &mut State, at: &Scope) -> Reply {
    let token = format!("AABF{}", uuid::Uuid::new_v4().simple()).to_ascii_uppercase();
    let ttl = std::time::Duration::from_secs(3600);
    state
        .scale_sets
        .registration_tokens
        .insert(token.clone(), (at.clone(), Instant::now() + ttl));
    let expires = super::time::rfc3339(std::time::SystemTime::now() + ttl);
    Reply::json(201, json!({ "token": token, "expires_at": expires }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_base64_wrapped_every_sixty_characters() {
        let wrapped = wrapped_base64(&[7u8; 100]);
        let lines: Vec<&str> = wrapped.lines().collect();
        assert_eq!(lines.iter().map(|l| l.len()).collect::<Vec<_>>(), [60, 60, 16]);
        assert!(wrapped.ends_with('\n'));
        let joined: String = lines.concat();
        assert_eq!(STANDARD.decode(joined).expect("decodes"), vec![7u8; 100]);
    }

    #[test]
    fn pagination_links_next_and_last_and_keeps_other_parameters() {
        let params = Params::parse(Some("status=queued&per_page=2"));
        let (page, link) = paginate(&[1, 2, 3, 4, 5], &params, "http://x/runs");
        assert_eq!(page, [1, 2]);
        let link = link.expect("a link header");
        assert!(link.contains("<http://x/runs?status=queued&per_page=2&page=2>; rel=\"next\""));
        assert!(link.contains("page=3>; rel=\"last\""));
        let last = Params::parse(Some("per_page=2&page=3"));
        let (page, link) = paginate(&[1, 2, 3, 4, 5], &last, "http://x/runs");
        assert_eq!(page, [5]);
        assert!(!link.expect("prev/first").contains("rel=\"next\""));
    }
}
