//! The HTTP face of the fake Actions service for scale sets, under [`BROKER_PATH`]
//! (contract §2–§9): admin calls with the admin JWT and `api-version=6.0-preview`,
//! the message queue and `acquirejobs` with the session's queue JWT. Answers start with a
//! UTF-8 BOM, as the real service's may; errors are `{"typeName","message"}`.
//! Faults and rate limits of the REST fake never apply here.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Shared;
use super::app::bearer;
use super::runners::{RegisterError, Registration};
use super::scaleset::{
    PollRecord, ScaleSetRecord, SessionCreate, SessionRecord, scope_of_config_url, scope_tag, sign_token,
    verify_token,
};
use super::state::State;
use super::views::Scope;

/// Path prefix of the fake Actions service (its "service base URL").
pub const BROKER_PATH: &str = "/_fake/broker/";

fn reply(status: u16, body: Option<Value>) -> Response {
    let bytes = body.map_or_else(Vec::new, |v| {
        let mut bytes = "\u{feff}".as_bytes().to_vec();
        bytes.extend(serde_json::to_vec(&v).unwrap_or_default());
        bytes
    });
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn ok(body: Value) -> Response {
    reply(200, Some(body))
}

fn error(status: u16, type_name: &str, message: &str) -> Response {
    reply(
        status,
        Some(json!({ "typeName": format!("GitHub.Actions.Runtime.WebApi.{type_name}"), "message": message })),
    )
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `POST {api}/actions/runner-registration` with `RemoteAuth <registration token>`
/// (contract §1 step c): the service base URL and a fresh admin token.
pub(super) fn runner_registration(shared: &Arc<Shared>, headers: &HeaderMap, body: &[u8]) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("RemoteAuth "))
        .map(str::trim)
        .unwrap_or_default();
    let url = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_owned));
    let mut state = shared.lock();
    let issued_for = state
        .scale_sets
        .registration_tokens
        .get(token)
        .filter(|(_, until)| Instant::now() < *until)
        .map(|(scope, _)| scope.clone());
    let Some(scope) = issued_for else {
        return error(401, "UnauthorizedException", "Bad registration token");
    };
    if state.scale_sets.registration_refused {
        return error(
            403,
            "AccessDeniedException",
            "The credentials lack the rights to administer runners here",
        );
    }
    let named = url
        .as_deref()
        .and_then(scope_of_config_url)
        .and_then(|s| state.resolve(&s));
    if named.as_ref() != Some(&scope) {
        return error(
            400,
            "ArgumentException",
            "url does not name the scope of the registration token",
        );
    }
    let ttl = state.scale_sets.admin_ttl;
    let admin = sign_token("admin", &scope_tag(&scope), "", ttl);
    state.scale_sets.admin_tokens_issued += 1;
    state.scale_sets.tokens.push(admin.clone());
    ok(json!({ "url": format!("{}{BROKER_PATH}", state.root_url), "token": admin }))
}

/// Routes `/_fake/broker/<rest>`.
pub(super) async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["queue", set]) => match set.parse() {
            Ok(set) => poll(shared, set, query, headers).await,
            Err(_) => reply(404, None),
        },
        ("DELETE", ["queue", set, id]) => match (set.parse(), id.parse()) {
            (Ok(set), Ok(id)) => delete_message(shared, set, id, headers),
            _ => reply(404, None),
        },
        ("POST", ["_apis", "runtime", "runnerscalesets", _, "generatejitconfig"]) => {
            // The REST endpoint's latency applies to its scale-set twin too, so the two
            // registration paths compare fairly.
            let latency = {
                let mut state = shared.lock();
                let name = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|b| b.get("name").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                state
                    .scale_sets
                    .jit_requests
                    .push((name, std::time::SystemTime::now()));
                state.latency_for(super::faults::Route::GenerateJitConfig)
            };
            if !latency.is_zero() {
                shared.sleep(latency).await;
            }
            admin(shared, method, &segments, query, headers, body)
        }
        ("POST", ["_apis", "runtime", "runnerscalesets", set, "acquirejobs"]) => match set.parse() {
            Ok(set) => acquire(shared, set, headers, body),
            Err(_) => reply(404, None),
        },
        _ => admin(shared, method, &segments, query, headers, body),
    }
}

/// The admin calls: token and `api-version` checked, then routed.
fn admin(
    shared: &Arc<Shared>,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(claims) = bearer(headers).and_then(|t| verify_token(t, "admin")) else {
        return error(
            401,
            "UnauthorizedException",
            "The admin token is missing, invalid or expired",
        );
    };
    if query_param(query, "api-version").as_deref() != Some("6.0-preview") {
        return error(
            400,
            "VssInvalidPreviewVersionException",
            "api-version=6.0-preview is required",
        );
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut state = shared.lock();
    let Some(home) = scope_from_tag(&claims.scope) else {
        return error(401, "UnauthorizedException", "The admin token names no scope");
    };
    let num = |s: &str| s.parse::<u64>().ok();
    let result = match (method.as_str(), segments) {
        ("GET", ["_apis", "runtime", "runnerscalesets"]) => Some(find_set(&state, &home, query)),
        ("POST", ["_apis", "runtime", "runnerscalesets"]) => Some(create_set(&mut state, &home, &body)),
        ("GET", ["_apis", "runtime", "runnerscalesets", id]) => {
            num(id).map(|id| with_set(&state, &home, id, |set| ok(set_json(&state, set))))
        }
        ("PATCH", ["_apis", "runtime", "runnerscalesets", id]) => {
            num(id).map(|id| update_set(&mut state, &home, id, &body))
        }
        ("DELETE", ["_apis", "runtime", "runnerscalesets", id]) => num(id).map(|id| {
            if state.scale_sets.sets.get(&id).is_some_and(|s| s.home == home) {
                state.scale_sets.sets.remove(&id);
                state.scale_sets.sessions.remove(&id);
                reply(204, None)
            } else {
                set_not_found()
            }
        }),
        ("POST", ["_apis", "runtime", "runnerscalesets", id, "sessions"]) => {
            num(id).map(|id| create_session(&mut state, &home, id, &body))
        }
        ("PATCH", ["_apis", "runtime", "runnerscalesets", id, "sessions", sid]) => {
            num(id).map(|id| refresh_session(&mut state, &home, id, sid))
        }
        ("DELETE", ["_apis", "runtime", "runnerscalesets", id, "sessions", sid]) => {
            num(id).map(|id| delete_session(&mut state, id, sid))
        }
        ("POST", ["_apis", "runtime", "runnerscalesets", id, "generatejitconfig"]) => {
            num(id).map(|id| generate_jit(&mut state, &home, id, &body))
        }
        ("GET", ["_apis", "distributedtask", "pools", "0", "agents"]) => Some(find_agent(&state, query)),
        ("GET", ["_apis", "distributedtask", "pools", "0", "agents", id]) => {
            num(id).map(|id| match state.runners.get(&id) {
                Some(record) => ok(agent_json(record)),
                None => error(404, "AgentNotFoundException", "No agent found"),
            })
        }
        ("DELETE", ["_apis", "distributedtask", "pools", "0", "agents", id]) => {
            num(id).map(|id| remove_agent(&mut state, id))
        }
        _ => None,
    };
    result.unwrap_or_else(|| reply(404, None))
}

/// The scope an admin token's tag names (the inverse of `scope_tag`).
fn scope_from_tag(tag: &str) -> Option<Scope> {
    let (kind, name) = tag.split_once(':')?;
    match kind {
        "repo" => Some(Scope::Repository(name.to_owned())),
        "org" => Some(Scope::Organization(name.to_owned())),
        "ent" => Some(Scope::Enterprise(name.to_owned())),
        _ => None,
    }
}

fn set_not_found() -> Response {
    error(
        404,
        "RunnerScaleSetNotFoundException",
        "No runner scale set found with identifier",
    )
}

fn set_json(state: &State, set: &ScaleSetRecord) -> Value {
    set.json(&state.scale_set_statistics(set.id))
}

fn with_set(state: &State, home: &Scope, id: u64, f: impl FnOnce(&ScaleSetRecord) -> Response) -> Response {
    match state.scale_sets.sets.get(&id).filter(|s| s.home == *home) {
        Some(set) => f(set),
        None => set_not_found(),
    }
}

fn find_set(state: &State, home: &Scope, query: Option<&str>) -> Response {
    let name = query_param(query, "name").unwrap_or_default();
    let group = query_param(query, "runnerGroupId").and_then(|g| g.parse::<u64>().ok());
    let found: Vec<Value> = state
        .scale_sets
        .sets
        .values()
        .filter(|s| s.home == *home && s.name.eq_ignore_ascii_case(&name))
        .filter(|s| group.is_none_or(|g| g == s.group_id))
        .map(|s| set_json(state, s))
        .collect();
    ok(json!({ "count": found.len(), "value": found }))
}

fn labels_of(body: &Value, name: &str) -> Vec<String> {
    let mut labels = vec![name.to_owned()];
    for label in body.get("labels").and_then(Value::as_array).into_iter().flatten() {
        if let Some(l) = label.get("name").and_then(Value::as_str)
            && !labels.iter().any(|own| own.eq_ignore_ascii_case(l))
        {
            labels.push(l.to_owned());
        }
    }
    labels
}

fn create_set(state: &mut State, home: &Scope, body: &Value) -> Response {
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return error(400, "ArgumentException", "name is required");
    };
    let group_id = body.get("runnerGroupId").and_then(Value::as_u64).unwrap_or(1);
    let Some(group_name) = state.group_name(home, group_id) else {
        return error(404, "RunnerGroupNotFoundException", "No runner group found");
    };
    let taken = state
        .scale_sets
        .sets
        .values()
        .any(|s| s.home == *home && s.group_id == group_id && s.name.eq_ignore_ascii_case(name));
    if taken {
        return error(
            409,
            "RunnerScaleSetExistsException",
            "A runner scale set with that name exists",
        );
    }
    let id = state.scale_sets.next_set_id;
    state.scale_sets.next_set_id += 1;
    let record = ScaleSetRecord {
        id,
        name: name.to_owned(),
        home: home.clone(),
        group_id,
        group_name,
        labels: labels_of(body, name),
        disable_update: body
            .pointer("/RunnerSetting/disableUpdate")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        created_on: std::time::SystemTime::now(),
        pending: Vec::new(),
    };
    let answer = set_json(state, &record);
    state.scale_sets.sets.insert(id, record);
    ok(answer)
}

/// `PATCH`: the fields sent replace the stored ones; omitted ones stay (an unconfirmed
/// semantics, contract §13; the client always sends the full desired state).
fn update_set(state: &mut State, home: &Scope, id: u64, body: &Value) -> Response {
    let group = body.get("runnerGroupId").and_then(Value::as_u64);
    let group_name = match group {
        Some(g) => match state.group_name(home, g) {
            Some(name) => Some(name),
            None => return error(404, "RunnerGroupNotFoundException", "No runner group found"),
        },
        None => None,
    };
    let Some(set) = state.scale_sets.sets.get_mut(&id).filter(|s| s.home == *home) else {
        return set_not_found();
    };
    if let Some(name) = body.get("name").and_then(Value::as_str) {
        set.name = name.to_owned();
    }
    if let (Some(g), Some(n)) = (group, group_name) {
        set.group_id = g;
        set.group_name = n;
    }
    if body.get("labels").is_some() {
        set.labels = labels_of(body, &set.name.clone());
    }
    let set = set.clone();
    ok(set_json(state, &set))
}

fn session_json(state: &mut State, id: u64, session: &SessionRecord) -> Value {
    let ttl = state.scale_sets.queue_ttl;
    let token = sign_token("queue", &id.to_string(), &session.id.to_string(), ttl);
    state.scale_sets.tokens.push(token.clone());
    let set = state.scale_sets.sets.get(&id).map(|s| set_json(state, s));
    json!({
        "sessionId": session.id.to_string(), "ownerName": session.owner, "runnerScaleSet": set,
        "messageQueueUrl": format!("{}{BROKER_PATH}queue/{id}", state.root_url),
        "messageQueueAccessToken": token,
        "statistics": state.scale_set_statistics(id),
    })
}

fn create_session(state: &mut State, home: &Scope, id: u64, body: &Value) -> Response {
    let Some(name) = state
        .scale_sets
        .sets
        .get(&id)
        .filter(|s| s.home == *home)
        .map(|s| s.name.clone())
    else {
        return set_not_found();
    };
    let now = Instant::now();
    let lapse = state.scale_sets.session_lapse;
    let live = state
        .scale_sets
        .sessions
        .get(&id)
        .is_some_and(|s| s.alive(now, lapse));
    let conflict = live || state.scale_sets.held(&name, now);
    let status = if conflict { 409 } else { 200 };
    state.scale_sets.session_creates.push(SessionCreate {
        scale_set_id: id,
        status,
        at: now,
    });
    if conflict {
        return error(
            409,
            "RunnerScaleSetSessionConflictException",
            &format!("The scale set {name} already has an active session for owner other."),
        );
    }
    let owner = body
        .get("ownerName")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let session = SessionRecord {
        id: Uuid::new_v4(),
        owner,
        last_seen: now,
        polling: 0,
    };
    state.scale_sets.sessions.insert(id, session.clone());
    ok(session_json(state, id, &session))
}

fn refresh_session(state: &mut State, home: &Scope, id: u64, sid: &str) -> Response {
    let session = state
        .scale_sets
        .sessions
        .get(&id)
        .filter(|s| s.id.to_string() == sid)
        .cloned();
    let on_home = state.scale_sets.sets.get(&id).is_some_and(|s| s.home == *home);
    match session {
        Some(session) if on_home => {
            state.scale_sets.refreshes += 1;
            if let Some(live) = state.scale_sets.sessions.get_mut(&id) {
                live.last_seen = Instant::now();
            }
            ok(session_json(state, id, &session))
        }
        _ => error(
            404,
            "RunnerAdminException",
            "Could not find session ID that doesn't exist in redis",
        ),
    }
}

fn delete_session(state: &mut State, id: u64, sid: &str) -> Response {
    let current = state
        .scale_sets
        .sessions
        .get(&id)
        .is_some_and(|s| s.id.to_string() == sid);
    if current {
        state.scale_sets.sessions.remove(&id);
        reply(204, None)
    } else {
        error(
            400,
            "RunnerScaleSetSessionExpiredException",
            "The session has expired",
        )
    }
}

fn generate_jit(state: &mut State, home: &Scope, id: u64, body: &Value) -> Response {
    let Some(set) = state
        .scale_sets
        .sets
        .get(&id)
        .filter(|s| s.home == *home)
        .cloned()
    else {
        return set_not_found();
    };
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
        return error(400, "ArgumentException", "name is required");
    };
    let registration = Registration {
        home: set.home.clone(),
        name: name.to_owned(),
        group_id: set.group_id,
        labels: set.labels.clone(),
        work_folder: body
            .get("workFolder")
            .and_then(Value::as_str)
            .unwrap_or("_work")
            .to_owned(),
    };
    match state.register_runner(registration) {
        Ok((runner, encoded)) => {
            let runner_id = runner.get("id").and_then(Value::as_u64).unwrap_or(0);
            if let Some(record) = state.runners.get_mut(&runner_id) {
                record.scale_set_id = Some(id);
            }
            ok(json!({
                "runner": { "id": runner_id, "name": name, "runnerScaleSetId": id },
                "encodedJITConfig": encoded,
            }))
        }
        Err(RegisterError::AlreadyExists) => error(
            409,
            "AgentExistsException",
            &format!("A runner with the name {name} already exists."),
        ),
        Err(RegisterError::GroupNotFound) => {
            error(404, "RunnerGroupNotFoundException", "No runner group found")
        }
        Err(RegisterError::GroupFull) => error(400, "AgentPoolFullException", "The runner group is full"),
    }
}

fn agent_json(record: &super::runners::RunnerRecord) -> Value {
    json!({
        "id": record.id, "name": record.name, "runnerScaleSetId": record.scale_set_id.unwrap_or(0),
        "busy": record.job.is_some(), "ephemeral": true,
        "status": record.status(Instant::now()).as_str(),
    })
}

fn find_agent(state: &State, query: Option<&str>) -> Response {
    let name = query_param(query, "agentName").unwrap_or_default();
    let found: Vec<Value> = state
        .runners
        .values()
        .filter(|r| r.name == name)
        .map(agent_json)
        .collect();
    ok(json!({ "count": found.len(), "value": found }))
}

fn remove_agent(state: &mut State, id: u64) -> Response {
    match state.runners.get(&id).map(|r| r.job.is_some()) {
        None => error(404, "AgentNotFoundException", "No agent found"),
        Some(true) => error(400, "JobStillRunningException", "The runner is running a job"),
        Some(false) => {
            state.retire_runner(id);
            reply(204, None)
        }
    }
}

/// The queue token's session, if it is well signed, unexpired and still the set's session.
fn queue_session(state: &State, set: u64, headers: &HeaderMap) -> bool {
    let Some(claims) = bearer(headers).and_then(|t| verify_token(t, "queue")) else {
        return false;
    };
    claims.scope == set.to_string()
        && state
            .scale_sets
            .sessions
            .get(&set)
            .is_some_and(|s| s.id.to_string() == claims.sid)
}

fn unauthorized_queue() -> Response {
    error(
        401,
        "UnauthorizedException",
        "The message queue token is invalid or expired",
    )
}

/// `GET <queue>`: a message at once, or after one arrives, or 202 after the hold.
async fn poll(shared: &Arc<Shared>, set: u64, query: Option<&str>, headers: &HeaderMap) -> Response {
    let last = query_param(query, "lastMessageId")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let max_capacity = headers
        .get("X-ScaleSetMaxCapacity")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let (notify, hold) = {
        let mut state = shared.lock();
        if !queue_session(&state, set, headers) {
            return unauthorized_queue();
        }
        state.scale_sets.polls.push(PollRecord {
            scale_set_id: set,
            last_message_id: last,
            max_capacity,
        });
        touch_session(&mut state, set, 1);
        (state.scale_sets.notify.clone(), state.scale_sets.poll_hold)
    };
    // Counted out even when the client goes away mid-poll (the handler is then dropped).
    let _polling = PollGuard { shared, set };
    hold_poll(shared, set, last, headers, notify, hold).await
}

/// Counts a poll out of its session when dropped.
struct PollGuard<'a> {
    shared: &'a Arc<Shared>,
    set: u64,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        touch_session(&mut self.shared.lock(), self.set, -1);
    }
}

/// Counts a poll in (`+1`) or out (`-1`) of the set's session and marks it seen.
fn touch_session(state: &mut State, set: u64, delta: i32) {
    if let Some(session) = state.scale_sets.sessions.get_mut(&set) {
        session.last_seen = Instant::now();
        session.polling = session.polling.saturating_add_signed(delta);
    }
}

/// Waits for a message until the hold ends.
async fn hold_poll(
    shared: &Arc<Shared>,
    set: u64,
    last: u64,
    headers: &HeaderMap,
    notify: Arc<tokio::sync::Notify>,
    hold: std::time::Duration,
) -> Response {
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut state = shared.lock();
            if !queue_session(&state, set, headers) {
                return unauthorized_queue();
            }
            if let Some(message) = state.next_scale_set_message(set, last) {
                return ok(message);
            }
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => return reply(202, None),
            () = shared.shutdown.cancelled() => return reply(202, None),
        }
    }
}

fn delete_message(shared: &Arc<Shared>, set: u64, id: u64, headers: &HeaderMap) -> Response {
    let mut state = shared.lock();
    if !queue_session(&state, set, headers) {
        return unauthorized_queue();
    }
    if state.delete_scale_set_message(set, id) {
        reply(204, None)
    } else {
        error(404, "MessageNotFoundException", "No such message")
    }
}

fn acquire(shared: &Arc<Shared>, set: u64, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut state = shared.lock();
    if !queue_session(&state, set, headers) {
        return unauthorized_queue();
    }
    let Ok(ids) = serde_json::from_slice::<Vec<u64>>(body) else {
        return error(
            400,
            "ArgumentException",
            "expected a JSON array of runner request ids",
        );
    };
    let acquired = state.acquire_jobs(set, &ids);
    ok(json!({ "count": acquired.len(), "value": acquired }))
}
