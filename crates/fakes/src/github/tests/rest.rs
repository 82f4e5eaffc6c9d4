//! The REST API: registrations, auth, routing, runs, contents and limits.

use serde_json::json;

use super::*;

#[tokio::test]
async fn generate_jitconfig_returns_a_decodable_config_with_the_three_runner_files() {
    let fake = start_fake().await;
    let answer = register(&fake, "runner-1", &["self-hosted", "linux"]).await;
    assert_eq!(answer.status, 201);
    assert!(answer.header("x-ratelimit-remaining").is_some());
    let body = answer.json().expect("json");
    assert_eq!(body["runner"]["name"], "runner-1");
    assert_eq!(body["runner"]["status"], "offline");
    assert_eq!(body["runner"]["os"], "unknown");
    assert_eq!(body["runner"]["labels"][1]["name"], "linux");
    assert_eq!(body["runner"]["labels"][1]["type"], "custom");
    let encoded = body["encoded_jit_config"].as_str().expect("config");
    let (config, files) = JitConfig::decode(encoded).expect("decodes");
    assert_eq!(files.len(), 3);
    assert_eq!(config.settings.agent_name, "runner-1");
    assert_eq!(Some(config.settings.agent_id), body["runner"]["id"].as_u64());
    assert!(config.settings.server_url.starts_with(&fake.api_url()));
    assert!(config.settings.ephemeral && config.settings.use_v2_flow);
    assert_eq!(fake.registrations_ever(), ["runner-1"]);
    fake.shutdown().await;
}

#[tokio::test]
async fn every_jit_config_handed_out_is_listed_as_an_issued_secret() {
    let fake = start_fake().await;
    let first = jit_config(&fake, "runner-a", &["self-hosted"]).await;
    let second = jit_config(&fake, "runner-b", &["self-hosted"]).await;
    assert_eq!(fake.secrets_issued(), [first, second]);
    fake.shutdown().await;
}

#[tokio::test]
async fn registering_the_same_name_twice_answers_409() {
    let fake = start_fake().await;
    assert_eq!(register(&fake, "dup", &["self-hosted"]).await.status, 201);
    let second = register(&fake, "dup", &["self-hosted"]).await;
    assert_eq!(second.status, 409);
    assert_eq!(
        second.json().expect("json")["message"],
        "Already exists - A runner with the name dup already exists."
    );
    assert_eq!(fake.runners().len(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn invalid_registrations_answer_422_and_unknown_groups_404() {
    let fake = start_fake().await;
    let path = format!("/repos/{REPO}/actions/runners/generate-jitconfig");
    let missing = api(
        &fake,
        "POST",
        &path,
        Some(json!({ "name": "a", "runner_group_id": 1 })),
    )
    .await;
    assert_eq!(missing.status, 422);
    assert!(
        missing.json().expect("json")["message"]
            .as_str()
            .is_some_and(|m| m.contains("labels"))
    );
    assert_eq!(register(&fake, "a", &[]).await.status, 422);
    assert_eq!(register(&fake, &"n".repeat(65), &["x"]).await.status, 422);
    let group = json!({ "name": "a", "runner_group_id": 7, "labels": ["x"] });
    assert_eq!(api(&fake, "POST", &path, Some(group)).await.status, 404);
    assert!(fake.runners().is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn a_bad_or_replaced_token_answers_401() {
    let fake = start_fake().await;
    let path = format!("/repos/{REPO}/actions/runners");
    let bad = api_with_token(&fake, "wrong", "GET", &path, None).await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json().expect("json")["message"], "Bad credentials");
    assert_eq!(api(&fake, "GET", &path, None).await.status, 200);
    fake.set_token("new-token");
    assert_eq!(api(&fake, "GET", &path, None).await.status, 401);
    assert_eq!(
        api_with_token(&fake, "new-token", "GET", &path, None)
            .await
            .status,
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn unknown_repos_and_routes_answer_404() {
    let fake = start_fake().await;
    assert_eq!(
        api(&fake, "GET", "/repos/acme/nope/actions/runners", None)
            .await
            .status,
        404
    );
    let unknown = api(&fake, "GET", "/definitely/not/here", None).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json().expect("json")["message"], "Not Found");
    assert_eq!(fake.calls().last().map(|c| c.route), Some(Route::NotFound));
    fake.shutdown().await;
}

#[tokio::test]
async fn an_after_success_fault_creates_the_registration_yet_answers_500() {
    let fake = start_fake().await;
    fake.inject(FaultRule::new(
        Route::GenerateJitConfig,
        Fault::after_success(Fault::status(500)),
    ));
    assert_eq!(register(&fake, "retried", &["self-hosted"]).await.status, 500);
    assert_eq!(
        fake.runners().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["retried"]
    );
    assert_eq!(
        register(&fake, "retried", &["self-hosted"]).await.status,
        409,
        "the retry collides"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn runs_jobs_and_contents_are_served_in_githubs_shapes() {
    let fake = start_fake().await;
    let run = fake.queue_run(
        RunSpec::new(REPO, vec![JobSpec::new("a", ["x"]), JobSpec::new("b", ["x"])]).head_sha("c0ffee"),
    );
    fake.put_file(REPO, ".github/workflows/ci.yml", "c0ffee", "on: push\n");
    let runs = api(
        &fake,
        "GET",
        &format!("/repos/{REPO}/actions/runs?status=queued"),
        None,
    )
    .await;
    let runs = runs.json().expect("json");
    assert_eq!(runs["total_count"], 1);
    assert_eq!(runs["workflow_runs"][0]["path"], ".github/workflows/ci.yml");
    assert_eq!(runs["workflow_runs"][0]["head_sha"], "c0ffee");
    let jobs_path = format!("/repos/{REPO}/actions/runs/{}/jobs?per_page=1", run.run_id);
    let jobs = api(&fake, "GET", &jobs_path, None).await;
    assert!(jobs.header("link").is_some_and(|l| l.contains("rel=\"next\"")));
    assert_eq!(jobs.json().expect("json")["total_count"], 2);
    let file = api(
        &fake,
        "GET",
        &format!("/repos/{REPO}/contents/.github/workflows/ci.yml?ref=c0ffee"),
        None,
    )
    .await;
    let content = file.json().expect("json")["content"]
        .as_str()
        .expect("content")
        .replace('\n', "");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(content)
        .expect("base64");
    assert_eq!(decoded, b"on: push\n");
    let other_ref = format!("/repos/{REPO}/contents/.github/workflows/ci.yml?ref=main");
    assert_eq!(api(&fake, "GET", &other_ref, None).await.status, 404);
    fake.shutdown().await;
}

#[tokio::test]
async fn limits_and_rate_limit_faults_answer_403_and_are_counted() {
    let fake = start_fake().await;
    let path = format!("/repos/{REPO}/actions/runners");
    fake.inject(FaultRule::new(
        Route::ListRunners,
        Fault::SecondaryRateLimit { retry_after_secs: 7 },
    ));
    let limited = api(&fake, "GET", &path, None).await;
    assert_eq!((limited.status, limited.header("retry-after")), (403, Some("7")));
    fake.inject(FaultRule::new(
        Route::Any,
        Fault::PrimaryRateLimit { reset_in_secs: 60 },
    ));
    let primary = api(&fake, "GET", &path, None).await;
    assert_eq!(
        (primary.status, primary.header("x-ratelimit-remaining")),
        (403, Some("0"))
    );
    fake.set_limits(Limits {
        points_per_minute_per_endpoint: Some(2),
        ..Limits::default()
    });
    assert_eq!(api(&fake, "GET", &path, None).await.status, 200);
    assert_eq!(api(&fake, "GET", &path, None).await.status, 200);
    assert_eq!(api(&fake, "GET", &path, None).await.status, 403);
    assert_eq!(
        api(&fake, "GET", "/rate_limit", None).await.status,
        200,
        "rate_limit is free"
    );
    assert_eq!(fake.rate_limit_errors(), 3);
    fake.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_and_runners_can_be_filtered_by_exact_name() {
    let fake = start_fake().await;
    for name in ["alpha", "alphabet"] {
        assert_eq!(register(&fake, name, &["self-hosted"]).await.status, 201);
    }
    fake.set_latency(Route::ListRunners, std::time::Duration::from_millis(150));
    let path = format!("/repos/{REPO}/actions/runners?name=alpha");
    let started = std::time::Instant::now();
    let found = api(&fake, "GET", &path, None).await.json().expect("json");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert_eq!(found["total_count"], 1);
    assert_eq!(found["runners"][0]["name"], "alpha");
    let call = fake.calls().into_iter().last().expect("recorded");
    assert_eq!(
        (call.route, call.query.as_deref()),
        (Route::ListRunners, Some("name=alpha"))
    );
    fake.shutdown().await;
}

/// A GET with `If-None-Match`.
async fn get_if_none_match(fake: &FakeGitHub, path: &str, etag: &str) -> HttpResponse {
    let client = HttpClient::one_shot(std::time::Duration::from_secs(10));
    let auth = format!("Bearer {}", FakeGitHubConfig::default().token);
    let url = format!("{}{path}", fake.api_url());
    client
        .send(
            "GET",
            &url,
            &[("authorization", &auth), ("if-none-match", etag)],
            &[],
        )
        .await
        .expect("fake answers")
}

#[tokio::test]
async fn a_get_sent_with_its_etag_answers_304_which_costs_no_budget_until_the_answer_changes() {
    let fake = start_fake().await;
    let path = format!("/repos/{REPO}/actions/runs?status=queued&per_page=100&page=1");
    let first = api(&fake, "GET", &path, None).await;
    let etag = first.header("etag").expect("an ETag").to_owned();
    let remaining = first
        .header("x-ratelimit-remaining")
        .expect("remaining")
        .to_owned();

    let same = get_if_none_match(&fake, &path, &etag).await;
    assert_eq!(same.status, 304);
    assert!(same.body.is_empty());
    assert_eq!(same.header("etag"), Some(etag.as_str()));
    assert_eq!(
        same.header("x-ratelimit-remaining"),
        Some(remaining.as_str()),
        "a 304 is not charged"
    );
    let strong = etag.trim_start_matches("W/");
    assert_eq!(
        get_if_none_match(&fake, &path, strong).await.status,
        304,
        "weak comparison"
    );

    fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", ["self-hosted"])]));
    let changed = get_if_none_match(&fake, &path, &etag).await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    let after: u32 = changed
        .header("x-ratelimit-remaining")
        .and_then(|r| r.parse().ok())
        .expect("remaining");
    assert_eq!(after + 1, remaining.parse::<u32>().expect("number"));

    let calls = fake.calls();
    let statuses: Vec<(u16, bool)> = calls.iter().map(|c| (c.status, c.counted)).collect();
    assert_eq!(statuses, [(200, true), (304, false), (304, false), (200, true)]);
    assert_eq!(fake.counted_calls().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_spent_budget_refuses_even_a_conditional_get() {
    let fake = start_fake().await;
    let path = format!("/repos/{REPO}/actions/runners");
    let etag = api(&fake, "GET", &path, None)
        .await
        .header("etag")
        .expect("an ETag")
        .to_owned();
    fake.spend_budget(10_000);
    assert_eq!(fake.budget_remaining(), 0);
    let refused = get_if_none_match(&fake, &path, &etag).await;
    assert_eq!(
        (refused.status, refused.header("x-ratelimit-remaining")),
        (403, Some("0"))
    );
    assert!(!fake.calls().last().expect("recorded").counted);
    fake.shutdown().await;
}
