//! The fake Actions service's scale sets over real HTTP: the auth chain, CRUD, sessions,
//! the message queue's redelivery and acquire semantics, and a fake runner taking a job.

use std::time::Duration;

use base64::Engine as _;

use super::*;

const ORG: &str = "acme";

/// A scale-set client driving the fake by hand.
struct Admin {
    fake_token: String,
    service: String,
    admin: String,
}

fn parse(response: &HttpResponse) -> Value {
    let text = String::from_utf8_lossy(&response.body);
    serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap_or(Value::Null)
}

async fn call(
    method: &str,
    url: &str,
    bearer: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> HttpResponse {
    let auth = format!("Bearer {bearer}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let bytes = body
        .map(|b| serde_json::to_vec(&b).expect("json"))
        .unwrap_or_default();
    HttpClient::new(Duration::from_secs(30))
        .send(method, url, &headers, &bytes)
        .await
        .expect("fake answers")
}

impl Admin {
    /// Runs the auth chain (registration token, then `runner-registration`) for `config_url`.
    async fn connect(fake: &FakeGitHub, scope_path: &str, config_url: &str) -> Result<Self, u16> {
        let token = FakeGitHubConfig::default().token;
        let answer = api(
            fake,
            "POST",
            &format!("{scope_path}/actions/runners/registration-token"),
            None,
        )
        .await;
        assert_eq!(answer.status, 201);
        let registration = answer.json().expect("json")["token"]
            .as_str()
            .expect("token")
            .to_owned();
        let auth = format!("RemoteAuth {registration}");
        let body =
            serde_json::to_vec(&json!({ "url": config_url, "runner_event": "register" })).expect("json");
        let answer = HttpClient::new(WAIT)
            .send(
                "POST",
                &format!("{}/actions/runner-registration", fake.api_url()),
                &[("authorization", &auth), ("content-type", "application/json")],
                &body,
            )
            .await
            .expect("answer");
        if answer.status != 200 {
            return Err(answer.status);
        }
        let body = parse(&answer);
        Ok(Self {
            fake_token: token,
            service: body["url"].as_str().expect("url").to_owned(),
            admin: body["token"].as_str().expect("token").to_owned(),
        })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=6.0-preview", self.service);
        call(method, &url, &self.admin, body, &[]).await
    }

    async fn create_set(&self, name: &str, labels: &[&str]) -> u64 {
        let labels: Vec<Value> = labels
            .iter()
            .map(|l| json!({ "name": l, "type": "System" }))
            .collect();
        let body = json!({ "name": name, "runnerGroupId": 1, "labels": labels,
            "RunnerSetting": { "disableUpdate": true }, "createdOn": "0001-01-01T00:00:00Z" });
        let answer = self
            .call("POST", "_apis/runtime/runnerscalesets", Some(body))
            .await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        parse(&answer)["id"].as_u64().expect("id")
    }

    async fn session(&self, set: u64) -> (u16, Value) {
        let path = format!("_apis/runtime/runnerscalesets/{set}/sessions");
        let answer = self
            .call("POST", &path, Some(json!({ "ownerName": "test" })))
            .await;
        (answer.status, parse(&answer))
    }
}

/// Polls the session's queue after `last`; the status and the message.
async fn poll(session: &Value, last: u64, capacity: &str) -> (u16, Value) {
    let mut url = session["messageQueueUrl"].as_str().expect("queue url").to_owned();
    if last > 0 {
        url = format!("{url}?lastMessageId={last}");
    }
    let token = session["messageQueueAccessToken"].as_str().expect("token");
    let answer = call("GET", &url, token, None, &[("X-ScaleSetMaxCapacity", capacity)]).await;
    (answer.status, parse(&answer))
}

async fn ack(session: &Value, id: u64) -> u16 {
    let url = format!("{}/{id}", session["messageQueueUrl"].as_str().expect("url"));
    let token = session["messageQueueAccessToken"].as_str().expect("token");
    call("DELETE", &url, token, None, &[]).await.status
}

fn jobs_of(message: &Value) -> Vec<Value> {
    serde_json::from_str(message["body"].as_str().unwrap_or("[]")).unwrap_or_default()
}

fn kinds(message: &Value) -> Vec<String> {
    jobs_of(message)
        .iter()
        .map(|j| j["messageType"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn org_fake() -> (FakeGitHub, Admin) {
    let fake = start_fake().await;
    fake.set_scale_set_poll_hold(Duration::from_millis(300));
    let admin = Admin::connect(&fake, "/orgs/acme", &format!("https://github.com/{ORG}"))
        .await
        .expect("auth chain");
    (fake, admin)
}

#[tokio::test]
async fn the_auth_chain_hands_out_an_admin_jwt_whose_exp_is_honoured() {
    let fake = start_fake().await;
    fake.set_scale_set_token_lifetimes(Duration::from_secs(1), Duration::from_secs(60));
    let wrong = Admin::connect(&fake, "/orgs/acme", "https://github.com/acme/widgets").await;
    assert_eq!(wrong.err(), Some(400), "the URL must name the token's scope");
    let admin = Admin::connect(&fake, "/orgs/acme", "https://github.com/acme")
        .await
        .expect("chain");
    assert_eq!(admin.service, fake.scale_set_service_url());
    let payload = admin.admin.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64"),
    )
    .expect("claims");
    let exp = claims["exp"].as_u64().expect("exp");
    let now = super::super::faults::epoch_secs(std::time::SystemTime::now());
    assert!(
        exp > now.saturating_sub(1) && exp <= now + 2,
        "exp {exp} now {now}"
    );
    let fresh = admin
        .call(
            "GET",
            "_apis/runtime/runnerscalesets?runnerGroupId=1&name=modal",
            None,
        )
        .await;
    assert_eq!(fresh.status, 200);
    assert_eq!(parse(&fresh)["count"], 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = admin
        .call(
            "GET",
            "_apis/runtime/runnerscalesets?runnerGroupId=1&name=modal",
            None,
        )
        .await;
    assert_eq!(stale.status, 401, "an expired admin token is refused");
    assert!(!admin.fake_token.is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn scale_sets_are_found_by_name_created_once_and_updated() {
    let (fake, admin) = org_fake().await;
    let id = admin.create_set("modal", &["gpu"]).await;
    let again = admin
        .call(
            "POST",
            "_apis/runtime/runnerscalesets",
            Some(json!({ "name": "modal", "runnerGroupId": 1 })),
        )
        .await;
    assert_eq!(again.status, 409, "names are unique per runner group");
    let found = parse(
        &admin
            .call(
                "GET",
                "_apis/runtime/runnerscalesets?runnerGroupId=1&name=modal",
                None,
            )
            .await,
    );
    assert_eq!(
        (found["count"].as_u64(), found["value"][0]["id"].as_u64()),
        (Some(1), Some(id))
    );
    let labels: Vec<&str> = found["value"][0]["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    assert_eq!(labels, ["modal", "gpu"], "the name is the first label");
    let patch = json!({ "labels": [{ "name": "big", "type": "System" }] });
    let updated = admin
        .call(
            "PATCH",
            &format!("_apis/runtime/runnerscalesets/{id}"),
            Some(patch),
        )
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(fake.scale_sets()[0].labels, ["modal", "big"]);
    let missing = admin.call("GET", "_apis/runtime/runnerscalesets/999", None).await;
    assert_eq!(missing.status, 404);
    let no_version = call(
        "GET",
        &format!("{}_apis/runtime/runnerscalesets/{id}", admin.service),
        &admin.admin,
        None,
        &[],
    )
    .await;
    assert_eq!(no_version.status, 400, "api-version is required");
    fake.shutdown().await;
}

#[tokio::test]
async fn one_session_per_scale_set_and_a_stale_one_blocks_until_it_lapses() {
    let (fake, admin) = org_fake().await;
    let id = admin.create_set("modal", &[]).await;
    fake.hold_scale_set_session("modal", Duration::from_millis(600));
    assert_eq!(admin.session(id).await.0, 409, "a stale session holds the set");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, session) = admin.session(id).await;
    assert_eq!(status, 200);
    assert!(
        session["statistics"].is_object() && !session["messageQueueUrl"].as_str().unwrap_or("").is_empty()
    );
    assert_eq!(admin.session(id).await.0, 409, "one active session per set");
    let sid = session["sessionId"].as_str().expect("sid");
    let refreshed = admin
        .call(
            "PATCH",
            &format!("_apis/runtime/runnerscalesets/{id}/sessions/{sid}"),
            None,
        )
        .await;
    assert_eq!(refreshed.status, 200);
    assert_ne!(
        parse(&refreshed)["messageQueueAccessToken"],
        session["messageQueueAccessToken"]
    );
    let path = format!("_apis/runtime/runnerscalesets/{id}/sessions/{sid}");
    assert_eq!(admin.call("DELETE", &path, None).await.status, 204);
    assert_eq!(
        admin.call("DELETE", &path, None).await.status,
        400,
        "a stale id is refused"
    );
    let (_, second) = admin.session(id).await;
    fake.drop_scale_set_sessions();
    assert_eq!(
        poll(&second, 0, "5").await.0,
        401,
        "a forgotten session's token is refused"
    );
    let sid = second["sessionId"].as_str().expect("sid");
    let gone = admin
        .call(
            "PATCH",
            &format!("_apis/runtime/runnerscalesets/{id}/sessions/{sid}"),
            None,
        )
        .await;
    assert_eq!(gone.status, 404, "refreshing a forgotten session answers 404");
    fake.shutdown().await;
}

#[tokio::test]
async fn an_expired_queue_token_is_refused_and_an_empty_queue_answers_202() {
    let (fake, admin) = org_fake().await;
    fake.set_scale_set_token_lifetimes(Duration::from_secs(60), Duration::from_secs(1));
    let id = admin.create_set("modal", &[]).await;
    let (_, session) = admin.session(id).await;
    assert_eq!(poll(&session, 0, "3").await.0, 202);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(poll(&session, 0, "3").await.0, 401);
    assert_eq!(fake.scale_set_polls()[0].max_capacity, Some(3));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_job_is_offered_acquired_run_by_a_scale_set_runner_and_every_message_redelivered_until_deleted() {
    let (fake, admin) = org_fake().await;
    let id = admin.create_set("modal", &[]).await;
    let (_, session) = admin.session(id).await;
    let run = fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("build", ["modal"]).duration(Duration::from_millis(100))],
    ));
    let (status, first) = poll(&session, 0, "4").await;
    assert_eq!((status, kinds(&first)), (200, vec!["JobAvailable".to_owned()]));
    let job = &jobs_of(&first)[0];
    assert_eq!(job["jobId"], scale_set_job_id(run.job_ids[0]));
    assert_eq!(job["repositoryName"], "widgets");
    let (_, again) = poll(&session, 0, "4").await;
    assert_eq!(
        again["messageId"], first["messageId"],
        "an undeleted message is redelivered"
    );
    let request = job["runnerRequestId"].as_u64().expect("request id");
    let token = session["messageQueueAccessToken"].as_str().expect("token");
    let acquire_url = format!(
        "{}_apis/runtime/runnerscalesets/{id}/acquirejobs?api-version=6.0-preview",
        admin.service
    );
    let acquired = parse(&call("POST", &acquire_url, token, Some(json!([request, 1])), &[]).await);
    assert_eq!(
        acquired["value"],
        json!([request]),
        "only the offered job is acquired"
    );
    let first_id = first["messageId"].as_u64().expect("id");
    assert_eq!(ack(&session, first_id).await, 204);
    let (_, assigned) = poll(&session, first_id, "4").await;
    assert_eq!(kinds(&assigned), ["JobAssigned"]);
    assert_eq!(assigned["statistics"]["totalAssignedJobs"], 1);
    let mut last = assigned["messageId"].as_u64().expect("id");
    assert_eq!(ack(&session, last).await, 204);
    let jit = admin
        .call(
            "POST",
            &format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig"),
            Some(json!({ "name": "m-1", "workFolder": "" })),
        )
        .await;
    assert_eq!(jit.status, 200);
    let encoded = parse(&jit)["encodedJITConfig"]
        .as_str()
        .expect("config")
        .to_owned();
    JitConfig::decode(&encoded).expect("the real JIT format");
    let runner = spawn_runner(encoded);
    let mut seen = Vec::new();
    while !seen.contains(&"JobCompleted".to_owned()) {
        let (status, message) = poll(&session, last, "4").await;
        if status == 200 {
            seen.extend(kinds(&message));
            last = message["messageId"].as_u64().expect("id");
            assert_eq!(ack(&session, last).await, 204);
        }
    }
    assert_eq!(seen, ["JobStarted", "JobCompleted"]);
    assert!(matches!(tokio::time::timeout(WAIT, runner).await, Ok(Ok(Ok(())))));
    assert_eq!(
        fake.job(run.job_ids[0]).map(|j| j.status),
        Some(JobStatus::Completed)
    );
    fake.scale_set_messages_accounted()
        .expect("every message deleted once");
    assert_eq!(ack(&session, first_id).await, 404, "a deleted message is gone");
    assert!(
        fake.scale_set_messages_accounted().is_err(),
        "a second delete is reported"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_job_acquired_by_one_scale_set_is_not_given_to_another() {
    let (fake, admin) = org_fake().await;
    let a = admin.create_set("one", &["shared"]).await;
    let b = admin.create_set("two", &["shared"]).await;
    let (_, sa) = admin.session(a).await;
    let (_, sb) = admin.session(b).await;
    fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", ["shared"])]));
    let (_, ma) = poll(&sa, 0, "1").await;
    let (_, mb) = poll(&sb, 0, "1").await;
    let request = jobs_of(&ma)[0]["runnerRequestId"].clone();
    assert_eq!(
        jobs_of(&mb)[0]["runnerRequestId"],
        request,
        "both sets are offered the job"
    );
    let url = |set: u64| {
        format!(
            "{}_apis/runtime/runnerscalesets/{set}/acquirejobs?api-version=6.0-preview",
            admin.service
        )
    };
    let token = |s: &Value| s["messageQueueAccessToken"].as_str().expect("token").to_owned();
    let got_a = parse(&call("POST", &url(a), &token(&sa), Some(json!([request])), &[]).await);
    let got_b = parse(&call("POST", &url(b), &token(&sb), Some(json!([request])), &[]).await);
    assert_eq!(
        (got_a["count"].as_u64(), got_b["count"].as_u64()),
        (Some(1), Some(0))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn an_idle_runner_is_removed_and_a_missing_one_answers_not_found() {
    let (fake, admin) = org_fake().await;
    let id = admin.create_set("modal", &[]).await;
    let path = format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig");
    let jit = parse(&admin.call("POST", &path, Some(json!({ "name": "m-1" }))).await);
    let runner_id = jit["runner"]["id"].as_u64().expect("id");
    let clash = admin.call("POST", &path, Some(json!({ "name": "m-1" }))).await;
    assert_eq!(clash.status, 409, "a name registers once");
    let found = parse(
        &admin
            .call("GET", "_apis/distributedtask/pools/0/agents?agentName=m-1", None)
            .await,
    );
    assert_eq!(found["value"][0]["runnerScaleSetId"], id);
    let agent = format!("_apis/distributedtask/pools/0/agents/{runner_id}");
    assert_eq!(admin.call("DELETE", &agent, None).await.status, 204);
    assert_eq!(admin.call("DELETE", &agent, None).await.status, 404);
    assert!(fake.runners().is_empty());
    fake.shutdown().await;
}
