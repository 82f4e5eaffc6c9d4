//! `modal-github-runner check` against the fakes: each check passing on a well-configured
//! deployment and failing on what an operator gets wrong, without a single change at
//! GitHub, at Modal or in the store.

use std::time::Duration;

use fakes::github::{FakeGitHub, FakeGitHubConfig, Fault, FaultRule, HOOK_ID, Route, WebhookTarget};
use modal_github_runner::check::{self, CheckResult, Outcome};

use crate::helpers::{BIN, Kind, Options, REPO, SECRET, World, connect, jobs};

/// The checks `world`'s service would get, in process.
async fn run_checks(world: &World) -> Vec<CheckResult> {
    let settings = world.settings().expect("the configuration is valid");
    check::run(&settings).await
}

/// The one result whose name starts with `name`.
fn find<'r>(results: &'r [CheckResult], name: &str) -> &'r CheckResult {
    let found: Vec<_> = results.iter().filter(|r| r.name.starts_with(name)).collect();
    assert_eq!(found.len(), 1, "one `{name}` line expected in {results:#?}");
    found[0]
}

/// The fake GitHub saw only reads: no registration, removal or redelivery.
fn assert_only_reads(github: &FakeGitHub) {
    let writes: Vec<_> = github
        .calls()
        .into_iter()
        .filter(|c| c.method != "GET" && c.route != Route::CreateInstallationToken)
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(writes.is_empty(), "check changed something at GitHub: {writes:?}");
}

/// Runs the binary's `check` with `world`'s environment: its exit code and output.
/// (On a blocking thread: the fakes answer on this test's runtime meanwhile.)
async fn run_binary(world: &World) -> (Option<i32>, String) {
    let env = world.env_vars();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("check")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(env)
            .output()
    })
    .await
    .expect("the thread")
    .expect("check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn modal_world() -> Options {
    Options::backend(Kind::Modal)
        .with("ALLOWED_REPOS", REPO)
        .with("WEBHOOK_HOOK_ID", &HOOK_ID.to_string())
}

#[tokio::test]
async fn a_well_configured_deployment_passes_every_check_and_nothing_changes() {
    let world = World::prepare(modal_world()).await;
    world.github.set_token_scopes(Some("repo, workflow"));
    let (code, out) = run_binary(&world).await;

    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        "PASS github token: can list the runners of the repository octo/app (repository scope)",
        "PASS webhook octo/app hook 1: active, sends workflow_job, signed, json content",
        "WARN modal: credentials accepted; app ",
        "PASS runner version: RUNNER_VERSION=2.336.0",
        "PASS database: ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(expected)),
            "no line starts with `{expected}`:\n{out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
    let (_, modal_secret) = world.fake_modal().credentials();
    for secret in [
        FakeGitHubConfig::default().token,
        SECRET.to_string(),
        modal_secret,
    ] {
        assert!(!out.contains(&secret), "a secret was printed:\n{out}");
    }
    assert!(out.contains("does not exist yet"), "{out}");

    assert_only_reads(&world.github);
    assert!(world.fake_modal().apps().is_empty(), "check created a Modal app");
    assert!(
        !world.dir.path().join("store.db").exists(),
        "check created the database"
    );
}

#[tokio::test]
async fn after_a_first_start_the_app_exists_and_the_schema_is_current() {
    let mut world = World::prepare(modal_world()).await;
    world.start_service().await;
    world.stop_service().await;
    let results = run_checks(&world).await;

    let modal = find(&results, "modal");
    assert_eq!(modal.outcome, Outcome::Pass, "{modal}");
    assert!(modal.detail.contains("exists"), "{modal}");
    let database = find(&results, "database");
    assert_eq!(database.outcome, Outcome::Pass, "{database}");
    assert!(database.detail.contains("current"), "{database}");
}

#[tokio::test]
async fn a_rejected_token_fails_with_what_to_do_and_exit_code_1() {
    let world = World::prepare(Options::default().with("GITHUB_TOKEN", "ghp_revoked")).await;
    let (code, out) = run_binary(&world).await;

    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL github token: GitHub rejected the credentials"))
        .unwrap_or_else(|| panic!("no rejected-token line:\n{out}"));
    assert!(line.contains("fix: renew GITHUB_TOKEN"), "{line}");
    assert!(!out.contains("ghp_revoked"), "the token was printed:\n{out}");
}

#[tokio::test]
async fn a_configuration_error_exits_with_code_2() {
    let world = World::prepare(Options::default().with("RUNNER_SCOPE", "galaxy")).await;
    let (code, out) = run_binary(&world).await;
    assert_eq!(code, Some(2), "{out}");
}

#[tokio::test]
async fn a_repository_the_token_cannot_administer_fails_and_names_the_permission() {
    let world = World::prepare(Options::default().with("ALLOWED_REPOS", "octo/app,octo/hidden")).await;
    let results = run_checks(&world).await;

    let lines: Vec<_> = results.iter().filter(|r| r.name == "github token").collect();
    assert_eq!(lines.len(), 2, "{results:#?}");
    assert_eq!(lines[0].outcome, Outcome::Pass, "{}", lines[0]);
    assert_eq!(lines[1].outcome, Outcome::Fail, "{}", lines[1]);
    assert!(lines[1].detail.contains("octo/hidden"), "{}", lines[1]);
    assert!(
        lines[1]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("Administration")),
        "{}",
        lines[1]
    );
    assert_only_reads(&world.github);
}

#[tokio::test]
async fn a_classic_token_without_the_scope_of_its_runner_scope_fails() {
    let world = World::prepare(
        Options::default()
            .with("ALLOWED_REPOS", "octo/*")
            .with("RUNNER_SCOPE", "org"),
    )
    .await;
    world.github.set_token_scopes(Some("repo"));
    let results = run_checks(&world).await;
    let line = find(&results, "github token");
    assert_eq!(line.outcome, Outcome::Fail, "{line}");
    assert!(line.detail.contains("`admin:org`"), "{line}");

    world.github.set_token_scopes(Some("repo, admin:org"));
    let results = run_checks(&world).await;
    let line = find(&results, "github token");
    assert_eq!(line.outcome, Outcome::Pass, "{line}");
    assert!(line.detail.contains("organisation octo"), "{line}");
}

#[tokio::test]
async fn an_app_not_installed_on_an_allowed_owner_fails_for_that_owner() {
    let options = Options {
        github_app: Some(Duration::from_secs(3600)),
        app_installations: vec![("octo".into(), 77)],
        ..Options::default()
    };
    let world = World::prepare(options.with("ALLOWED_REPOS", "octo/app,beta/tool")).await;
    let results = run_checks(&world).await;

    let octo = find(&results, "github app installation on octo");
    assert_eq!(octo.outcome, Outcome::Pass, "{octo}");
    assert!(octo.detail.contains("77"), "{octo}");
    let beta = find(&results, "github app installation on beta");
    assert_eq!(beta.outcome, Outcome::Fail, "{beta}");
    assert!(
        beta.fix
            .as_deref()
            .is_some_and(|f| f.contains("install the App on beta"))
    );
    assert_only_reads(&world.github);
}

#[tokio::test]
async fn a_hook_without_workflow_job_or_without_a_secret_fails() {
    let world = World::prepare(
        Options::default()
            .with("ALLOWED_REPOS", REPO)
            .with("WEBHOOK_HOOK_ID", &HOOK_ID.to_string()),
    )
    .await;
    let url = format!("http://127.0.0.1:{}/webhook", world.port);

    world.github.set_hook_events(HOOK_ID, &["push"]);
    let results = run_checks(&world).await;
    let hook = find(&results, "webhook");
    assert_eq!(hook.outcome, Outcome::Fail, "{hook}");
    assert!(hook.detail.contains("does not send workflow_job"), "{hook}");
    assert!(hook.fix.as_deref().is_some_and(|f| f.contains("Workflow jobs")));

    world.github.set_hook_events(HOOK_ID, &["*"]);
    world.github.set_webhook(WebhookTarget::json(url.clone(), ""));
    let results = run_checks(&world).await;
    let hook = find(&results, "webhook");
    assert_eq!(hook.outcome, Outcome::Fail, "{hook}");
    assert!(hook.detail.contains("no secret"), "{hook}");

    world.github.set_webhook(WebhookTarget::form(url, SECRET));
    let results = run_checks(&world).await;
    let hook = find(&results, "webhook");
    assert_eq!(hook.outcome, Outcome::Pass, "{hook}");
    assert!(hook.detail.contains("form content"), "{hook}");
    assert_only_reads(&world.github);
}

#[tokio::test]
async fn failed_recent_deliveries_are_a_warning_with_their_count() {
    // Nothing listens on the world's port: the job's delivery fails.
    let world = World::prepare(
        Options::default()
            .with("ALLOWED_REPOS", REPO)
            .with("WEBHOOK_HOOK_ID", &HOOK_ID.to_string()),
    )
    .await;
    world.github.queue_run(jobs(1, 10));
    assert!(
        crate::helpers::wait(Duration::from_secs(20), || world
            .github
            .deliveries()
            .iter()
            .any(|d| d.event == "workflow_job"))
        .await,
        "the delivery was attempted"
    );
    let results = run_checks(&world).await;
    let hook = find(&results, "webhook");
    assert_eq!(hook.outcome, Outcome::Warn, "{hook}");
    assert!(
        hook.detail
            .starts_with("1 of the last 1 workflow_job deliveries failed"),
        "{hook}"
    );
    assert_only_reads(&world.github);
}

#[tokio::test]
async fn refused_modal_credentials_fail() {
    let world = World::prepare(modal_world().with("MODAL_TOKEN_SECRET", "as-wrong")).await;
    let results = run_checks(&world).await;
    let modal = find(&results, "modal");
    assert_eq!(modal.outcome, Outcome::Fail, "{modal}");
    assert!(modal.detail.contains("refused the credentials"), "{modal}");
    assert!(
        modal
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("MODAL_TOKEN_SECRET"))
    );
    assert!(!modal.to_string().contains("as-wrong"));
}

#[tokio::test]
async fn an_enterprise_server_without_downloads_and_without_runner_version_fails() {
    let ghes = FakeGitHub::start(FakeGitHubConfig {
        api_prefix: "/api/v3".into(),
        ..FakeGitHubConfig::default()
    })
    .await
    .expect("fake GHES");
    ghes.add_repo(REPO);
    let options = modal_world()
        .with("GITHUB_API_URL", &ghes.api_url())
        .with("WEBHOOK_HOOK_ID", "")
        .with("RUNNER_VERSION", "");
    let world = World::prepare(options).await;

    let results = run_checks(&world).await;
    let version = find(&results, "runner version");
    assert_eq!(version.outcome, Outcome::Pass, "served: {version}");
    assert!(version.detail.contains("2.336.0"), "{version}");

    ghes.inject(FaultRule::new(Route::RunnerDownloads, Fault::status(404)).times(10));
    let results = run_checks(&world).await;
    let version = find(&results, "runner version");
    assert_eq!(version.outcome, Outcome::Fail, "{version}");
    assert!(version.detail.contains("RUNNER_VERSION"), "{version}");
    assert_only_reads(&ghes);
    ghes.shutdown().await;
}

#[tokio::test]
async fn a_database_of_a_newer_schema_fails_and_an_older_one_warns() {
    let world = World::prepare(Options::default()).await;
    modal_github_runner::store::Store::open(&world.database_url())
        .await
        .expect("the store")
        .close()
        .await;
    let mut conn = connect(&world).await;
    let record = |version: i64| {
        format!(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
             VALUES ({version}, 'future', CURRENT_TIMESTAMP, 1, x'00', 0)"
        )
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(record(999)))
        .execute(&mut conn)
        .await
        .expect("a newer version recorded");
    let results = run_checks(&world).await;
    let db = find(&results, "database");
    assert_eq!(db.outcome, Outcome::Fail, "{db}");
    assert!(
        db.detail.contains("schema 999")
            && db.fix.as_deref() == Some("upgrade the binary (or restore a backup)")
    );

    sqlx::raw_sql("DELETE FROM _sqlx_migrations WHERE version > 1")
        .execute(&mut conn)
        .await
        .expect("back to version 1");
    let results = run_checks(&world).await;
    let db = find(&results, "database");
    assert_eq!(db.outcome, Outcome::Warn, "{db}");
    assert!(db.detail.contains("schema 1 is older"), "{db}");
    let left: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("version");
    assert_eq!(left, 1, "check migrated the database");
}

/// `JOB_SOURCE=scaleset` with two scale sets of the organisation `octo`, and no webhook.
fn scaleset_check_world() -> Options {
    Options::backend(Kind::Local)
        .with("JOB_SOURCE", "scaleset")
        .with("RUNNER_SCOPE", "org")
        .with("ALLOWED_REPOS", "octo/*")
        .with("SCALE_SETS", "modal,modal-big")
}

/// Nothing was created at the Actions service: no scale set, no session.
fn assert_nothing_created(github: &FakeGitHub) {
    assert!(github.scale_sets().is_empty(), "check created a scale set");
    assert!(
        github.scale_set_session_creates().is_empty(),
        "check opened a session"
    );
}

#[tokio::test]
async fn in_scale_set_mode_check_skips_the_webhooks_and_looks_each_scale_set_up_without_creating_it() {
    let mut world = World::prepare(scaleset_check_world()).await;

    let before = run_checks(&world).await;

    assert_nothing_created(&world.github);
    let webhooks = find(&before, "webhooks");
    assert_eq!(webhooks.outcome, Outcome::Pass);
    assert!(webhooks.detail.contains("JOB_SOURCE=scaleset"), "{webhooks}");
    let chain = find(&before, "actions service");
    assert_eq!(chain.outcome, Outcome::Pass, "{chain}");
    assert!(
        chain.detail.ends_with("/octo"),
        "the organisation's config URL: {chain}"
    );
    for set in ["scale set modal:", "scale set modal-big:"] {
        let line = before.iter().find(|r| format!("{r}").contains(set)).expect(set);
        assert_eq!(line.outcome, Outcome::Pass);
        assert!(line.detail.contains("created on first start"), "{line}");
    }
    assert!(before.iter().all(|r| r.outcome != Outcome::Fail), "{before:#?}");

    // Once the service has made them, check finds them.
    world.start_service().await;
    world.stop_service().await;
    let ids: Vec<u64> = world.github.scale_sets().iter().map(|s| s.id).collect();
    let after = run_checks(&world).await;
    for set in ["scale set modal:", "scale set modal-big:"] {
        let line = after.iter().find(|r| format!("{r}").contains(set)).expect(set);
        assert_eq!(line.outcome, Outcome::Pass);
        assert!(line.detail.starts_with("exists (id "), "{line}");
    }
    assert_eq!(
        world.github.scale_sets().iter().map(|s| s.id).collect::<Vec<_>>(),
        ids,
        "no scale set added or replaced"
    );
}

#[tokio::test]
async fn in_scale_set_mode_credentials_the_actions_service_refuses_fail_the_check() {
    let world = World::prepare(scaleset_check_world()).await;
    world.github.refuse_scale_set_registration(true);

    let (code, out) = run_binary(&world).await;

    assert_ne!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("actions service"))
        .unwrap_or_else(|| panic!("no actions service line in {out}"));
    assert!(line.starts_with("FAIL actions service: "), "{line}");
    assert!(line.contains("403"), "{line}");
    assert!(line.contains("fix: "), "{line}");
    assert!(
        !out.contains("PASS scale set"),
        "no scale set is looked up without an admin token: {out}"
    );
    assert_nothing_created(&world.github);
}
