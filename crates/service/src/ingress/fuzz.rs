//! Fuzzing on stable Rust: property tests that throw arbitrary bytes, header sets and JSON
//! shapes at the signature check, the event parser and the whole webhook route. None may
//! panic, and every answer must be one the README documents. CI runs the default number of
//! cases; `PROPTEST_CASES=100000 cargo test -p modal-github-runner --lib fuzz` runs longer.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::signature::{SignatureError, sign, verify};
use super::tests::{SECRET, ingress};
use super::{parse_event, router};

/// Any JSON document, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A real-looking delivery with one field replaced by anything: the shapes GitHub's own
/// deliveries break its schema with (docs/github.md §0.1), and worse.
fn mutated_payload() -> impl Strategy<Value = Value> {
    let fields = prop_oneof![
        Just("/action"),
        Just("/workflow_job/id"),
        Just("/workflow_job/run_id"),
        Just("/workflow_job/run_attempt"),
        Just("/workflow_job/labels"),
        Just("/workflow_job/status"),
        Just("/workflow_job/runner_name"),
        Just("/workflow_job/created_at"),
        Just("/workflow_job/started_at"),
        Just("/workflow_job"),
        Just("/repository/full_name"),
        Just("/repository"),
    ];
    (fields, any_json()).prop_map(|(path, value)| {
        let mut doc = json!({
            "action": "queued",
            "workflow_job": {
                "id": 12_877_621_891_u64, "run_id": 4_747_967_848_u64, "run_attempt": 1,
                "name": "build", "status": "queued", "labels": ["self-hosted", "modal"],
                "runner_name": null, "created_at": "2026-11-30T01:00:00Z", "started_at": null
            },
            "repository": {"full_name": "octo/repo", "private": true},
        });
        if let Some(slot) = doc.pointer_mut(path) {
            *slot = value;
        }
        doc
    })
}

proptest! {
    #[test]
    fn the_signature_check_accepts_exactly_the_right_mac(
        secret in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in prop::option::of(prop_oneof![".{0,80}", "sha256=[0-9a-fA-F]{64}", "sha256=[0-9a-f]{0,70}"]),
    ) {
        let right = sign(&secret, &body);
        let result = verify(&secret, &body, header.as_deref());
        match header.as_deref().map(str::trim) {
            None => prop_assert_eq!(result, Err(SignatureError::Missing)),
            Some(h) if h.eq_ignore_ascii_case(&right) && h.starts_with("sha256=") => prop_assert_eq!(result, Ok(())),
            Some(_) => prop_assert!(result.is_err()),
        }
        prop_assert_eq!(verify(&secret, &body, Some(&right)), Ok(()));
    }

    #[test]
    fn the_event_parser_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_event(&body);
    }

    #[test]
    fn the_event_parser_never_panics_on_arbitrary_json(doc in prop_oneof![any_json(), mutated_payload()]) {
        if let Ok(event) = parse_event(doc.to_string().as_bytes()) {
            // What it accepts is usable: a valid repository name and a known status.
            prop_assert!(event.repo.to_string().contains('/'));
        }
    }
}

/// The answers the README documents for `POST /webhook`.
const DOCUMENTED: [u16; 7] = [200, 202, 400, 401, 403, 413, 415];

/// One delivery with arbitrary headers: each may be absent, right, or anything.
#[derive(Debug, Clone)]
struct Probe {
    event: Option<String>,
    delivery: Option<String>,
    content_type: Option<String>,
    sign_it: bool,
    signature: Option<String>,
    body: Vec<u8>,
}

fn probe() -> impl Strategy<Value = Probe> {
    let event = prop::option::of(prop_oneof![
        Just("workflow_job".to_string()),
        Just("ping".to_string()),
        "[a-z_]{0,20}",
    ]);
    let delivery = prop::option::of(prop_oneof![
        Just("72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string()),
        "[0-9a-f-]{0,40}",
        "[ -~]{0,40}",
    ]);
    let content_type = prop::option::of(prop_oneof![
        Just("application/json".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        Just("application/json; charset=utf-8".to_string()),
        "[ -~]{0,30}",
    ]);
    let body = prop_oneof![
        mutated_payload().prop_map(|v| v.to_string().into_bytes()),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
        "payload=[ -~]{0,64}".prop_map(String::into_bytes),
    ];
    let signature = prop::option::of("[ -~]{0,80}");
    (event, delivery, content_type, any::<bool>(), signature, body).prop_map(
        |(event, delivery, content_type, sign_it, signature, body)| Probe {
            event,
            delivery,
            content_type,
            sign_it,
            signature,
            body,
        },
    )
}

fn request(p: &Probe) -> Request<Body> {
    let mut req = Request::post("/webhook");
    let headers = [
        ("X-GitHub-Event", p.event.clone()),
        ("X-GitHub-Delivery", p.delivery.clone()),
        ("Content-Type", p.content_type.clone()),
    ];
    for (name, value) in headers {
        if let Some(v) = value.filter(|v| axum::http::HeaderValue::from_str(v).is_ok()) {
            req = req.header(name, v);
        }
    }
    let signature = if p.sign_it {
        Some(sign(SECRET.as_bytes(), &p.body))
    } else {
        p.signature.clone()
    };
    if let Some(s) = signature.filter(|v| axum::http::HeaderValue::from_str(v).is_ok()) {
        req = req.header("X-Hub-Signature-256", s);
    }
    req.body(Body::from(p.body.clone()))
        .expect("a request built from valid headers")
}

proptest! {
    #[test]
    fn every_delivery_gets_a_documented_answer_with_a_json_body(p in probe()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (status, body) = runtime.block_on(async {
            let app = router(ingress("octo/repo").await);
            let resp = app.oneshot(request(&p)).await.expect("an answer");
            let status = resp.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.expect("body").to_bytes();
            (status, bytes)
        });
        prop_assert!(DOCUMENTED.contains(&status), "status {} for {:?}", status, p);
        let answer: Value = serde_json::from_slice(&body).expect("a JSON answer");
        prop_assert!(answer.get("status").is_some() || answer.get("error").is_some(), "{}", answer);
        // Nothing is parsed before the signature is checked.
        if !p.sign_it {
            prop_assert_eq!(status, 401);
        }
    }
}
