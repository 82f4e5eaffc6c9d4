//! Runners at the organisation and the enterprise, one GitHub App installation per owner,
//! and two deployments sharing one Modal app and one organisation.

use std::collections::HashSet;
use std::time::Duration;

use fakes::github::{
    CallRecord, HOOK_ID, JOB_ID_BASE, JobSpec, RunSpec, RunnerBehavior, Scope, WebhookTarget,
};
use testkit::both_backends;

use crate::helpers::{Kind, Options, Peer, SECRET, World, processes_under, wait};

const LABELS: [&str; 2] = ["self-hosted", "modal"];
const ACME: [&str; 3] = ["acme/one", "acme/two", "acme/three"];

fn job(repo: &str, labels: &[&str], ms: u64) -> RunSpec {
    RunSpec::new(
        repo,
        vec![JobSpec::new("build", labels.iter().copied()).duration(Duration::from_millis(ms))],
    )
}

fn completed(env: &World, job: u64) -> bool {
    env.github
        .job(job)
        .is_some_and(|j| j.status.as_str() == "completed")
}

/// Where the scenario's runners are registered.
#[derive(Clone, Copy)]
enum At {
    Org,
    Enterprise,
}

/// Three repositories of acme with jobs delivered by acme's organisation hook; a fourth
/// of another owner, whose job reaches the service through that owner's hook. Runners go
/// to `at`, in the group named by RUNNER_GROUP, which sits on the second page of the
/// groups list.
async fn runners_are_registered_grouped_and_deleted_at(kind: Kind, at: At) {
    // Arrange
    let (scope, place, base) = match at {
        At::Org => ("org", Scope::Organization("acme".into()), "/orgs/acme"),
        At::Enterprise => ("enterprise", Scope::Enterprise("big".into()), "/enterprises/big"),
    };
    let mut options = Options::backend(kind)
        .with("RUNNER_SCOPE", scope)
        .with("GITHUB_ENTERPRISE", "big")
        .with("ALLOWED_REPOS", "acme/*")
        .with("RUNNER_GROUP", "modal-runners")
        .with("RECONCILE_INTERVAL_SECS", "1");
    if matches!(at, At::Org) {
        options.env.retain(|(k, _)| k != "GITHUB_ENTERPRISE");
    }
    options.repo = ACME[0].into();
    let mut env = World::prepare(options).await;
    for repo in ACME.iter().skip(1).chain(&["other/app"]) {
        env.github.add_repo(repo);
    }
    env.github.add_enterprise("big", &["acme"]);
    for i in 0..120 {
        env.github.add_runner_group(&place, &format!("group {i}"));
    }
    let group = env
        .github
        .add_runner_group(&place, "modal-runners")
        .expect("the place exists");
    let hook = |org: &str| WebhookTarget::json(env.url("/webhook"), SECRET).organization(org);
    env.github.set_webhook(hook("acme"));
    let other_hook = env.github.add_webhook(hook("other"));
    env.start_service().await;

    // Act: one job in each acme repository, and one of the other owner.
    let jobs: Vec<u64> = ACME
        .iter()
        .map(|repo| env.github.queue_run(job(repo, &LABELS, 200)).job_ids[0])
        .collect();
    let foreign = env.github.queue_run(job("other/app", &LABELS, 200)).job_ids[0];
    let done = env
        .github
        .wait_until(Duration::from_secs(30), |_| {
            jobs.iter().all(|j| completed(&env, *j))
        })
        .await;
    assert!(done, "the three jobs complete:\n{}", env.tail_logs(60));
    // Then a runner whose job is cancelled before it connects: deleted where it lives.
    env.github.set_runner_behavior(|_| RunnerBehavior::NeverConnect);
    let cancelled = env.github.queue_run(job(ACME[1], &LABELS, 200)).job_ids[0];
    let registered = env
        .github
        .wait_until(Duration::from_secs(20), |gh| !gh.runners().is_empty())
        .await;
    assert!(registered, "registered:\n{}", env.tail_logs(40));
    assert!(wait(Duration::from_secs(10), || !env.live_sandboxes().is_empty()).await);
    env.github.cancel_job(cancelled);
    env.assert_nothing_left(Duration::from_secs(20)).await;

    // Assert: every registration at `base`, in the named group.
    let calls = env.github.calls();
    let jit: Vec<&CallRecord> = calls
        .iter()
        .filter(|c| c.path.ends_with("/generate-jitconfig"))
        .collect();
    assert_eq!(jit.len(), 4, "one runner per job");
    for call in &jit {
        assert_eq!(call.path, format!("{base}/actions/runners/generate-jitconfig"));
        assert_eq!(call.status, 201);
        let body = call.body.as_ref().expect("a JSON body");
        assert_eq!(body["runner_group_id"], group);
    }
    for id in &jobs {
        let view = env.github.job(*id).expect("job");
        assert_eq!(view.runner_group_name.as_deref(), Some("modal-runners"));
    }
    // The group was found on the second page of the list.
    assert!(calls.iter().any(|c| {
        c.path == format!("{base}/actions/runner-groups")
            && c.query.as_deref().is_some_and(|q| q.contains("page=2"))
            && c.status == 200
    }));
    // Removal and the orphan sweep happen at the same place, never per repository.
    assert!(calls.iter().any(|c| {
        c.method == "DELETE" && c.path.starts_with(&format!("{base}/actions/runners/")) && c.status == 204
    }));
    assert!(
        calls
            .iter()
            .any(|c| c.method == "GET" && c.path == format!("{base}/actions/runners")),
        "the sweep lists {base}'s runners"
    );
    let per_repo: Vec<&str> = calls
        .iter()
        .filter(|c| c.path.starts_with("/repos/") && c.path.contains("/actions/runners"))
        .map(|c| c.path.as_str())
        .collect();
    assert!(per_repo.is_empty(), "no runner call per repository: {per_repo:?}");
    // The other owner's job was refused and got nothing.
    let refused = env
        .github
        .deliveries()
        .into_iter()
        .find(|d| d.job_id == Some(foreign) && d.hook_id == other_hook)
        .expect("delivered through the other owner's hook");
    assert_eq!(refused.status_code, Some(403));
    assert!(
        env.github
            .deliveries()
            .iter()
            .filter(|d| d.hook_id == HOOK_ID)
            .all(|d| d.job_id != Some(foreign)),
        "acme's hook does not carry the other owner's events"
    );
    assert!(
        env.github
            .registrations_ever()
            .iter()
            .all(|n| !n.contains(&foreign.to_string()))
    );
    env.assert_no_secret_in_logs();
}

async fn organisation_runners_serve_every_repository_of_the_org_from_a_named_group(kind: Kind) {
    runners_are_registered_grouped_and_deleted_at(kind, At::Org).await;
}

async fn enterprise_runners_serve_the_enterprises_org_from_a_named_group(kind: Kind) {
    runners_are_registered_grouped_and_deleted_at(kind, At::Enterprise).await;
}

both_backends!(
    organisation_runners_serve_every_repository_of_the_org_from_a_named_group,
    enterprise_runners_serve_the_enterprises_org_from_a_named_group,
);

#[tokio::test]
async fn a_runner_group_missing_at_an_organisation_stops_the_start_naming_the_group_and_the_org() {
    let mut options = Options::default()
        .with("RUNNER_SCOPE", "org")
        .with("ALLOWED_REPOS", "acme/*,beta/*")
        .with("RUNNER_GROUP", "gpu-runners");
    options.repo = "acme/one".into();
    let env = World::prepare(options).await;
    env.github.add_repo("beta/x");
    env.github
        .add_runner_group(&Scope::Organization("acme".into()), "gpu-runners");

    let Err(e) = env.build_service().await else {
        panic!("the service started without the group at beta");
    };
    let message = format!("{e:#}");
    assert!(
        message.contains("RUNNER_GROUP") && message.contains("`gpu-runners`") && message.contains("beta"),
        "{message}"
    );
}

#[tokio::test]
async fn each_owners_calls_use_the_token_of_that_owners_installation() {
    // Arrange: an App installed on acme (11) and on beta (12), its hook, runners at each org.
    let mut options = Options {
        github_app: Some(Duration::from_secs(3600)),
        app_installations: vec![("acme".into(), 11), ("beta".into(), 12)],
        ..Options::default()
    }
    .with("ALLOWED_REPOS", "acme/*,beta/*")
    .with("RUNNER_SCOPE", "org")
    .with("RECONCILE_INTERVAL_SECS", "1");
    options.repo = "acme/one".into();
    let mut env = World::prepare(options).await;
    env.github.add_repo("beta/two");
    env.github
        .set_webhook(WebhookTarget::json(env.url("/webhook"), SECRET).app());
    env.start_service().await;

    // Act
    env.github.queue_run(job("acme/one", &LABELS, 200));
    env.github.queue_run(job("beta/two", &LABELS, 200));
    env.wait_all_completed(Duration::from_secs(30)).await;
    env.assert_nothing_left(Duration::from_secs(20)).await;
    // Let a sweep list both organisations.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Assert: every call about an owner carried that owner's installation token.
    let calls = env.github.calls();
    let refused: Vec<String> = calls
        .iter()
        .filter(|c| matches!(c.status, 401 | 403))
        .map(|c| format!("{} {} {}", c.method, c.path, c.status))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let mut checked = HashSet::new();
    for call in calls.iter().filter(|c| c.installation.is_some()) {
        let owner = call
            .scope
            .as_ref()
            .map(Scope::owner)
            .expect("a call about an account");
        let expected = match owner {
            "acme" => 11,
            "beta" => 12,
            other => panic!("a call about {other}"),
        };
        assert_eq!(call.installation, Some(expected), "{} {}", call.method, call.path);
        checked.insert(owner.to_string());
    }
    assert_eq!(checked.len(), 2, "calls about both owners");
    for (org, installation) in [("acme", 11), ("beta", 12)] {
        let jit = calls
            .iter()
            .find(|c| c.path == format!("/orgs/{org}/actions/runners/generate-jitconfig"))
            .expect("a registration at the org");
        assert_eq!(jit.installation, Some(installation));
        assert!(env.github.installation_tokens_issued_for(installation) >= 1);
    }
    assert!(
        calls
            .iter()
            .any(|c| c.path == "/orgs/beta/installation" || c.path == "/repos/beta/two/installation"),
        "beta's installation was looked up"
    );
    env.assert_no_secret_in_logs();
}

/// The job id in a runner name `modal-<job>-<attempt>`.
fn job_of(name: &str) -> u64 {
    name.split('-').nth(1).and_then(|j| j.parse().ok()).unwrap_or(0)
}

/// Deployment `id`'s environment: its label, its id, and runners at acme.
fn deployment_env(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DEPLOYMENT_ID", id.to_string()),
        ("RUNNER_LABEL", id.to_string()),
        ("RUNNER_SCOPE", "org".into()),
        ("ALLOWED_REPOS", "acme/*".into()),
        ("RECONCILE_INTERVAL_SECS", "1".into()),
    ]
}

async fn two_deployments_sharing_an_app_and_an_org_never_touch_each_others_runners(kind: Kind) {
    // Arrange: deployments a and b, same Modal app, same name prefix, same org (and, on
    // the local backend, the same work directory); each with an organisation hook. The
    // first four jobs of each get runners that never connect: registrations that stay
    // offline and sandboxes that stay up, exactly what a sweep would remove if it took
    // them for its own.
    let mut options = Options::backend(kind);
    for (k, v) in deployment_env("team-a") {
        options = options.with(k, &v);
    }
    options.repo = ACME[0].into();
    let mut env = World::prepare(options).await;
    env.github.add_repo(ACME[1]);
    env.github.set_runner_behavior(|name| {
        if job_of(name) < JOB_ID_BASE + 8 {
            RunnerBehavior::NeverConnect
        } else {
            RunnerBehavior::Normal
        }
    });
    env.github
        .set_webhook(WebhookTarget::json(env.url("/webhook"), SECRET).organization("acme"));
    env.start_service().await;
    let b_env: Vec<(&str, String)> = deployment_env("team-b");
    let b_vars: Vec<(&str, &str)> = b_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut b: Peer = env.start_peer("b", &b_vars).await;
    env.github
        .add_webhook(WebhookTarget::json(b.url("/webhook"), SECRET).organization("acme"));

    // Act: the held jobs first (ids JOB_ID_BASE..+8), then a burst of six for each. A
    // held job asks for one more label, so that no burst runner can take it.
    let held = |label: &str, repo: &str| {
        (0..2)
            .map(|_| {
                let labels = ["self-hosted", label, "held"];
                env.github.queue_run(job(repo, &labels, 100)).job_ids[0]
            })
            .collect::<Vec<u64>>()
    };
    let mut held_a = held("team-a", ACME[0]);
    held_a.extend(held("team-a", ACME[1]));
    let mut held_b = held("team-b", ACME[0]);
    held_b.extend(held("team-b", ACME[1]));
    assert!(held_a.iter().chain(&held_b).all(|j| *j < JOB_ID_BASE + 8));
    let burst: Vec<u64> = (0..6)
        .flat_map(|i| {
            let repo = ACME[i % 2];
            [
                env.github
                    .queue_run(job(repo, &["self-hosted", "team-a"], 200))
                    .job_ids[0],
                env.github
                    .queue_run(job(repo, &["self-hosted", "team-b"], 200))
                    .job_ids[0],
            ]
        })
        .collect();
    let done = env
        .github
        .wait_until(Duration::from_secs(60), |_| {
            burst.iter().all(|j| completed(&env, *j))
        })
        .await;
    assert!(done, "both bursts complete:\n{}", env.tail_logs(60));
    let held_names: HashSet<String> = held_a
        .iter()
        .chain(&held_b)
        .map(|j| format!("modal-{j}-1"))
        .collect();
    let all_held = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.runners()
                .iter()
                .filter(|r| held_names.contains(&r.name))
                .count()
                == 8
        })
        .await;
    assert!(all_held, "eight held registrations:\n{}", env.tail_logs(40));
    let held_ids: HashSet<u64> = env
        .github
        .runners()
        .into_iter()
        .filter(|r| held_names.contains(&r.name))
        .map(|r| r.id)
        .collect();
    // Both sweep (every second) and reap while the held runners sit offline; b restarts,
    // so it adopts sandboxes over a work directory that holds a's too.
    let listings = |gh: &fakes::github::FakeGitHub| {
        gh.calls()
            .iter()
            .filter(|c| c.method == "GET" && c.path == "/orgs/acme/actions/runners")
            .count()
    };
    let before = listings(&env.github);
    b.stop().await;
    b.start().await;
    let swept = env
        .github
        .wait_until(Duration::from_secs(20), |gh| listings(gh) >= before + 6)
        .await;
    assert!(swept, "both deployments swept the org's runners several times");

    // Assert: no held registration was deleted, no held sandbox stopped, by either.
    let still: usize = env
        .github
        .runners()
        .iter()
        .filter(|r| held_ids.contains(&r.id))
        .count();
    assert_eq!(still, 8, "every held registration is still there");
    let deleted: Vec<String> = env
        .github
        .calls()
        .into_iter()
        .filter(|c| c.method == "DELETE")
        .filter(|c| {
            c.path
                .rsplit('/')
                .next()
                .and_then(|id| id.parse().ok())
                .is_some_and(|id| held_ids.contains(&id))
        })
        .map(|c| c.path)
        .collect();
    assert!(deleted.is_empty(), "held registrations deleted: {deleted:?}");
    let live = env.live_sandboxes();
    for name in &held_names {
        assert!(live.contains(name), "{name}'s sandbox is still up: {live:?}");
    }
    if let Some(modal) = &env.modal {
        let held_sandboxes: Vec<String> = modal
            .sandboxes()
            .into_iter()
            .filter(|s| s.name.as_ref().is_some_and(|n| held_names.contains(n)))
            .map(|s| s.id)
            .collect();
        let terminated: Vec<&String> = held_sandboxes
            .iter()
            .filter(|id| {
                modal
                    .requests()
                    .iter()
                    .any(|c| c.rpc == "SandboxTerminate" && c.request.contains(id.as_str()))
            })
            .collect();
        assert!(terminated.is_empty(), "held sandboxes terminated: {terminated:?}");
        for sb in modal.sandboxes().iter().filter(|s| s.name.is_some()) {
            let tag = sb.tag("modal-github-runner");
            assert!(
                matches!(tag, Some("team-a" | "team-b")),
                "{:?} tagged {tag:?}",
                sb.name
            );
        }
    } else {
        assert!(!processes_under(&env.work_dir()).is_empty());
    }
    // Each deployment's store holds only its own runners.
    let a_runners: HashSet<u64> = env.runners().await.iter().map(|r| r.job.0).collect();
    let b_runners: HashSet<u64> = b.runners().await.iter().map(|r| r.job.0).collect();
    assert!(
        held_a
            .iter()
            .all(|j| a_runners.contains(j) && !b_runners.contains(j))
    );
    assert!(
        held_b
            .iter()
            .all(|j| b_runners.contains(j) && !a_runners.contains(j))
    );

    // Then each cleans up its own: cancelled jobs' runners go, nothing is left.
    for j in held_a.iter().chain(&held_b) {
        env.github.cancel_job(*j);
    }
    env.assert_nothing_left(Duration::from_secs(30)).await;
    let mut b_live = Vec::new();
    for _ in 0..100 {
        b_live = b
            .runners()
            .await
            .into_iter()
            .filter(|r| r.state.is_live())
            .map(|r| format!("{} {}", r.name, r.state))
            .collect();
        if b_live.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b_live.is_empty(), "b's live runners: {b_live:?}");
    b.stop().await;
}

both_backends!(two_deployments_sharing_an_app_and_an_org_never_touch_each_others_runners);
