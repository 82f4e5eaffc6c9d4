//! The scale-set client: config URLs, message parsing, and every call against the fake
//! Actions service.

use std::time::Duration;

use fakes::github::{FakeGitHub, FakeGitHubConfig, JobSpec, RunSpec};
use reqwest::Url;
use secrecy::SecretString;

use super::client::{desired_labels, jwt_exp, parse_message, session_from};
use super::*;
use crate::github::{Credentials, GitHub, GitHubConfig, RunnerHome, RunnerScope};
use crate::retry::Backoff;

fn url(text: &str) -> Url {
    Url::parse(text).expect("url")
}

#[test]
fn the_config_url_follows_the_scope_and_the_host_kind() {
    let org = RunnerHome::Org("acme".into());
    let repo = RunnerHome::Repo(crate::domain::RepoName::parse("acme/widgets").expect("repo"));
    let ent = RunnerHome::Enterprise("big".into());
    assert_eq!(
        config_url(&url("https://api.github.com"), &org),
        "https://github.com/acme"
    );
    assert_eq!(
        config_url(&url("https://api.github.com/"), &repo),
        "https://github.com/acme/widgets"
    );
    assert_eq!(
        config_url(&url("https://ghe.example.com/api/v3"), &ent),
        "https://ghe.example.com/enterprises/big"
    );
    assert_eq!(
        config_url(&url("https://api.octo.ghe.com"), &org),
        "https://octo.ghe.com/acme"
    );
    assert_eq!(
        config_url(&url("http://127.0.0.1:4100"), &org),
        "http://127.0.0.1:4100/acme"
    );
}

#[test]
fn a_message_body_may_start_with_a_bom_be_empty_or_be_of_an_unknown_type() {
    let body = "\u{feff}{\"messageId\":7,\"messageType\":\"RunnerScaleSetJobMessages\",\"body\":\"[{\\\"messageType\\\":\\\"JobAssigned\\\",\\\"jobId\\\":\\\"j1\\\"}]\",\"statistics\":{\"totalAssignedJobs\":2}}";
    let message = parse_message(body.as_bytes())
        .expect("parses")
        .expect("a message");
    assert_eq!(
        (
            message.id,
            message.jobs.len(),
            message.statistics.total_assigned_jobs
        ),
        (7, 1, 2)
    );
    assert_eq!(message.jobs[0].job_id, "j1");
    assert!(
        parse_message(b"").expect("empty").is_none(),
        "an empty 200 is no message"
    );
    let other = parse_message(br#"{"messageId":8,"messageType":"Other","body":"[1]"}"#).expect("parses");
    assert!(
        other.expect("a message").jobs.is_empty(),
        "an unknown type carries no jobs"
    );
    let empty_body = parse_message(br#"{"messageId":9,"messageType":"RunnerScaleSetJobMessages","body":""}"#);
    assert!(empty_body.expect("parses").expect("message").jobs.is_empty());
}

#[test]
fn a_degraded_session_answer_is_an_error_not_a_half_working_session() {
    let good =
        br#"{"sessionId":"s1","messageQueueUrl":"http://q/1","messageQueueAccessToken":"t","statistics":{}}"#;
    assert_eq!(session_from(good).expect("valid").id, "s1");
    let no_queue =
        br#"{"sessionId":"s1","messageQueueUrl":"","messageQueueAccessToken":"t","statistics":{}}"#;
    assert!(matches!(session_from(no_queue), Err(ScaleSetError::Decode(_))));
    let no_statistics = br#"{"sessionId":"s1","messageQueueUrl":"http://q/1","messageQueueAccessToken":"t"}"#;
    assert!(matches!(
        session_from(no_statistics),
        Err(ScaleSetError::Decode(_))
    ));
}

#[test]
fn the_scale_set_name_is_its_first_label_and_labels_are_not_repeated() {
    let labels = desired_labels("modal", &["GPU".into(), "modal".into(), "gpu".into()]);
    assert_eq!(labels, ["modal", "GPU"]);
    assert_eq!(jwt_exp("a.eyJleHAiOjEyMzR9.c"), Some(1234));
    assert_eq!(jwt_exp("not a jwt"), None);
}

async fn fake_and_client() -> (FakeGitHub, ScaleSetClient) {
    let config = FakeGitHubConfig::default();
    let fake = FakeGitHub::start(config.clone()).await.expect("fake");
    fake.add_repo("acme/widgets");
    fake.set_scale_set_poll_hold(Duration::from_millis(300));
    let github = GitHub::new(
        GitHubConfig {
            api_url: fake.api_url(),
            credentials: Credentials::Token(SecretString::from(config.token)),
            timeout: Duration::from_secs(5),
            retry: Backoff::new(2, Duration::from_millis(1), Duration::from_millis(1)),
            rate_reserve: None,
            scope: RunnerScope::Org,
        },
        None,
    )
    .expect("github");
    let client = ScaleSetClient::new(
        github,
        ScaleSetClientConfig {
            home: RunnerHome::Org("acme".into()),
            timeout: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(10),
            owner: "test".into(),
        },
    )
    .expect("client");
    (fake, client)
}

#[tokio::test]
async fn the_scale_set_is_created_once_and_updated_when_its_labels_or_group_change() {
    let (fake, client) = fake_and_client().await;
    let first = client
        .ensure_scale_set("modal", 1, &["linux".into()])
        .await
        .expect("created");
    let again = client
        .ensure_scale_set("modal", 1, &["linux".into()])
        .await
        .expect("found");
    assert_eq!(first.id, again.id);
    assert_eq!(fake.scale_sets().len(), 1);
    client
        .ensure_scale_set("modal", 1, &["gpu".into()])
        .await
        .expect("updated");
    assert_eq!(fake.scale_sets()[0].labels, ["modal", "gpu"]);
    let group = fake
        .add_runner_group(&fakes::github::Scope::Organization("acme".into()), "runners")
        .expect("group");
    let moved = client
        .ensure_scale_set("modal", group, &["gpu".into()])
        .await
        .expect("moved");
    assert_eq!(moved.id, first.id, "the same set, moved");
    assert_eq!(fake.scale_sets()[0].runner_group_id, group);
    fake.shutdown().await;
}

#[tokio::test]
async fn the_admin_token_is_renewed_only_when_less_than_a_minute_is_left() {
    let (fake, client) = fake_and_client().await;
    client.ensure_scale_set("modal", 1, &[]).await.expect("set");
    client.ensure_scale_set("modal", 1, &[]).await.expect("set");
    assert_eq!(fake.scale_set_admin_tokens_issued(), 1, "a fresh token is reused");
    fake.shutdown().await;
    let (fake, client) = fake_and_client().await;
    fake.set_scale_set_token_lifetimes(Duration::from_secs(30), Duration::from_secs(600));
    client.runner_by_name("x").await.expect("first token");
    client.runner_by_name("x").await.expect("renewed");
    assert_eq!(
        fake.scale_set_admin_tokens_issued(),
        2,
        "a token with <60 s left is renewed"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_held_session_is_a_conflict_a_forgotten_one_is_gone_and_a_deleted_one_frees_the_set() {
    let (fake, client) = fake_and_client().await;
    let set = client.ensure_scale_set("modal", 1, &[]).await.expect("set");
    fake.hold_scale_set_session("modal", Duration::from_secs(30));
    let conflict = client.create_session(set.id).await;
    assert!(
        matches!(conflict, Err(ScaleSetError::SessionConflict { .. })),
        "{conflict:?}"
    );
    fake.hold_scale_set_session("modal", Duration::ZERO);
    let session = client.create_session(set.id).await.expect("session");
    let refreshed = client.refresh_session(set.id, &session).await.expect("refreshed");
    fake.drop_scale_set_sessions();
    let polled = client.get_message(&refreshed, 0, 3).await;
    assert!(matches!(polled, Err(ScaleSetError::Unauthorized)), "{polled:?}");
    let gone = client.refresh_session(set.id, &refreshed).await;
    assert!(matches!(gone, Err(ScaleSetError::SessionGone)), "{gone:?}");
    let session = client.create_session(set.id).await.expect("new session");
    client.delete_session(set.id, &session).await.expect("deleted");
    assert_eq!(fake.scale_set_sessions(), 0);
    client
        .create_session(set.id)
        .await
        .expect("the set is free again");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_job_is_polled_acquired_acknowledged_and_given_a_runner() {
    let (fake, client) = fake_and_client().await;
    let set = client.ensure_scale_set("modal", 1, &[]).await.expect("set");
    let session = client.create_session(set.id).await.expect("session");
    assert!(
        client.get_message(&session, 0, 4).await.expect("poll").is_none(),
        "202 is no message"
    );
    fake.queue_run(RunSpec::new(
        "acme/widgets",
        vec![JobSpec::new("build", ["modal"])],
    ));
    let message = client
        .get_message(&session, 0, 4)
        .await
        .expect("poll")
        .expect("message");
    assert_eq!(message.jobs[0].message_type, "JobAvailable");
    let request = message.jobs[0].runner_request_id;
    let acquired = client
        .acquire_jobs(set.id, &session, &[request])
        .await
        .expect("acquire");
    assert_eq!(acquired, [request]);
    client.delete_message(&session, message.id).await.expect("ack");
    client
        .delete_message(&session, message.id)
        .await
        .expect("a second ack is harmless");
    let assigned = client
        .get_message(&session, message.id, 4)
        .await
        .expect("poll")
        .expect("message");
    assert_eq!(assigned.jobs[0].message_type, "JobAssigned");
    assert_eq!(
        fake.scale_set_polls().last().and_then(|p| p.max_capacity),
        Some(4)
    );
    let jit = client.generate_jit_config(set.id, "m-1").await.expect("jit");
    let clash = client.generate_jit_config(set.id, "m-1").await;
    assert!(matches!(clash, Err(ScaleSetError::AgentExists)), "{clash:?}");
    let found = client
        .runner_by_name("m-1")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.id, jit.runner_id);
    assert!(client.remove_runner(jit.runner_id).await.expect("removed"));
    assert!(!client.remove_runner(jit.runner_id).await.expect("already gone"));
    fake.shutdown().await;
}
