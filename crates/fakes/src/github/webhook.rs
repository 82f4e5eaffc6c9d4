//! Webhook delivery, as GitHub's "hookshot" does it (docs/github.md §1).
//!
//! Each delivery runs in its own background task: one POST with GitHub's
//! headers and an HMAC-SHA256 signature over the exact body bytes, a 10 s
//! timeout, and no automatic retry. Every attempt is recorded for the
//! deliveries API, including the ones a delivery filter dropped.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::client::{HttpClient, HttpError};
use super::config::{ContentType, WebhookTarget};
use super::records::{DeliveryInfo, DeliveryMode, DeliveryRecord};
use super::state::{Outgoing, StoredDelivery};
use super::{HOOK_ID, Shared};

/// `X-Hub-Signature-256` for `body`: `sha256=` + lowercase hex HMAC-SHA256.
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The exact bytes GitHub sends for `payload` with this content type: the
/// JSON itself, or `payload=<urlencoded JSON>` for form hooks.
pub fn encode_body(payload: &Value, content_type: ContentType) -> Vec<u8> {
    let json = serde_json::to_string(payload).unwrap_or_default();
    match content_type {
        ContentType::Json => json.into_bytes(),
        ContentType::Form => form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &json)
            .finish()
            .into_bytes(),
    }
}

/// How one attempt ended.
struct Outcome {
    status_code: Option<u16>,
    status: String,
    delivered_at: SystemTime,
    duration: Duration,
}

/// Starts the background delivery of `outgoing`.
pub(super) fn spawn_delivery(shared: &Arc<Shared>, outgoing: Outgoing) {
    let task_shared = Arc::clone(shared);
    shared
        .tracker
        .spawn_on(deliver(task_shared, outgoing), &shared.runtime);
}

/// Applies the delivery filter, then sends (or not).
async fn deliver(shared: Arc<Shared>, outgoing: Outgoing) {
    let (target, filter) = {
        let state = shared.lock();
        (state.webhook.clone(), state.delivery_filter.clone())
    };
    let Some(target) = target else {
        return;
    };
    let info = DeliveryInfo {
        guid: outgoing.guid,
        event: outgoing.event.clone(),
        action: outgoing.action.clone(),
        job_id: outgoing.job_id,
        redelivery: outgoing.redelivery,
    };
    let mode = filter.map_or(DeliveryMode::Deliver, |f| f(&info));
    match mode {
        DeliveryMode::Deliver => attempt(&shared, &outgoing, &target).await,
        DeliveryMode::Drop => record(&shared, &outgoing, dropped()),
        DeliveryMode::Duplicate => {
            tokio::join!(
                attempt(&shared, &outgoing, &target),
                attempt(&shared, &outgoing, &target)
            );
        }
        DeliveryMode::Delay(delay) => {
            if shared.sleep(delay).await {
                attempt(&shared, &outgoing, &target).await;
            }
        }
    }
}

/// What GitHub records when it cannot reach the receiver at all.
fn dropped() -> Outcome {
    Outcome {
        status_code: None,
        status: "failed to connect to host".to_owned(),
        delivered_at: SystemTime::now(),
        duration: Duration::ZERO,
    }
}

/// One POST to the receiver; records the result unless the fake shut down.
async fn attempt(shared: &Arc<Shared>, outgoing: &Outgoing, target: &WebhookTarget) {
    let timeout = shared.lock().webhook_timeout;
    let body = encode_body(&outgoing.payload, target.content_type);
    let guid = outgoing.guid.to_string();
    let target_id = outgoing.repository_id.unwrap_or(0).to_string();
    let hook_id = HOOK_ID.to_string();
    let signature = sign_sha256(target.secret.as_bytes(), &body);
    let mut headers: Vec<(&str, &str)> = vec![
        ("accept", "*/*"),
        ("user-agent", &shared.hookshot_agent),
        ("content-type", target.content_type.mime()),
        ("x-github-event", &outgoing.event),
        ("x-github-delivery", &guid),
        ("x-github-hook-id", &hook_id),
        ("x-github-hook-installation-target-type", "repository"),
        ("x-github-hook-installation-target-id", &target_id),
    ];
    if !target.secret.is_empty() {
        headers.push(("x-hub-signature-256", &signature));
    }
    let delivered_at = SystemTime::now();
    let started = Instant::now();
    let client = HttpClient::one_shot(timeout);
    let result = tokio::select! {
        result = client.send("POST", &target.url, &headers, &body) => result,
        () = shared.shutdown.cancelled() => return,
    };
    let (status_code, status) = describe(&result);
    let outcome = Outcome {
        status_code,
        status,
        delivered_at,
        duration: started.elapsed(),
    };
    record(shared, outgoing, outcome);
}

/// Status code and GitHub-style status text of an attempt.
fn describe(result: &Result<super::client::HttpResponse, HttpError>) -> (Option<u16>, String) {
    match result {
        Ok(response) if (200..300).contains(&response.status) => (Some(response.status), "OK".to_owned()),
        Ok(response) => (
            Some(response.status),
            format!("Invalid HTTP Response: {}", response.status),
        ),
        Err(HttpError::Timeout(_)) => (None, "timed out".to_owned()),
        Err(HttpError::Connect(_)) => (None, "failed to connect to host".to_owned()),
        Err(e) => (None, format!("We couldn't deliver this payload: {e}")),
    }
}

fn record(shared: &Shared, outgoing: &Outgoing, outcome: Outcome) {
    let mut state = shared.lock();
    let id = state.next_delivery_id;
    state.next_delivery_id += 1;
    state.deliveries.push(StoredDelivery {
        record: DeliveryRecord {
            id,
            guid: outgoing.guid,
            event: outgoing.event.clone(),
            action: outgoing.action.clone(),
            job_id: outgoing.job_id,
            status_code: outcome.status_code,
            status: outcome.status,
            redelivery: outgoing.redelivery,
            delivered_at: outcome.delivered_at,
            duration: outcome.duration,
        },
        repository_id: outgoing.repository_id,
        payload: Arc::clone(&outgoing.payload),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_githubs_published_vector() {
        assert_eq!(
            sign_sha256(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn the_signature_matches_the_octokit_vectors() {
        assert_eq!(
            sign_sha256(b"mysecret", b"{\"foo\":\"bar\"}"),
            "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3"
        );
        assert_eq!(
            sign_sha256(b"mysecret", b"{\n  \"foo\": \"bar\"\n}\n"),
            "sha256=e3eccac34c43c7dc1cbb905488b1b81347fcc700a7b025697a9d07862256023f"
        );
    }

    #[test]
    fn a_form_body_carries_the_json_in_the_payload_field() {
        let payload = serde_json::json!({ "action": "queued", "x": "a b&c" });
        let body = encode_body(&payload, ContentType::Form);
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].0, "payload");
        let decoded: Value = serde_json::from_str(&fields[0].1).expect("json");
        assert_eq!(decoded, payload);
    }
}
