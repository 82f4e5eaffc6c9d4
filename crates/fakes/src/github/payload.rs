//! JSON documents in GitHub's shapes: `workflow_job` and `ping` webhook
//! payloads, and the job / run / repository objects of the REST API.
//!
//! Payloads carry every field of the webhook schema (docs/github.md §0.2) and the
//! full repository, owner, sender and organization objects, so they weigh
//! 6–9 KB like real ones; parsers and benchmarks see realistic input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::{Map, Value, json};
use std::time::{Duration, SystemTime};

use super::HOOK_ID;
use super::time::rfc3339;
use super::views::{JobStatus, JobView, OwnerKind, RepoView};

/// Base of every `html_url`.
pub const WEB_URL: &str = "https://github.com";

/// Login of the user every event is attributed to.
const SENDER_LOGIN: &str = "octo-developer";

/// Repository creation time used in payloads (fixed: repos predate the fake).
fn repo_created_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
}

/// A `workflow_job` webhook body for `action` (`queued`, `waiting`,
/// `in_progress`, `completed`). `api_url` is the REST base the `url` fields
/// point at (`https://api.github.com` on github.com, the fake's own base in
/// tests). Note `action` and `job.status` may differ (queued/waiting).
pub fn workflow_job_payload(api_url: &str, action: &str, job: &JobView, repo: &RepoView) -> Value {
    let mut body = Map::new();
    body.insert("action".into(), action.into());
    body.insert("workflow_job".into(), job_json(api_url, job, repo));
    body.insert("repository".into(), repository_json(api_url, repo));
    if repo.owner_kind == OwnerKind::Organization {
        body.insert("organization".into(), organization_json(api_url, repo));
    }
    body.insert("sender".into(), sender_json(api_url));
    Value::Object(body)
}

/// The `ping` event GitHub sends when a hook is created.
pub fn ping_payload(api_url: &str, repo: &RepoView, hook_url: &str) -> Value {
    let hooks = format!("{api_url}/repos/{}/hooks/{HOOK_ID}", repo.full_name);
    let now = rfc3339(SystemTime::now());
    let mut body = Map::new();
    body.insert("zen".into(), "Design for failure.".into());
    body.insert("hook_id".into(), HOOK_ID.into());
    body.insert(
        "hook".into(),
        json!({
            "type": "Repository", "id": HOOK_ID, "name": "web", "active": true,
            "events": ["workflow_job"],
            "config": { "content_type": "json", "insecure_ssl": "0", "url": hook_url },
            "updated_at": now, "created_at": now,
            "url": hooks, "test_url": format!("{hooks}/test"), "ping_url": format!("{hooks}/pings"),
            "deliveries_url": format!("{hooks}/deliveries"),
            "last_response": { "code": null, "status": "unused", "message": null },
        }),
    );
    body.insert("repository".into(), repository_json(api_url, repo));
    if repo.owner_kind == OwnerKind::Organization {
        body.insert("organization".into(), organization_json(api_url, repo));
    }
    body.insert("sender".into(), sender_json(api_url));
    Value::Object(body)
}

/// The job object of `GET …/actions/jobs/{id}` and of `workflow_job` payloads.
pub fn job_json(api_url: &str, job: &JobView, repo: &RepoView) -> Value {
    let repo_api = format!("{api_url}/repos/{}", repo.full_name);
    json!({
        "id": job.id,
        "run_id": job.run_id,
        "workflow_name": job.workflow_name,
        "head_branch": job.head_branch,
        "run_url": format!("{repo_api}/actions/runs/{}", job.run_id),
        "run_attempt": job.run_attempt,
        "node_id": node_id("CR_kwDO", job.id),
        "head_sha": job.head_sha,
        "url": format!("{repo_api}/actions/jobs/{}", job.id),
        "html_url": format!("{WEB_URL}/{}/actions/runs/{}/job/{}", repo.full_name, job.run_id, job.id),
        "status": job.status.as_str(),
        "conclusion": job.conclusion,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "completed_at": job.completed_at.map(rfc3339),
        "name": job.name,
        "steps": steps_json(job),
        "check_run_url": format!("{repo_api}/check-runs/{}", job.id),
        "labels": job.labels,
        "runner_id": job.runner_id,
        "runner_name": job.runner_name,
        "runner_group_id": job.runner_group_id,
        "runner_group_name": job.runner_group_name,
    })
}

/// Steps as GitHub reports them: none while queued, "Set up job" while
/// running, a handful once completed (the last one carries the conclusion).
fn steps_json(job: &JobView) -> Value {
    let started = rfc3339(job.started_at);
    match job.status {
        JobStatus::Queued | JobStatus::Waiting => json!([]),
        JobStatus::InProgress => json!([{
            "name": "Set up job", "status": "in_progress", "conclusion": null,
            "number": 1, "started_at": started, "completed_at": null,
        }]),
        JobStatus::Completed => {
            let done = job.completed_at.map_or_else(|| started.clone(), rfc3339);
            let last = job.conclusion.clone().unwrap_or_else(|| "success".to_owned());
            let names = [
                "Set up job",
                "Run actions/checkout@v4",
                "Run tests",
                "Complete job",
            ];
            let steps: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let conclusion = if i + 2 == names.len() {
                        last.as_str()
                    } else {
                        "success"
                    };
                    json!({
                        "name": name, "status": "completed", "conclusion": conclusion,
                        "number": i + 1, "started_at": started, "completed_at": done,
                    })
                })
                .collect();
            Value::Array(steps)
        }
    }
}

/// Facts of a workflow run for [`run_json`].
#[derive(Debug, Clone)]
pub(super) struct RunFacts<'a> {
    pub id: u64,
    pub run_number: u64,
    pub name: &'a str,
    pub path: &'a str,
    pub head_sha: &'a str,
    pub head_branch: &'a str,
    pub status: &'a str,
    pub conclusion: Option<&'a str>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// The workflow run object of `GET …/actions/runs[/{id}]`.
pub(super) fn run_json(api_url: &str, run: &RunFacts<'_>, repo: &RepoView) -> Value {
    let repo_api = format!("{api_url}/repos/{}", repo.full_name);
    let run_api = format!("{repo_api}/actions/runs/{}", run.id);
    let workflow_id = super::views::stable_id(run.path, 10_000_000, 90_000_000);
    let minimal_repo = json!({
        "id": repo.id, "node_id": node_id("R_kgDO", repo.id), "name": repo.name,
        "full_name": repo.full_name, "private": repo.visibility.is_private(),
        "owner": { "login": repo.owner, "id": repo.owner_id, "type": repo.owner_kind.as_str() },
        "html_url": format!("{WEB_URL}/{}", repo.full_name), "url": repo_api,
    });
    json!({
        "id": run.id, "name": run.name, "node_id": node_id("WFR_kwLO", run.id),
        "head_branch": run.head_branch, "head_sha": run.head_sha, "path": run.path,
        "display_title": format!("{} #{}", run.name, run.run_number),
        "run_number": run.run_number, "event": "push",
        "status": run.status, "conclusion": run.conclusion,
        "workflow_id": workflow_id, "check_suite_id": run.id + 7_000_000_000,
        "url": run_api, "html_url": format!("{WEB_URL}/{}/actions/runs/{}", repo.full_name, run.id),
        "jobs_url": format!("{run_api}/jobs"), "logs_url": format!("{run_api}/logs"),
        "cancel_url": format!("{run_api}/cancel"), "rerun_url": format!("{run_api}/rerun"),
        "workflow_url": format!("{repo_api}/actions/workflows/{workflow_id}"),
        "created_at": rfc3339(run.created_at), "updated_at": rfc3339(run.updated_at),
        "run_started_at": rfc3339(run.created_at), "run_attempt": 1,
        "repository": minimal_repo.clone(), "head_repository": minimal_repo,
    })
}

/// `(field, suffix)` of the templated URLs of a repository object.
const REPO_URLS: &[(&str, &str)] = &[
    ("forks_url", "/forks"),
    ("keys_url", "/keys{/key_id}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("teams_url", "/teams"),
    ("hooks_url", "/hooks"),
    ("issue_events_url", "/issues/events{/number}"),
    ("events_url", "/events"),
    ("assignees_url", "/assignees{/user}"),
    ("branches_url", "/branches{/branch}"),
    ("tags_url", "/tags"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("trees_url", "/git/trees{/sha}"),
    ("statuses_url", "/statuses/{sha}"),
    ("languages_url", "/languages"),
    ("stargazers_url", "/stargazers"),
    ("contributors_url", "/contributors"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("commits_url", "/commits{/sha}"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("comments_url", "/comments{/number}"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("contents_url", "/contents/{+path}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("merges_url", "/merges"),
    ("archive_url", "/{archive_format}{/ref}"),
    ("downloads_url", "/downloads"),
    ("issues_url", "/issues{/number}"),
    ("pulls_url", "/pulls{/number}"),
    ("milestones_url", "/milestones{/number}"),
    ("notifications_url", "/notifications{?since,all,participating}"),
    ("labels_url", "/labels{/name}"),
    ("releases_url", "/releases{/id}"),
    ("deployments_url", "/deployments"),
];

/// The full repository object of webhook payloads.
pub fn repository_json(api_url: &str, repo: &RepoView) -> Value {
    let repo_api = format!("{api_url}/repos/{}", repo.full_name);
    let html = format!("{WEB_URL}/{}", repo.full_name);
    let mut obj = json!({
        "id": repo.id, "node_id": node_id("R_kgDO", repo.id), "name": repo.name,
        "full_name": repo.full_name, "private": repo.visibility.is_private(),
        "owner": account_json(api_url, &repo.owner, repo.owner_id, repo.owner_kind),
        "html_url": html, "description": format!("{} service", repo.name), "fork": false,
        "url": repo_api,
        "created_at": rfc3339(repo_created_at()), "updated_at": rfc3339(SystemTime::now()),
        "pushed_at": rfc3339(SystemTime::now()),
        "git_url": format!("git://github.com/{}.git", repo.full_name),
        "ssh_url": format!("git@github.com:{}.git", repo.full_name),
        "clone_url": format!("{html}.git"), "svn_url": html, "homepage": null,
    });
    // Split in two: one json! literal this large exceeds the macro recursion limit.
    let counters = json!({
        "size": 4821, "stargazers_count": 12, "watchers_count": 12, "language": "Rust",
        "has_issues": true, "has_projects": true, "has_downloads": true, "has_wiki": false,
        "has_pages": false, "has_discussions": false, "forks_count": 1, "mirror_url": null,
        "archived": false, "disabled": false, "open_issues_count": 3, "license": null,
        "allow_forking": false, "is_template": false, "web_commit_signoff_required": false,
        "topics": ["ci"], "visibility": repo.visibility.as_str(), "forks": 1, "open_issues": 3,
        "watchers": 12, "default_branch": repo.default_branch, "custom_properties": {},
    });
    if let (Some(map), Value::Object(extra)) = (obj.as_object_mut(), counters) {
        map.extend(extra);
        for (field, suffix) in REPO_URLS {
            map.insert((*field).into(), format!("{repo_api}{suffix}").into());
        }
    }
    obj
}

/// A user or organisation account object (`owner`, `sender`).
fn account_json(api_url: &str, login: &str, id: u64, kind: OwnerKind) -> Value {
    let base = match kind {
        OwnerKind::Organization => format!("{api_url}/orgs/{login}"),
        OwnerKind::User => format!("{api_url}/users/{login}"),
    };
    let users = format!("{api_url}/users/{login}");
    json!({
        "login": login, "id": id, "node_id": node_id("MDQ6VXNlcj", id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "", "url": base, "html_url": format!("{WEB_URL}/{login}"),
        "followers_url": format!("{users}/followers"),
        "following_url": format!("{users}/following{{/other_user}}"),
        "gists_url": format!("{users}/gists{{/gist_id}}"),
        "starred_url": format!("{users}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{users}/subscriptions"),
        "organizations_url": format!("{users}/orgs"),
        "repos_url": format!("{users}/repos"),
        "events_url": format!("{users}/events{{/privacy}}"),
        "received_events_url": format!("{users}/received_events"),
        "type": kind.as_str(), "user_view_type": "public", "site_admin": false,
    })
}

fn organization_json(api_url: &str, repo: &RepoView) -> Value {
    let org = format!("{api_url}/orgs/{}", repo.owner);
    json!({
        "login": repo.owner, "id": repo.owner_id, "node_id": node_id("O_kgDO", repo.owner_id),
        "url": org, "repos_url": format!("{org}/repos"), "events_url": format!("{org}/events"),
        "hooks_url": format!("{org}/hooks"), "issues_url": format!("{org}/issues"),
        "members_url": format!("{org}/members{{/member}}"),
        "public_members_url": format!("{org}/public_members{{/member}}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", repo.owner_id),
        "description": null,
    })
}

fn sender_json(api_url: &str) -> Value {
    let id = super::views::stable_id(SENDER_LOGIN, 1_000_000, 150_000_000);
    account_json(api_url, SENDER_LOGIN, id, OwnerKind::User)
}

/// An opaque GraphQL node id in GitHub's newer style.
pub(super) fn node_id(prefix: &str, id: u64) -> String {
    format!("{prefix}{}", STANDARD_NO_PAD.encode(id.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_job(status: JobStatus) -> JobView {
        let now = SystemTime::now();
        JobView {
            id: 12_877_621_891,
            run_id: 4_747_967_848,
            run_attempt: 1,
            repo: "acme/widgets".into(),
            name: "test (2)".into(),
            workflow_name: "CI".into(),
            head_sha: "a".repeat(40),
            head_branch: "main".into(),
            labels: vec!["self-hosted".into(), "linux".into()],
            status,
            conclusion: (status == JobStatus::Completed).then(|| "success".to_owned()),
            runner_id: None,
            runner_name: None,
            runner_group_id: None,
            runner_group_name: None,
            created_at: now,
            started_at: now,
            completed_at: (status == JobStatus::Completed).then_some(now),
        }
    }

    #[test]
    fn a_workflow_job_payload_has_every_schema_field_and_a_realistic_size() {
        let repo = RepoView::organization("acme/widgets");
        let payload = workflow_job_payload(
            "https://api.github.com",
            "completed",
            &sample_job(JobStatus::Completed),
            &repo,
        );
        let job = &payload["workflow_job"];
        for field in [
            "id",
            "run_id",
            "run_url",
            "run_attempt",
            "node_id",
            "head_sha",
            "url",
            "html_url",
            "status",
            "conclusion",
            "started_at",
            "completed_at",
            "name",
            "steps",
            "check_run_url",
            "labels",
            "runner_id",
            "runner_name",
            "runner_group_id",
            "runner_group_name",
            "workflow_name",
            "head_branch",
            "created_at",
        ] {
            assert!(job.get(field).is_some(), "workflow_job.{field} missing");
        }
        assert_eq!(payload["organization"]["login"], "acme");
        assert_eq!(payload["repository"]["full_name"], "acme/widgets");
        assert_eq!(job["id"], 12_877_621_891_u64);
        let size = serde_json::to_vec(&payload).map(|v| v.len()).unwrap_or(0);
        assert!((6_000..=9_500).contains(&size), "payload is {size} bytes");
    }

    #[test]
    fn a_user_repo_payload_has_no_organization() {
        let repo = RepoView::user("alice/tools");
        let payload = workflow_job_payload(
            "https://api.github.com",
            "queued",
            &sample_job(JobStatus::Queued),
            &repo,
        );
        assert!(payload.get("organization").is_none());
        assert_eq!(payload["repository"]["owner"]["type"], "User");
        assert_eq!(payload["workflow_job"]["steps"], json!([]));
    }

    #[test]
    fn a_public_repository_says_so_in_payloads_and_runs() {
        let private = RepoView::organization("acme/widgets");
        let payload = workflow_job_payload(
            "https://api.github.com",
            "queued",
            &sample_job(JobStatus::Queued),
            &private,
        );
        assert_eq!(payload["repository"]["private"], true);
        assert_eq!(payload["repository"]["visibility"], "private");

        let public = RepoView::organization("acme/widgets").public();
        let payload = workflow_job_payload(
            "https://api.github.com",
            "queued",
            &sample_job(JobStatus::Queued),
            &public,
        );
        assert_eq!(payload["repository"]["private"], false);
        assert_eq!(payload["repository"]["visibility"], "public");
        let now = SystemTime::now();
        let facts = RunFacts {
            id: 1,
            run_number: 1,
            name: "CI",
            path: ".github/workflows/ci.yml",
            head_sha: "a",
            head_branch: "main",
            status: "queued",
            conclusion: None,
            created_at: now,
            updated_at: now,
        };
        let run = run_json("https://api.github.com", &facts, &public);
        assert_eq!(run["repository"]["private"], false);
    }

    #[test]
    fn a_ping_payload_names_the_hook() {
        let payload = ping_payload(
            "https://api.github.com",
            &RepoView::organization("acme/widgets"),
            "http://x/hook",
        );
        assert_eq!(payload["hook_id"], HOOK_ID);
        assert_eq!(payload["hook"]["config"]["url"], "http://x/hook");
        assert!(payload["zen"].is_string());
    }
}
