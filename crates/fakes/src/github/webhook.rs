//! Webhook delivery, as GitHub's "hookshot" does it (docs/github.md §1).
//!
//! Each hook that wants an event gets its own delivery, in its own background task: one
//! POST with GitHub's headers and an HMAC-SHA256 signature over the exact body bytes, a
//! 10 s timeout, and no automatic retry. Every attempt is recorded for the deliveries API,
//! including the ones a delivery filter dropped.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::Shared;
use super::client::{HttpClient, HttpError};
use super::config::{ContentType, HookKind, WebhookTarget};
use super::payload::node_id;
use super::records::{DeliveryInfo, DeliveryMode, DeliveryRecord};
use super::state::{Outgoing, State, StoredDelivery};
use super::views::stable_id;

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

/// One delivery of an event to one hook.
struct HookDelivery {
    outgoing: Outgoing,
    hook_id: u64,
    target: WebhookTarget,
    /// What the hook names itself with: `X-GitHub-Hook-Installation-Target-Type` and `-ID`.
    target_type: &'static str,
    target_id: u64,
}

/// Starts the background delivery of `outgoing` to every hook that wants it (or to the
/// one hook of a redelivery). Each hook gets its own delivery; all share the event's GUID.
pub(super) fn spawn_delivery(shared: &Arc<Shared>, outgoing: Outgoing) {
    let deliveries: Vec<HookDelivery> = {
        let state = shared.lock();
        state
            .webhooks
            .iter()
            .filter(|(id, _)| outgoing.hook_id.is_none_or(|wanted| wanted == *id))
            .filter_map(|(id, target)| for_hook(&state, &outgoing, *id, target))
            .collect()
    };
    for delivery in deliveries {
        let task_shared = Arc::clone(shared);
        shared
            .tracker
            .spawn_on(deliver(task_shared, delivery), &shared.runtime);
    }
}

/// The delivery of `outgoing` to hook `hook_id`, if the hook gets such events: an
/// organisation's hook only its repositories' events, the App's hook only the events of
/// accounts it is installed on (with that installation in the payload).
fn for_hook(
    state: &State,
    outgoing: &Outgoing,
    hook_id: u64,
    target: &WebhookTarget,
) -> Option<HookDelivery> {
    let owner = outgoing
        .payload
        .pointer("/repository/owner/login")
        .and_then(Value::as_str);
    let subscribed = state.hook_settings.get(&hook_id).cloned().unwrap_or_default();
    if !subscribed.wants(&outgoing.event) {
        return None;
    }
    let mut outgoing = outgoing.clone();
    let (target_type, target_id) = match &target.kind {
        HookKind::Repository => ("repository", outgoing.repository_id.unwrap_or(0)),
        HookKind::Organization(org) => {
            if owner.is_some_and(|o| !o.eq_ignore_ascii_case(org)) {
                return None;
            }
            ("organization", stable_id(org, 1_000_000, 150_000_000))
        }
        HookKind::App => {
            let app = state.app.as_ref()?;
            if let Some(owner) = owner {
                let installation = app.installation_of(owner)?;
                let mut payload = (*outgoing.payload).clone();
                if let Some(map) = payload.as_object_mut() {
                    map.insert(
                        "installation".into(),
                        json!({ "id": installation, "node_id": node_id("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u", installation) }),
                    );
                }
                outgoing.payload = Arc::new(payload);
            }
            ("integration", app.id)
        }
    };
    Some(HookDelivery {
        outgoing,
        hook_id,
        target: target.clone(),
        target_type,
        target_id,
    })
}

/// Applies the delivery filter, then sends (or not).
async fn deliver(shared: Arc<Shared>, delivery: HookDelivery) {
    let filter = shared.lock().delivery_filter.clone();
    let outgoing = &delivery.outgoing;
    let info = DeliveryInfo {
        guid: outgoing.guid,
        event: outgoing.event.clone(),
        action: outgoing.action.clone(),
        job_id: outgoing.job_id,
        redelivery: outgoing.redelivery,
        hook_id: delivery.hook_id,
    };
    let mode = filter.map_or(DeliveryMode::Deliver, |f| f(&info));
    match mode {
        DeliveryMode::Deliver => attempt(&shared, &delivery).await,
        DeliveryMode::Drop => record(&shared, &delivery, dropped()),
        DeliveryMode::Duplicate => {
            tokio::join!(attempt(&shared, &delivery), attempt(&shared, &delivery));
        }
        DeliveryMode::Delay(delay) => {
            if shared.sleep(delay).await {
                attempt(&shared, &delivery).await;
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
async fn attempt(shared: &Arc<Shared>, delivery: &HookDelivery) {
    let (outgoing, target) = (&delivery.outgoing, &delivery.target);
    let timeout = shared.lock().webhook_timeout;
    let body = encode_body(&outgoing.payload, target.content_type);
    let guid = outgoing.guid.to_string();
    let target_id = delivery.target_id.to_string();
    let hook_id = delivery.hook_id.to_string();
    let signature = sign_sha256(target.secret.as_bytes(), &body);
    let mut headers: Vec<(&str, &str)> = vec![
        ("accept", "*/*"),
        ("user-agent", &shared.hookshot_agent),
        ("content-type", target.content_type.mime()),
        ("x-github-event", &outgoing.event),
        ("x-github-delivery", &guid),
        ("x-github-hook-id", &hook_id),
        ("x-github-hook-installation-target-type", delivery.target_type),
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
    record(shared, delivery, outcome);
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

fn record(shared: &Shared, delivery: &HookDelivery, outcome: Outcome) {
    let outgoing = &delivery.outgoing;
    let mut state = shared.lock();
    let id = state.next_delivery_id;
    state.next_delivery_id += 1;
    state.deliveries.push(StoredDelivery {
        record: DeliveryRecord {
            id,
            hook_id: delivery.hook_id,
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
