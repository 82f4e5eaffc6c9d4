//! The webhook API of repository and organisation hooks (docs/github.md §1): read a hook
//! (its events and configuration, the secret masked), list past deliveries (cursor
//! pagination, `status` filter) and redeliver one. A redelivery keeps the original GUID and payload; GitHub never
//! redelivers on its own, so this is how a service recovers lost events.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::config::{ContentType, HookKind};
use super::endpoints::{Params, with_link};
use super::routes::Reply;
use super::state::{Outgoing, State, StoredDelivery};
use super::time::rfc3339;
use super::views::Scope;

/// Which of the stored deliveries are the hook's: `None` if `at` has no hook `hook_id`.
/// The repository hook stands for every repository's hook, so under a repository it shows
/// that repository's deliveries (and events that name no repository).
fn hook_filter(state: &State, at: &Scope, hook_id: u64) -> Option<impl Fn(&StoredDelivery) -> bool + use<>> {
    let (_, target) = state.webhooks.iter().find(|(id, _)| *id == hook_id)?;
    let repo_id = match (&target.kind, at) {
        (HookKind::Repository, Scope::Repository(name)) => Some(state.repo(name)?.id),
        (HookKind::Organization(org), Scope::Organization(login)) if org.eq_ignore_ascii_case(login) => None,
        _ => return None,
    };
    Some(move |d: &StoredDelivery| {
        d.record.hook_id == hook_id && repo_id.is_none_or(|r| d.repository_id.is_none_or(|id| id == r))
    })
}

/// `GET /repos/{o}/{r}/hooks/{hook_id}` (or the organisation's): GitHub's `hook` shape.
/// A secret is never shown: `config.secret` is `********` when one is set and absent
/// otherwise.
pub(super) fn get_hook(state: &State, at: &Scope, hook_id: u64) -> Reply {
    if hook_filter(state, at, hook_id).is_none() {
        return Reply::not_found();
    }
    let Some((_, target)) = state.webhooks.iter().find(|(id, _)| *id == hook_id) else {
        return Reply::not_found();
    };
    let settings = state.hook_settings.get(&hook_id).cloned().unwrap_or_default();
    let mut config = json!({
        "content_type": match target.content_type {
            ContentType::Json => "json",
            ContentType::Form => "form",
        },
        "insecure_ssl": "0",
        "url": target.url,
    });
    if !target.secret.is_empty() {
        config["secret"] = json!("********");
    }
    let url = format!("{}{}/hooks/{hook_id}", state.api_url, at.path());
    let kind = match at {
        Scope::Organization(_) => "Organization",
        _ => "Repository",
    };
    Reply::json(
        200,
        json!({
            "type": kind,
            "id": hook_id,
            "name": "web",
            "active": settings.active,
            "events": settings.events,
            "config": config,
            "updated_at": "2024-01-01T00:00:00Z",
            "created_at": "2024-01-01T00:00:00Z",
            "url": url,
            "test_url": format!("{url}/test"),
            "ping_url": format!("{url}/pings"),
            "deliveries_url": format!("{url}/deliveries"),
            "last_response": { "code": null, "status": "unused", "message": null },
        }),
    )
}

/// `GET /repos/{o}/{r}/hooks/{hook_id}/deliveries` (or the organisation's), newest first.
pub(super) fn list(state: &State, at: &Scope, hook_id: u64, params: &Params) -> Reply {
    let Some(belongs) = hook_filter(state, at, hook_id) else {
        return Reply::not_found();
    };
    let wanted = match params.get("status") {
        None => None,
        Some("success") => Some(true),
        Some("failure") => Some(false),
        Some(_) => {
            return Reply::error(422, "Invalid input: status must be one of success, failure");
        }
    };
    let before = match params.get("cursor") {
        None => u64::MAX,
        Some(cursor) => match cursor.strip_prefix("v1_").and_then(|id| id.parse().ok()) {
            Some(id) => id,
            None => return Reply::error(400, "Invalid cursor"),
        },
    };
    let per_page = params.per_page();
    let mut matching = state
        .deliveries
        .iter()
        .rev()
        .filter(|d| belongs(d) && d.record.id < before)
        .filter(|d| wanted.is_none_or(|ok| d.record.is_success() == ok));
    let page: Vec<&StoredDelivery> = matching.by_ref().take(per_page).collect();
    let more = matching.next().is_some();
    let link = match page.last() {
        Some(last) if more => {
            let url = format!("{}{}/hooks/{hook_id}/deliveries", state.api_url, at.path());
            Some(format!(
                "<{url}?{}>; rel=\"next\"",
                params.with("cursor", &format!("v1_{}", last.record.id))
            ))
        }
        _ => None,
    };
    let items: Vec<Value> = page.into_iter().map(item_json).collect();
    with_link(Reply::json(200, Value::Array(items)), link)
}

/// One item of the list, with the fields of GitHub's `hook-delivery-item`.
fn item_json(delivery: &StoredDelivery) -> Value {
    let record = &delivery.record;
    json!({
        "id": record.id,
        "guid": record.guid.to_string(),
        "delivered_at": rfc3339(record.delivered_at),
        "redelivery": record.redelivery,
        "duration": record.duration.as_secs_f64(),
        "status": record.status,
        "status_code": record.status_code.unwrap_or(0),
        "event": record.event,
        "action": record.action,
        "installation_id": delivery.payload.pointer("/installation/id"),
        "repository_id": delivery.repository_id,
        "throttled_at": null,
    })
}

/// `POST …/deliveries/{id}/attempts` → 202; the resend happens in the background.
pub(super) fn redeliver(state: &mut State, at: &Scope, hook_id: u64, delivery_id: u64) -> Reply {
    let Some(belongs) = hook_filter(state, at, hook_id) else {
        return Reply::not_found();
    };
    let found = state
        .deliveries
        .iter()
        .find(|d| d.record.id == delivery_id && belongs(d))
        .map(|d| Outgoing {
            guid: d.record.guid,
            event: d.record.event.clone(),
            action: d.record.action.clone(),
            job_id: d.record.job_id,
            repository_id: d.repository_id,
            payload: Arc::clone(&d.payload),
            redelivery: true,
            hook_id: Some(hook_id),
        });
    match found {
        Some(outgoing) => {
            state.outbox.push(outgoing);
            Reply::json(202, Value::Object(Map::new()))
        }
        None => Reply::not_found(),
    }
}
