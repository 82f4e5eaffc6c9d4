//! The client against the fake GitHub: conditional polling and the budgets.

use std::time::Duration;

use fakes::github::{
    FakeApp, FakeGitHub, FakeGitHubConfig, Fault, FaultRule, JobSpec, Route, RunSpec, TEST_APP_PUBLIC_KEY_PEM,
};
use secrecy::SecretString;

use super::*;
use crate::domain::RepoName;

async fn fake_and_client(app: bool) -> (FakeGitHub, GitHub) {
    let config = FakeGitHubConfig {
        app: app.then(|| FakeApp {
            id: 4242,
            public_key_pem: TEST_APP_PUBLIC_KEY_PEM.into(),
            installation_id: None,
            owner_installations: vec![("alpha".into(), 7), ("beta".into(), 8)],
            token_ttl: Duration::from_secs(3600),
        }),
        ..FakeGitHubConfig::default()
    };
    let fake = FakeGitHub::start(config.clone()).await.expect("fake GitHub");
    let credentials = if app {
        Credentials::App(AppCredentials {
            app_id: 4242,
            private_key: SecretString::from(fakes::github::TEST_APP_PRIVATE_KEY_PEM),
            installation_id: None,
            owners: vec!["alpha".into(), "beta".into()],
        })
    } else {
        Credentials::Token(SecretString::from(config.token))
    };
    let github = GitHub::new(
        GitHubConfig {
            api_url: fake.api_url(),
            credentials,
            timeout: Duration::from_secs(5),
            retry: Backoff::new(2, Duration::from_millis(1), Duration::from_millis(1)),
            rate_reserve: None,
            scope: RunnerScope::Repo,
        },
        None,
    )
    .expect("client");
    (fake, github)
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).expect("valid")
}

fn jit(name: &str) -> JitRequest {
    JitRequest {
        name: name.into(),
        runner_group_id: 1,
        labels: vec!["self-hosted".into(), "modal".into()],
        work_folder: "_work".into(),
    }
}

#[tokio::test]
async fn a_repeated_listing_is_sent_with_its_etag_and_an_unchanged_one_costs_nothing() {
    let (fake, github) = fake_and_client(false).await;
    let r = repo("octo/idle");
    fake.add_repo(r.as_str());

    let first = github.list_runs(&r, "queued").await.expect("listed");
    let again = github.list_runs(&r, "queued").await.expect("listed");
    assert_eq!(first, again);
    let calls = fake.calls();
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [200, 304],
        "the second listing was conditional"
    );
    assert_eq!(fake.counted_calls().len(), 1);

    // A change is seen at once, and remembered for the next pass.
    fake.queue_run(RunSpec::new(
        r.as_str(),
        vec![JobSpec::new("build", ["self-hosted", "modal"])],
    ));
    let changed = github.list_runs(&r, "queued").await.expect("listed");
    assert_eq!(changed.len(), 1);
    assert_eq!(github.list_runs(&r, "queued").await.expect("listed"), changed);
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 304, 200, 304]);

    // Reads that are not polled are sent whole.
    let runner = github
        .generate_jitconfig(&github.home_of(&r), &jit("modal-1-1"))
        .await
        .expect("registered");
    let _ = github
        .runner_by_name(&github.home_of(&r), "modal-1-1")
        .await
        .expect("found");
    let _ = github
        .runner_by_name(&github.home_of(&r), "modal-1-1")
        .await
        .expect("found");
    assert!(runner.runner_id > 0);
    assert!(
        fake.calls()
            .iter()
            .filter(|c| c.query.as_deref().is_some_and(|q| q.contains("name=")))
            .all(|c| c.status == 200)
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn at_the_reserve_background_calls_are_not_sent_while_registrations_still_go() {
    let (fake, github) = fake_and_client(false).await;
    let r = repo("octo/busy");
    fake.add_repo(r.as_str());
    // 400 left of 5,000: under the default reserve of 500.
    fake.spend_budget(4600);
    github
        .list_runs(&r, "queued")
        .await
        .expect("the first answer tells the budget");
    let sent = fake.calls().len();

    let deferred = github.list_runs(&r, "in_progress").await;
    assert!(
        matches!(deferred, Err(GitHubError::Deferred { remaining }) if remaining < 500),
        "{deferred:?}"
    );
    assert!(matches!(
        github.list_runners(&github.home_of(&r)).await,
        Err(GitHubError::Deferred { .. })
    ));
    assert!(matches!(
        github.get_run(&r, 1).await,
        Err(GitHubError::Deferred { .. })
    ));
    assert_eq!(fake.calls().len(), sent, "nothing was sent");

    github
        .generate_jitconfig(&github.home_of(&r), &jit("modal-2-1"))
        .await
        .expect("registered");
    let found = github
        .runner_by_name(&github.home_of(&r), "modal-2-1")
        .await
        .expect("looked up");
    let id = found.expect("registered").id;
    assert_eq!(
        github
            .delete_runner(&github.home_of(&r), id)
            .await
            .expect("deleted"),
        DeleteOutcome::Deleted
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_primary_limit_on_one_installation_never_holds_back_another() {
    let (fake, github) = fake_and_client(true).await;
    let (alpha, beta) = (repo("alpha/app"), repo("beta/app"));
    fake.add_repo(alpha.as_str());
    fake.add_repo(beta.as_str());
    // alpha's installation runs out.
    fake.inject(FaultRule::new(
        Route::ListRuns,
        Fault::PrimaryRateLimit { reset_in_secs: 600 },
    ));
    let limited = github.list_runs(&alpha, "queued").await;
    assert!(
        matches!(limited, Err(GitHubError::Deferred { remaining: 0 })),
        "refused, then not retried before the reset: {limited:?}"
    );
    assert_eq!(
        fake.calls().iter().filter(|c| c.route == Route::ListRuns).count(),
        1
    );

    // beta's calls go at once, essential or not.
    let quick = Duration::from_secs(3);
    let registered = tokio::time::timeout(
        quick,
        github.generate_jitconfig(&github.home_of(&beta), &jit("modal-3-1")),
    )
    .await;
    assert!(matches!(registered, Ok(Ok(_))), "beta registers");
    let polled = tokio::time::timeout(quick, github.list_runs(&beta, "queued")).await;
    assert!(matches!(polled, Ok(Ok(_))), "beta polls");

    // alpha waits: background calls are deferred, essential ones wait for the reset.
    assert!(matches!(
        github.list_runs(&alpha, "in_progress").await,
        Err(GitHubError::Deferred { .. })
    ));
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        github.generate_jitconfig(&github.home_of(&alpha), &jit("modal-4-1")),
    )
    .await;
    assert!(waiting.is_err(), "alpha's registration waits for its reset");
    assert_eq!(github.rate("beta").remaining.map(|r| r > 0), Some(true));
    fake.shutdown().await;
}
