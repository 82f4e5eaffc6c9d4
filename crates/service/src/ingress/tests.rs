//! The webhook's answers to every kind of delivery, good and bad, through the real router.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::signature::sign;
use super::*;
use crate::domain::{JobId, JobStatus, RepoAllowList};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::wake::Wake;

pub(super) const SECRET: &str = "It's a Secret to Everybody";

pub(super) async fn ingress(allow: &str) -> Ingress {
    Ingress {
        secret: Arc::new(SecretString::from(SECRET)),
        label: Arc::from("modal"),
        allow: Arc::new(RepoAllowList::parse(allow).expect("allowlist")),
        store: Store::open("sqlite::memory:").await.expect("store"),
        wake: Arc::new(Wake::default()),
        metrics: Arc::new(Metrics::new()),
        max_body_bytes: 64 * 1024,
        ready: Arc::new(AtomicBool::new(true)),
    }
}

fn job_payload(action: &str, labels: &[&str], repo: &str) -> Value {
    json!({
        "action": action,
        "workflow_job": {
            "id": 12_877_621_891_u64, "run_id": 4_747_967_848_u64, "run_attempt": 1,
            "name": "build", "status": action, "labels": labels, "runner_name": null
        },
        "repository": {"full_name": repo},
        "sender": {"login": "octocat"}
    })
}

struct Delivery {
    event: Option<&'static str>,
    guid: Option<String>,
    content_type: &'static str,
    body: Vec<u8>,
    signature: Option<String>,
}

impl Delivery {
    fn json(event: &'static str, body: &Value) -> Delivery {
        let body = body.to_string().into_bytes();
        Delivery {
            event: Some(event),
            guid: Some(uuid::Uuid::new_v4().to_string()),
            content_type: "application/json",
            signature: Some(sign(SECRET.as_bytes(), &body)),
            body,
        }
    }

    fn form(event: &'static str, body: &Value) -> Delivery {
        let encoded: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &body.to_string())
            .finish();
        let body = encoded.into_bytes();
        Delivery {
            content_type: "application/x-www-form-urlencoded",
            signature: Some(sign(SECRET.as_bytes(), &body)),
            body,
            ..Delivery::json(event, &json!({}))
        }
    }

    async fn send(self, ingress: &Ingress, path: &str) -> (StatusCode, Value) {
        let mut req = Request::post(path).header("content-type", self.content_type);
        if let Some(e) = self.event {
            req = req.header("X-GitHub-Event", e);
        }
        if let Some(g) = self.guid {
            req = req.header("X-GitHub-Delivery", g);
        }
        if let Some(s) = self.signature {
            req = req.header("X-Hub-Signature-256", s);
        }
        let resp = router(ingress.clone())
            .oneshot(req.body(Body::from(self.body)).expect("request"))
            .await
            .expect("answer");
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_signed_queued_job_is_recorded_before_the_202() {
    let ing = ingress("").await;
    let (status, body) = Delivery::json(
        "workflow_job",
        &job_payload("queued", &["self-hosted", "Modal"], "octo/repo"),
    )
    .send(&ing, "/webhook")
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["status"], "accepted");
    let job = ing
        .store
        .job(JobId(12_877_621_891))
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(job.status, JobStatus::Queued);
}

#[tokio::test]
async fn a_delivery_the_store_cannot_write_is_not_accepted() {
    // Arrange: every write of a job fails, as on a full disk.
    let ing = ingress("").await;
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .execute(ing.store.pool())
    .await
    .expect("trigger");

    // Act
    let (status, body) = Delivery::json(
        "workflow_job",
        &job_payload("queued", &["self-hosted", "modal"], "octo/repo"),
    )
    .send(&ing, "/webhook")
    .await;

    // Assert: GitHub sees a failed delivery (and can redeliver it), never a 202.
    assert_eq!(
        (status, body),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal error"})
        )
    );
    assert!(
        ing.store
            .job(JobId(12_877_621_891))
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn the_root_path_and_form_bodies_are_accepted_like_the_original() {
    let ing = ingress("").await;
    let (status, _) = Delivery::form("workflow_job", &job_payload("queued", &["modal"], "octo/repo"))
        .send(&ing, "/")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        ing.store
            .job(JobId(12_877_621_891))
            .await
            .expect("read")
            .is_some()
    );
}

#[tokio::test]
async fn a_repeated_delivery_guid_is_a_duplicate() {
    let ing = ingress("").await;
    let d = Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"));
    let again = Delivery {
        guid: d.guid.clone(),
        ..Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"))
    };
    assert_eq!(d.send(&ing, "/webhook").await.0, StatusCode::ACCEPTED);
    let (status, body) = again.send(&ing, "/webhook").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "duplicate"})));
}

#[tokio::test]
async fn pings_other_events_unlabelled_jobs_and_unknown_actions_are_ignored() {
    let ing = ingress("").await;
    let cases = [
        Delivery::json(
            "ping",
            &json!({"zen": "Keep it logically awesome.", "hook_id": 1}),
        ),
        Delivery::json("push", &json!({"ref": "refs/heads/main"})),
        Delivery::json(
            "workflow_job",
            &job_payload("queued", &["ubuntu-latest"], "octo/repo"),
        ),
        Delivery::json("workflow_job", &job_payload("requested", &["modal"], "octo/repo")),
    ];
    for d in cases {
        let (status, body) = d.send(&ing, "/webhook").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ignored", "{body}");
        assert!(body["reason"].is_string());
    }
    assert!(
        ing.store
            .job(JobId(12_877_621_891))
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
async fn a_repository_outside_the_allowlist_is_forbidden() {
    let ing = ingress("octo/allowed").await;
    let (status, body) = Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/other"))
        .send(&ing, "/webhook")
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"error": "repository not allowed"}))
    );
    // ...but a job the service would ignore anyway is just ignored.
    let (status, _) = Delivery::json(
        "workflow_job",
        &job_payload("queued", &["ubuntu-latest"], "octo/other"),
    )
    .send(&ing, "/webhook")
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = Delivery::json("workflow_job", &job_payload("queued", &["modal"], "Octo/Allowed"))
        .send(&ing, "/webhook")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn every_bad_delivery_gets_its_status_and_an_opaque_body() {
    let ing = ingress("").await;
    let good = || Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"));
    let big = vec![b'x'; 64 * 1024 + 1];
    let cases: Vec<(Delivery, StatusCode, &str)> = vec![
        (
            Delivery {
                signature: None,
                ..good()
            },
            StatusCode::UNAUTHORIZED,
            "invalid signature",
        ),
        (
            Delivery {
                signature: Some(format!("sha256={}", "0".repeat(64))),
                ..good()
            },
            StatusCode::UNAUTHORIZED,
            "invalid signature",
        ),
        (
            Delivery {
                signature: Some("sha1=abc".into()),
                ..good()
            },
            StatusCode::UNAUTHORIZED,
            "invalid signature",
        ),
        (
            Delivery {
                event: None,
                ..good()
            },
            StatusCode::BAD_REQUEST,
            "missing header",
        ),
        (
            Delivery { guid: None, ..good() },
            StatusCode::BAD_REQUEST,
            "missing header",
        ),
        (
            Delivery {
                content_type: "text/plain",
                ..good()
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type",
        ),
        (
            Delivery {
                signature: Some(sign(SECRET.as_bytes(), &big)),
                body: big,
                ..good()
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large",
        ),
        (
            Delivery {
                signature: Some(sign(SECRET.as_bytes(), b"{not json")),
                body: b"{not json".to_vec(),
                ..good()
            },
            StatusCode::BAD_REQUEST,
            "malformed payload",
        ),
        (
            Delivery::json(
                "workflow_job",
                &json!({"action": "queued", "workflow_job": {"id": 1}}),
            ),
            StatusCode::BAD_REQUEST,
            "malformed payload",
        ),
        (
            {
                let body = b"nopayload=1".to_vec();
                Delivery {
                    content_type: "application/x-www-form-urlencoded",
                    signature: Some(sign(SECRET.as_bytes(), &body)),
                    body,
                    ..good()
                }
            },
            StatusCode::BAD_REQUEST,
            "malformed payload",
        ),
    ];
    for (i, (d, status, error)) in cases.into_iter().enumerate() {
        let (got, body) = d.send(&ing, "/webhook").await;
        assert_eq!(got, status, "case {i}");
        assert_eq!(body, json!({"error": error}), "case {i}");
    }
    assert!(
        ing.store
            .job(JobId(12_877_621_891))
            .await
            .expect("read")
            .is_none(),
        "nothing bad was recorded"
    );
}

#[tokio::test]
async fn probes_answer_and_readiness_waits_for_the_backend() {
    let ing = ingress("").await;
    let get = |path: &'static str, ing: Ingress| async move {
        router(ing)
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("answer")
            .status()
    };
    assert_eq!(get("/healthz", ing.clone()).await, StatusCode::OK);
    assert_eq!(get("/readyz", ing.clone()).await, StatusCode::OK);
    assert_eq!(get("/metrics", ing.clone()).await, StatusCode::OK);
    ing.ready.store(false, std::sync::atomic::Ordering::Release);
    assert_eq!(get("/readyz", ing).await, StatusCode::SERVICE_UNAVAILABLE);
}
