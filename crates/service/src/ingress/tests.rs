//! The webhook's answers to every kind of delivery, good and bad, through the real router.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

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
        allow_public: false,
        retention: RETENTION,
        warnings: Arc::new(WarnThrottle::default()),
    }
}

/// The store's default retention (`STORE_RETENTION_DAYS=7`).
const RETENTION: Duration = Duration::from_secs(7 * 86_400);

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
    .execute(ing.store.writer())
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

/// RFC 3339 for `at`, as GitHub writes its timestamps.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A queued job's payload whose timestamps are `age` old, with the repository fields given.
fn dated_payload(age: Duration, repository: Value) -> Value {
    let at = rfc3339(SystemTime::now() - age);
    let mut v = job_payload("completed", &["modal"], "octo/repo");
    v["workflow_job"]["created_at"] = json!(at);
    v["workflow_job"]["started_at"] = json!(at);
    v["workflow_job"]["completed_at"] = json!(at);
    v["repository"] = repository;
    v
}

async fn stored(ing: &Ingress) -> bool {
    ing.store
        .job(JobId(12_877_621_891))
        .await
        .expect("read")
        .is_some()
}

#[tokio::test]
async fn a_delivery_id_that_is_not_a_guid_is_refused_with_its_reason() {
    let ing = ingress("").await;
    let good = || Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"));
    for bad in [
        "d-1",
        "",
        "72d3162e-cc78-11e3-81ab-4c9367dc095",
        "72d3162e-cc78-11e3-81ab-4c9367dc0958a",
        "72d3162ecc7811e381ab4c9367dc0958",
        "72d3162e-cc78-11e3-81ab_4c9367dc0958",
        "{2d3162e-cc78-11e3-81ab-4c9367dc095}",
        "g2d3162e-cc78-11e3-81ab-4c9367dc0958",
    ] {
        let (status, body) = Delivery {
            guid: Some(bad.into()),
            ..good()
        }
        .send(&ing, "/webhook")
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, json!({"error": "invalid delivery id"})),
            "{bad:?}"
        );
    }
    assert!(!stored(&ing).await, "nothing was recorded");
    // GitHub's own spellings pass: lower case (v1 and v4 GUIDs), and upper case.
    for guid in [
        "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
        uuid::Uuid::new_v4().to_string().to_uppercase(),
    ] {
        let (status, _) = Delivery {
            guid: Some(guid.clone()),
            ..good()
        }
        .send(&ing, "/webhook")
        .await;
        assert_ne!(status, StatusCode::BAD_REQUEST, "{guid}");
    }
    assert!(stored(&ing).await);
}

#[tokio::test]
async fn a_delivery_older_than_the_retention_is_ignored_as_a_replay_and_records_nothing() {
    let ing = ingress("").await;
    let old = dated_payload(
        RETENTION + Duration::from_secs(86_400),
        json!({"full_name": "octo/repo", "private": true}),
    );
    let (status, body) = Delivery::json("workflow_job", &old).send(&ing, "/webhook").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ignored");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("STORE_RETENTION_DAYS=7")),
        "{body}"
    );
    assert!(!stored(&ing).await, "the replay recreated no job");
    assert!(
        ing.metrics
            .render()
            .contains("mgr_webhooks_total{outcome=\"stale\"} 1"),
        "{}",
        ing.metrics.render()
    );
}

#[tokio::test]
async fn the_newest_timestamp_decides_so_a_long_queued_job_that_just_finished_is_recorded() {
    let ing = ingress("").await;
    let mut v = dated_payload(RETENTION * 2, json!({"full_name": "octo/repo", "private": true}));
    v["workflow_job"]["completed_at"] = json!(rfc3339(SystemTime::now()));
    let (status, _) = Delivery::json("workflow_job", &v).send(&ing, "/webhook").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(stored(&ing).await);
}

#[tokio::test]
async fn a_delivery_without_usable_timestamps_is_not_refused() {
    // Real payloads lack fields now and then (docs/github.md §0.1); a missing or unreadable
    // time must not cost a job its runner.
    let ing = ingress("").await;
    let mut v = dated_payload(Duration::ZERO, json!({"full_name": "octo/repo", "private": true}));
    v["workflow_job"]["created_at"] = json!("yesterday");
    v["workflow_job"]["started_at"] = Value::Null;
    v["workflow_job"]
        .as_object_mut()
        .expect("object")
        .remove("completed_at");
    let (status, _) = Delivery::json("workflow_job", &v).send(&ing, "/webhook").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(stored(&ing).await);
}

#[tokio::test]
async fn a_public_repository_is_refused_unless_allowed() {
    let ing = ingress("").await;
    let public = [
        json!({"full_name": "octo/repo", "private": false}),
        json!({"full_name": "octo/repo", "visibility": "public"}),
        json!({"full_name": "octo/repo", "private": false, "visibility": "public"}),
    ];
    for repository in &public {
        let (status, body) =
            Delivery::json("workflow_job", &dated_payload(Duration::ZERO, repository.clone()))
                .send(&ing, "/webhook")
                .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::FORBIDDEN,
                json!({"error": "public repository (set ALLOW_PUBLIC_REPOS=true to serve it)"})
            ),
            "{repository}"
        );
    }
    assert!(!stored(&ing).await, "no public job was recorded");
    assert!(
        ing.metrics
            .render()
            .contains("mgr_webhooks_total{outcome=\"public repository\"} 3")
    );

    let allowed = Ingress {
        allow_public: true,
        ..ing.clone()
    };
    let (status, _) = Delivery::json("workflow_job", &dated_payload(Duration::ZERO, public[0].clone()))
        .send(&allowed, "/webhook")
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "served with ALLOW_PUBLIC_REPOS=true"
    );
}

#[tokio::test]
async fn private_internal_and_unknown_visibility_repositories_are_served() {
    for repository in [
        json!({"full_name": "octo/repo", "private": true, "visibility": "private"}),
        json!({"full_name": "octo/repo", "private": true, "visibility": "internal"}),
        json!({"full_name": "octo/repo"}),
    ] {
        let ing = ingress("").await;
        let (status, _) = Delivery::json("workflow_job", &dated_payload(Duration::ZERO, repository.clone()))
            .send(&ing, "/webhook")
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{repository}");
    }
}

/// Sends `d` and returns the answer's status and `Connection` header.
async fn connection_header(ing: &Ingress, d: Delivery) -> (StatusCode, Option<String>) {
    let mut req = Request::post("/webhook")
        .header("content-type", d.content_type)
        .header("X-GitHub-Event", "workflow_job")
        .header("X-GitHub-Delivery", d.guid.unwrap_or_default());
    if let Some(s) = d.signature {
        req = req.header("X-Hub-Signature-256", s);
    }
    let resp = router(ing.clone())
        .oneshot(req.body(Body::from(d.body)).expect("request"))
        .await
        .expect("answer");
    let connection = resp
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.status(), connection)
}

#[tokio::test]
async fn an_answer_sent_before_the_body_was_read_says_the_connection_closes() {
    let ing = ingress("").await;
    let good = || Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"));
    let big = vec![b'x'; 64 * 1024 + 1];
    let too_large = Delivery {
        signature: Some(sign(SECRET.as_bytes(), &big)),
        body: big,
        ..good()
    };
    assert_eq!(
        connection_header(&ing, too_large).await,
        (StatusCode::PAYLOAD_TOO_LARGE, Some("close".into()))
    );
    // A refusal after the whole body was read keeps the connection.
    let unsigned = Delivery {
        signature: None,
        ..good()
    };
    assert_eq!(
        connection_header(&ing, unsigned).await,
        (StatusCode::UNAUTHORIZED, None)
    );
}

/// A writer collecting the formatted log lines of a test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }
}

#[tokio::test]
async fn refusals_are_counted_every_time_but_warned_once_per_interval_and_reason() {
    let good = || Delivery::json("workflow_job", &job_payload("queued", &["modal"], "octo/repo"));
    let unsigned = || Delivery {
        signature: None,
        ..good()
    };
    let bad_id = || Delivery {
        guid: Some("d-1".into()),
        ..good()
    };
    // tracing caches each log site's interest globally, computed when the site is first hit
    // and again whenever a subscriber is created. A first hit on another test's thread,
    // racing with this test's subscriber, could cache "no one listens" (seen twice in CI:
    // no line captured; recomputing after the subscriber alone did not close it). So the
    // refusals' sites are hit here first, on this thread and with a throttle of their own,
    // before the subscriber exists.
    let warm_up = ingress("").await;
    unsigned().send(&warm_up, "/webhook").await;
    bad_id().send(&warm_up, "/webhook").await;

    let ing = ingress("").await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // And should a registration on another thread still have been under way, its site is
    // recomputed now, with this subscriber.
    tracing::callsite::rebuild_interest_cache();

    for _ in 0..5 {
        assert_eq!(
            unsigned().send(&ing, "/webhook").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(bad_id().send(&ing, "/webhook").await.0, StatusCode::BAD_REQUEST);

    let metrics = ing.metrics.render();
    assert!(
        metrics.contains("mgr_webhooks_total{outcome=\"invalid signature\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mgr_webhooks_total{outcome=\"invalid delivery id\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        captured.lines_with("webhook refused"),
        2,
        "one line per reason within the interval"
    );
    assert_eq!(captured.lines_with("signature check failed"), 1);
    assert_eq!(captured.lines_with("not a GUID"), 1);
}
