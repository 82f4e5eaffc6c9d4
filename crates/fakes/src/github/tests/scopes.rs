//! Runners at the organisation and the enterprise, runner groups, organisation and App
//! hooks, one App installation per account, and the GHES path prefix.

use std::time::SystemTime;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

fn org(login: &str) -> Scope {
    Scope::Organization(login.into())
}

/// A JWT of the tests' App (id 1).
fn app_jwt() -> String {
    let now = faults::epoch_secs(SystemTime::now());
    let claims = json!({ "iat": now - 60, "exp": now + 540, "iss": "1" });
    let key = EncodingKey::from_rsa_pem(TEST_APP_PRIVATE_KEY_PEM.as_bytes()).expect("key");
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).expect("signed")
}

/// A fake whose App is installed on `acme` (installation 11) and `beta` (12), with
/// repositories acme/one, acme/two and beta/x.
async fn start_with_app() -> FakeGitHub {
    let app = FakeApp {
        installation_id: None,
        owner_installations: vec![("acme".into(), 11), ("beta".into(), 12)],
        ..FakeApp::single(1, 0, Duration::from_secs(3600))
    };
    let fake = FakeGitHub::start(FakeGitHubConfig {
        app: Some(app),
        ..FakeGitHubConfig::default()
    })
    .await
    .expect("fake starts");
    for repo in ["acme/one", "acme/two", "beta/x"] {
        fake.add_repo(repo);
    }
    fake
}

async fn token_of(fake: &FakeGitHub, installation: u64) -> String {
    let path = format!("/app/installations/{installation}/access_tokens");
    let answer = api_with_token(fake, &app_jwt(), "POST", &path, None).await;
    assert_eq!(answer.status, 201);
    answer.json().expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

fn registration(name: &str, group: u64) -> Value {
    json!({ "name": name, "runner_group_id": group, "labels": ["self-hosted", "modal"] })
}

#[tokio::test]
async fn organisation_runners_join_a_named_group_and_take_the_jobs_of_every_repository_of_the_org() {
    let fake = start_fake().await;
    for repo in ["acme/one", "acme/two", "beta/x"] {
        fake.add_repo(repo);
    }
    let group = fake
        .add_runner_group(&org("acme"), "modal-runners")
        .expect("org exists");
    let first = api(&fake, "GET", "/orgs/acme/actions/runner-groups?per_page=1", None).await;
    assert!(first.header("link").is_some_and(|l| l.contains("rel=\"next\"")));
    let second = api(
        &fake,
        "GET",
        "/orgs/acme/actions/runner-groups?per_page=1&page=2",
        None,
    )
    .await
    .json()
    .expect("json");
    assert_eq!(second["total_count"], 2);
    assert_eq!(second["runner_groups"][0]["name"], "modal-runners");
    assert_eq!(second["runner_groups"][0]["id"], group);

    let path = "/orgs/acme/actions/runners/generate-jitconfig";
    let unknown = api(&fake, "POST", path, Some(registration("r", 999))).await;
    assert_eq!(unknown.status, 404);
    let made = api(&fake, "POST", path, Some(registration("r", group))).await;
    assert_eq!(made.status, 201);
    let body = made.json().expect("json");
    assert_eq!(body["runner"]["runner_group_id"], group);
    let listed = api(&fake, "GET", "/orgs/acme/actions/runners", None)
        .await
        .json()
        .expect("json");
    assert_eq!(listed["total_count"], 1);
    let at_repo = api(&fake, "GET", "/repos/acme/one/actions/runners", None)
        .await
        .json()
        .expect("json");
    assert_eq!(at_repo["total_count"], 0, "an org runner is not a repository's");
    let view = &fake.runners()[0];
    assert_eq!((view.scope.clone(), view.group_id), (org("acme"), group));

    // Another owner's job is older, but the org runner takes only acme's.
    let other = fake.queue_run(RunSpec::new("beta/x", vec![JobSpec::new("b", ["self-hosted"])]));
    let mine = fake.queue_run(RunSpec::new("acme/two", vec![JobSpec::new("a", ["self-hosted"])]));
    let config = body["encoded_jit_config"].as_str().expect("config").to_owned();
    let outcome = tokio::time::timeout(WAIT, spawn_runner(config))
        .await
        .expect("runner ends");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    let job = fake.job(mine.job_ids[0]).expect("job");
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.runner_group_name.as_deref(), Some("modal-runners"));
    assert_eq!(fake.job(other.job_ids[0]).expect("job").status, JobStatus::Queued);
    fake.shutdown().await;
}

#[tokio::test]
async fn enterprise_runners_serve_the_enterprises_organisations_and_are_deleted_there_only() {
    let fake = start_fake().await;
    fake.add_repo("acme/one");
    fake.add_repo("beta/x");
    fake.add_enterprise("big", &["acme"]);
    let ent = Scope::Enterprise("big".into());
    let group = fake
        .add_runner_group(&ent, "ent-group")
        .expect("enterprise exists");
    assert_eq!(
        fake.add_runner_group(&Scope::Enterprise("nope".into()), "x"),
        None
    );
    let groups = api(&fake, "GET", "/enterprises/big/actions/runner-groups", None)
        .await
        .json()
        .expect("json");
    assert_eq!(groups["runner_groups"][1]["name"], "ent-group");
    let path = "/enterprises/big/actions/runners/generate-jitconfig";
    let made = api(&fake, "POST", path, Some(registration("e1", group))).await;
    assert_eq!(made.status, 201);
    let id = made.json().expect("json")["runner"]["id"].as_u64().expect("id");
    let wrong_place = api(&fake, "DELETE", &format!("/orgs/acme/actions/runners/{id}"), None).await;
    assert_eq!(wrong_place.status, 404);
    let deleted = api(
        &fake,
        "DELETE",
        &format!("/enterprises/big/actions/runners/{id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    assert!(fake.runners().is_empty());
    let again = api(&fake, "POST", path, Some(registration("e2", group))).await;
    let config = again.json().expect("json")["encoded_jit_config"]
        .as_str()
        .expect("config")
        .to_owned();
    let outside = fake.queue_run(RunSpec::new("beta/x", vec![JobSpec::new("b", ["self-hosted"])]));
    let inside = fake.queue_run(RunSpec::new("acme/one", vec![JobSpec::new("a", ["self-hosted"])]));
    let outcome = tokio::time::timeout(WAIT, spawn_runner(config))
        .await
        .expect("runner ends");
    assert!(matches!(outcome, Ok(Ok(()))), "{outcome:?}");
    assert_eq!(
        fake.job(inside.job_ids[0]).expect("job").status,
        JobStatus::Completed
    );
    assert_eq!(
        fake.job(outside.job_ids[0]).expect("job").status,
        JobStatus::Queued
    );
    let scopes: Vec<Option<Scope>> = fake.calls().into_iter().map(|c| c.scope).collect();
    assert!(scopes.contains(&Some(ent)));
    fake.shutdown().await;
}

#[tokio::test]
async fn each_installation_token_reaches_only_the_account_it_is_installed_on() {
    let fake = start_with_app().await;
    fake.add_user_repo("carol/tools");
    let jwt = app_jwt();
    let found = |path: &'static str| {
        let jwt = jwt.clone();
        let fake = &fake;
        async move { api_with_token(fake, &jwt, "GET", path, None).await }
    };
    assert_eq!(
        found("/orgs/acme/installation").await.json().expect("json")["id"],
        11
    );
    assert_eq!(
        found("/repos/beta/x/installation").await.json().expect("json")["id"],
        12
    );
    assert_eq!(
        found("/users/carol/installation").await.status,
        404,
        "not installed there"
    );
    assert_eq!(found("/orgs/nope/installation").await.status, 404);
    assert_eq!(
        api(&fake, "GET", "/orgs/acme/installation", None).await.status,
        401,
        "installations are found with the App's JWT"
    );

    let acme = token_of(&fake, 11).await;
    let own = api_with_token(&fake, &acme, "GET", "/orgs/acme/actions/runners", None).await;
    assert_eq!(own.status, 200);
    let call = fake.calls().pop().expect("recorded");
    assert_eq!((call.installation, call.scope), (Some(11), Some(org("acme"))));
    let theirs = api_with_token(&fake, &acme, "GET", "/orgs/beta/actions/runners", None).await;
    assert_eq!(theirs.status, 403);
    let their_repo = api_with_token(&fake, &acme, "GET", "/repos/beta/x/actions/runs", None).await;
    assert_eq!(their_repo.status, 404);
    fake.add_enterprise("big", &["acme"]);
    let enterprise = api_with_token(&fake, &acme, "GET", "/enterprises/big/actions/runners", None).await;
    assert_eq!(
        enterprise.status, 403,
        "GitHub Apps cannot manage enterprise runners"
    );
    assert_eq!(fake.installation_tokens_issued_for(11), 1);
    assert_eq!(fake.installation_tokens_issued_for(12), 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn an_org_hook_gets_its_orgs_events_and_the_app_hook_carries_each_owners_installation() {
    let fake = start_with_app().await;
    let org_receiver = Receiver::start().await;
    let app_receiver = Receiver::start().await;
    fake.set_webhook(WebhookTarget::json(&org_receiver.url, SECRET).organization("acme"));
    let app_hook = fake.add_webhook(WebhookTarget::json(&app_receiver.url, SECRET).app());
    assert_eq!(app_hook, 2);
    for repo in ["acme/one", "acme/two", "beta/x"] {
        fake.queue_run(RunSpec::new(repo, vec![JobSpec::new("build", ["self-hosted"])]));
    }
    assert!(fake.wait_until(WAIT, |f| f.deliveries().len() == 5).await);
    let to_org = org_receiver.seen();
    let repos: Vec<&str> = to_org
        .iter()
        .filter_map(|r| r.body["repository"]["full_name"].as_str())
        .collect();
    assert_eq!(repos.len(), 2);
    assert!(repos.contains(&"acme/one") && repos.contains(&"acme/two"));
    assert!(
        to_org
            .iter()
            .all(|r| r.target_type == "organization" && r.signature_ok)
    );
    assert!(to_org.iter().all(|r| r.body["organization"]["login"] == "acme"));
    let to_app = app_receiver.seen();
    assert_eq!(to_app.len(), 3);
    for r in &to_app {
        let expected = if r.body["repository"]["owner"]["login"] == "beta" {
            12
        } else {
            11
        };
        assert_eq!(r.body["installation"]["id"], expected);
        assert_eq!(r.target_type, "integration");
    }
    let shared_guid = to_org[0].guid.clone();
    assert!(
        to_app.iter().any(|r| r.guid == shared_guid),
        "one event, one GUID"
    );

    let listed = api(
        &fake,
        "GET",
        &format!("/orgs/acme/hooks/{HOOK_ID}/deliveries"),
        None,
    )
    .await
    .json()
    .expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let elsewhere = api(
        &fake,
        "GET",
        &format!("/orgs/beta/hooks/{HOOK_ID}/deliveries"),
        None,
    )
    .await;
    assert_eq!(elsewhere.status, 404, "the hook is acme's");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_ghes_fake_serves_its_api_under_api_v3_only() {
    let fake = FakeGitHub::start(FakeGitHubConfig {
        api_prefix: "/api/v3".into(),
        ..FakeGitHubConfig::default()
    })
    .await
    .expect("fake starts");
    fake.add_repo(REPO);
    assert!(fake.api_url().ends_with("/api/v3"));
    assert_eq!(
        api(&fake, "GET", &format!("/repos/{REPO}/actions/runners"), None)
            .await
            .status,
        200
    );
    let root = format!("http://{}/repos/{REPO}/actions/runners", fake.local_addr());
    let client = HttpClient::one_shot(Duration::from_secs(5));
    let auth = format!("Bearer {}", FakeGitHubConfig::default().token);
    let outside = client
        .send("GET", &root, &[("authorization", &auth)], &[])
        .await
        .expect("answers");
    assert_eq!(outside.status, 404);
    let config = jit_config(&fake, "ghes-runner", &["self-hosted"]).await;
    let (decoded, _) = JitConfig::decode(&config).expect("decodes");
    assert!(!decoded.settings.server_url.contains("/api/v3"));
    fake.shutdown().await;
}
