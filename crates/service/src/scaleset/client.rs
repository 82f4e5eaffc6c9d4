//! The Actions-service client of the scale-set job source: the auth chain (contract §1),
//! scale set get-or-create (§4), message sessions (§5), the message queue (§6), job
//! acquisition (§7), JIT configs (§8) and runner removal (§9).
//!
//! Retries are deliberate, not blanket: reads, `PATCH` and `DELETE` are retried on transient
//! failures a few times; the `POST`s that create something (scale set, session,
//! `generatejitconfig`, `acquirejobs`) are sent once, since a retried create is how
//! duplicates happen (contract §11 notes the SDK's blanket retries cause exactly that).
//! A 401 on an admin call drops the cached admin token and tries once more.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{ScaleSetError, classify};
use super::types::{
    Acquired, AdminConnection, Agent, JitBody, JobMessage, List, QueueMessage, QueueMessageBody, ScaleSet,
    ScaleSetJit, Session, SessionBody,
};
use super::url::config_url;
use crate::github::{GitHub, RunnerHome};

/// The API version every Actions-service call names (contract §2).
const API_VERSION: &str = "6.0-preview";
/// The admin token is renewed when it has less than this left (contract §1: the SDK's 60 s).
const ADMIN_MARGIN_SECS: u64 = 60;
/// When an admin token carries no readable `exp`, it is trusted this long: the safe
/// reading of an undocumented token is "short-lived".
const UNKNOWN_ADMIN_LIFETIME_SECS: u64 = 120;
/// Attempts of `runner-registration` when it answers 401/403 (contract §1: retried by
/// every client, reason undocumented).
const REGISTRATION_ATTEMPTS: u32 = 5;
/// Attempts of an idempotent call that fails transiently.
const IDEMPOTENT_ATTEMPTS: u32 = 3;

/// What the client needs besides the GitHub REST client.
#[derive(Debug, Clone)]
pub struct ScaleSetClientConfig {
    /// Where the scale set lives: the scope its config URL names.
    pub home: RunnerHome,
    /// Timeout of an ordinary call.
    pub timeout: Duration,
    /// Timeout of a message poll: must exceed the service's long-poll hold (about 50 s).
    pub poll_timeout: Duration,
    /// The session's `ownerName` (the host name, for the service's logs).
    pub owner: String,
}

/// The Actions service's base URL and admin token, with the token's expiry.
#[derive(Clone)]
struct Admin {
    base: Url,
    token: SecretString,
    expires_at: u64,
}

struct Inner {
    http: reqwest::Client,
    github: GitHub,
    config: ScaleSetClientConfig,
    config_url: String,
    registration_url: Url,
    admin: tokio::sync::Mutex<Option<Admin>>,
}

/// A client of one scope's Actions service; cheap to clone.
#[derive(Clone)]
pub struct ScaleSetClient {
    inner: Arc<Inner>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `exp` claim of a JWT, read without verifying it (the client cannot verify it and
/// only needs to know when to renew).
pub(super) fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_u64()
}

/// Bodies may start with a UTF-8 BOM (contract §2).
fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ScaleSetError> {
    serde_json::from_slice(strip_bom(bytes)).map_err(|e| ScaleSetError::Decode(e.to_string()))
}

fn transport(e: &reqwest::Error) -> ScaleSetError {
    // Only the kind of failure: a reqwest error's text may carry the URL, never a token,
    // but the message stays short either way.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    ScaleSetError::Transport(kind.to_owned())
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// An answer: status and body.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn ok_or_classify(self) -> Result<Reply, ScaleSetError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(classify(self.status.as_u16(), &self.body, None))
        }
    }
}

impl ScaleSetClient {
    /// A client for the scale sets of `config.home`, reaching GitHub through `github`.
    pub fn new(github: GitHub, config: ScaleSetClientConfig) -> Result<ScaleSetClient, ScaleSetError> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("modal-github-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| transport(&e))?;
        let api = github.api_base().clone();
        let config_url = config_url(&api, &config.home);
        let mut registration_url = api;
        if let Ok(mut path) = registration_url.path_segments_mut() {
            path.pop_if_empty().extend(["actions", "runner-registration"]);
        }
        Ok(ScaleSetClient {
            inner: Arc::new(Inner {
                http,
                github,
                config,
                config_url,
                registration_url,
                admin: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The config URL the scale set is registered with.
    pub fn config_url(&self) -> &str {
        &self.inner.config_url
    }

    /// The admin connection, renewed (registration token, then `runner-registration`)
    /// when it has less than a minute left.
    async fn admin(&self) -> Result<Admin, ScaleSetError> {
        let mut cached = self.inner.admin.lock().await;
        if let Some(admin) = cached.as_ref()
            && admin.expires_at > now_secs() + ADMIN_MARGIN_SECS
        {
            return Ok(admin.clone());
        }
        let admin = self.connect().await?;
        *cached = Some(admin.clone());
        Ok(admin)
    }

    async fn forget_admin(&self) {
        *self.inner.admin.lock().await = None;
    }

    /// Steps b and c of the auth chain (contract §1).
    async fn connect(&self) -> Result<Admin, ScaleSetError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let registration = self
                .inner
                .github
                .registration_token(&self.inner.config.home)
                .await?;
            let body = json!({ "url": self.inner.config_url, "runner_event": "register" });
            let response = self
                .inner
                .http
                .post(self.inner.registration_url.clone())
                .timeout(self.inner.config.timeout)
                .header(
                    AUTHORIZATION,
                    format!("RemoteAuth {}", registration.expose_secret()),
                )
                .header(CONTENT_TYPE, "application/json")
                .json(&body)
                .send()
                .await
                .map_err(|e| transport(&e))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|e| transport(&e))?;
            if status.is_success() {
                return Self::admin_from(&bytes);
            }
            let refused = matches!(status.as_u16(), 401 | 403);
            if !refused || attempt >= REGISTRATION_ATTEMPTS {
                let message = String::from_utf8_lossy(strip_bom(&bytes))
                    .chars()
                    .take(300)
                    .collect();
                return Err(ScaleSetError::Registration {
                    status: status.as_u16(),
                    message,
                });
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt.min(5))).await;
        }
    }

    fn admin_from(bytes: &[u8]) -> Result<Admin, ScaleSetError> {
        let connection: AdminConnection = decode(bytes)?;
        if connection.url.is_empty() || connection.token.is_empty() {
            return Err(ScaleSetError::Decode(
                "runner-registration answered an empty service URL or token".into(),
            ));
        }
        let mut base = Url::parse(&connection.url).map_err(|e| ScaleSetError::Decode(e.to_string()))?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let expires_at =
            jwt_exp(&connection.token).unwrap_or_else(|| now_secs() + UNKNOWN_ADMIN_LIFETIME_SECS);
        Ok(Admin {
            base,
            token: SecretString::from(connection.token),
            expires_at,
        })
    }

    /// One admin call; a 401 renews the admin token and tries once more, and idempotent
    /// methods retry transient failures.
    async fn admin_call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, ScaleSetError> {
        let idempotent = method != Method::POST;
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let admin = self.admin().await?;
            let result = self.send_admin(&admin, method.clone(), path, query, body).await;
            match result {
                Ok(reply) if reply.status == StatusCode::UNAUTHORIZED && !renewed => {
                    renewed = true;
                    self.forget_admin().await;
                }
                Ok(reply) if idempotent && attempt < IDEMPOTENT_ATTEMPTS && is_transient(reply.status) => {
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                Err(_) if idempotent && attempt < IDEMPOTENT_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn send_admin(
        &self,
        admin: &Admin,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, ScaleSetError> {
        let mut url = admin
            .base
            .join(path)
            .map_err(|e| ScaleSetError::Decode(e.to_string()))?;
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("api-version", API_VERSION);
        }
        let mut request = self
            .inner
            .http
            .request(method, url)
            .timeout(self.inner.config.timeout)
            .header(AUTHORIZATION, format!("Bearer {}", admin.token.expose_secret()))
            .header(CONTENT_TYPE, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| transport(&e))?.to_vec();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(ScaleSetError::Server {
                status: status.as_u16(),
                retry_after: after,
            });
        }
        Ok(Reply { status, body })
    }

    /// The scale set `name` in runner group `group_id`, created if absent and updated when
    /// its labels differ from `labels` (the name comes first, as clients send it).
    pub async fn ensure_scale_set(
        &self,
        name: &str,
        group_id: u64,
        labels: &[String],
    ) -> Result<ScaleSet, ScaleSetError> {
        let wanted = desired_labels(name, labels);
        let label_json: Vec<Value> = wanted
            .iter()
            .map(|l| json!({ "name": l, "type": "System" }))
            .collect();
        if let Some(existing) = self.find_scale_set(name, group_id).await? {
            let current = existing.label_names();
            let want: Vec<String> = wanted.iter().map(|l| l.to_ascii_lowercase()).collect();
            if current == want && existing.runner_group_id == group_id {
                return Ok(existing);
            }
            let patch = json!({ "name": name, "runnerGroupId": group_id, "labels": label_json });
            let path = format!("_apis/runtime/runnerscalesets/{}", existing.id);
            let reply = self.admin_call(Method::PATCH, &path, &[], Some(&patch)).await?;
            return decode(&reply.ok_or_classify()?.body);
        }
        let body = json!({
            "name": name, "runnerGroupId": group_id, "labels": label_json,
            "RunnerSetting": { "disableUpdate": true },
        });
        let reply = self
            .admin_call(Method::POST, "_apis/runtime/runnerscalesets", &[], Some(&body))
            .await?;
        decode(&reply.ok_or_classify()?.body)
    }

    /// The scale set `name` as `ensure_scale_set` would find it, or `None` (it would be
    /// created): only reads, so `check` can ask without changing anything.
    pub async fn find_scale_set(&self, name: &str, group_id: u64) -> Result<Option<ScaleSet>, ScaleSetError> {
        let group = group_id.to_string();
        let mut found = self
            .find_scale_sets(&[("runnerGroupId", &group), ("name", name)])
            .await?;
        if found.is_empty() {
            // Moved to another group since it was made? Names are unique per group, so a
            // lookup in the new group misses it; look by name alone (whether the service
            // supports that is unconfirmed: a refusal just means "create").
            found = self.find_scale_sets(&[("name", name)]).await.unwrap_or_default();
        }
        if found.len() > 1 {
            return Err(ScaleSetError::Decode(format!(
                "{} scale sets are named {name}",
                found.len()
            )));
        }
        Ok(found.into_iter().next())
    }

    /// The scale sets a `GET runnerscalesets` with `query` lists.
    async fn find_scale_sets(&self, query: &[(&str, &str)]) -> Result<Vec<ScaleSet>, ScaleSetError> {
        let reply = self
            .admin_call(Method::GET, "_apis/runtime/runnerscalesets", query, None)
            .await?;
        let list: List<ScaleSet> = decode(&reply.ok_or_classify()?.body)?;
        Ok(list.value)
    }

    /// Opens the message session of scale set `id`: `SessionConflict` when another holds it.
    pub async fn create_session(&self, id: u64) -> Result<Session, ScaleSetError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}/sessions");
        let body = json!({ "ownerName": self.inner.config.owner });
        let reply = self.admin_call(Method::POST, &path, &[], Some(&body)).await?;
        session_from(&reply.ok_or_classify()?.body)
    }

    /// Renews the session's queue token; `SessionGone` when the service forgot it.
    pub async fn refresh_session(&self, id: u64, session: &Session) -> Result<Session, ScaleSetError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}/sessions/{}", session.id);
        let reply = self.admin_call(Method::PATCH, &path, &[], None).await?;
        match reply.ok_or_classify() {
            Ok(reply) => session_from(&reply.body),
            Err(ScaleSetError::NotFound { .. }) => Err(ScaleSetError::SessionGone),
            Err(e) => Err(e),
        }
    }

    /// Closes the session so a successor need not wait for it to lapse. An already
    /// expired session (400) counts as closed.
    pub async fn delete_session(&self, id: u64, session: &Session) -> Result<(), ScaleSetError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}/sessions/{}", session.id);
        let reply = self.admin_call(Method::DELETE, &path, &[], None).await?;
        match reply.ok_or_classify() {
            Ok(_) | Err(ScaleSetError::NotFound { .. }) => Ok(()),
            Err(ScaleSetError::Rejected { status: 400, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Long-polls the queue for the next message after `last` (`None`: the hold ended
    /// without one). `max_capacity` is the scale set's maximum runners (`MAX_RUNNERS`).
    pub async fn get_message(
        &self,
        session: &Session,
        last: u64,
        max_capacity: usize,
    ) -> Result<Option<QueueMessage>, ScaleSetError> {
        let mut url = Url::parse(&session.queue_url).map_err(|e| ScaleSetError::Decode(e.to_string()))?;
        if last > 0 {
            url.query_pairs_mut()
                .append_pair("lastMessageId", &last.to_string());
        }
        let response = self
            .inner
            .http
            .get(url)
            .timeout(self.inner.config.poll_timeout)
            .header(ACCEPT, format!("application/json; api-version={API_VERSION}"))
            .header(
                AUTHORIZATION,
                format!("Bearer {}", session.queue_token.expose_secret()),
            )
            .header("X-ScaleSetMaxCapacity", max_capacity.to_string())
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        match status.as_u16() {
            202 | 204 => Ok(None),
            200 => parse_message(&body),
            code => Err(classify(code, &body, after)),
        }
    }

    /// Deletes (acknowledges) message `id`. A 404 means it is already gone, which is what
    /// was wanted.
    pub async fn delete_message(&self, session: &Session, id: u64) -> Result<(), ScaleSetError> {
        let mut url = Url::parse(&session.queue_url).map_err(|e| ScaleSetError::Decode(e.to_string()))?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(&id.to_string());
        }
        let response = self
            .inner
            .http
            .delete(url)
            .timeout(self.inner.config.timeout)
            .header(
                AUTHORIZATION,
                format!("Bearer {}", session.queue_token.expose_secret()),
            )
            .header(CONTENT_TYPE, "application/json")
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        match status.as_u16() {
            200..=299 | 404 => Ok(()),
            code => Err(classify(code, &body, None)),
        }
    }

    /// `acquirejobs` with the queue token: the request ids the scale set now holds.
    pub async fn acquire_jobs(
        &self,
        id: u64,
        session: &Session,
        requests: &[u64],
    ) -> Result<Vec<u64>, ScaleSetError> {
        let admin = self.admin().await?;
        let mut url = admin
            .base
            .join(&format!("_apis/runtime/runnerscalesets/{id}/acquirejobs"))
            .map_err(|e| ScaleSetError::Decode(e.to_string()))?;
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        let response = self
            .inner
            .http
            .post(url)
            .timeout(self.inner.config.timeout)
            .header(
                AUTHORIZATION,
                format!("Bearer {}", session.queue_token.expose_secret()),
            )
            .header(CONTENT_TYPE, "application/json")
            .json(&requests)
            .send()
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        if !status.is_success() {
            return Err(classify(status.as_u16(), &body, None));
        }
        let acquired: Acquired = decode(&body)?;
        Ok(acquired.value)
    }

    /// Registers runner `name` in scale set `id`; sent once (`AgentExists` on a clash).
    pub async fn generate_jit_config(&self, id: u64, name: &str) -> Result<ScaleSetJit, ScaleSetError> {
        let path = format!("_apis/runtime/runnerscalesets/{id}/generatejitconfig");
        let body = json!({ "name": name, "workFolder": "_work" });
        let reply = self.admin_call(Method::POST, &path, &[], Some(&body)).await?;
        let jit: JitBody = decode(&reply.ok_or_classify()?.body)?;
        Ok(ScaleSetJit {
            runner_id: jit.runner.id,
            encoded: SecretString::from(jit.encoded_jit_config),
        })
    }

    /// The runner registered as `name`, if any.
    pub async fn runner_by_name(&self, name: &str) -> Result<Option<Agent>, ScaleSetError> {
        let reply = self
            .admin_call(
                Method::GET,
                "_apis/distributedtask/pools/0/agents",
                &[("agentName", name)],
                None,
            )
            .await?;
        let list: List<Agent> = decode(&reply.ok_or_classify()?.body)?;
        Ok(list.value.into_iter().find(|a| a.name == name))
    }

    /// Runner `id`, or `None` if it is gone.
    pub async fn get_runner(&self, id: u64) -> Result<Option<Agent>, ScaleSetError> {
        let path = format!("_apis/distributedtask/pools/0/agents/{id}");
        let reply = self.admin_call(Method::GET, &path, &[], None).await?;
        match reply.ok_or_classify() {
            Ok(reply) => decode(&reply.body).map(Some),
            Err(ScaleSetError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes runner `id`: `Ok(true)` removed, `Ok(false)` already gone, `RunnerBusy`
    /// while it runs a job.
    pub async fn remove_runner(&self, id: u64) -> Result<bool, ScaleSetError> {
        let path = format!("_apis/distributedtask/pools/0/agents/{id}");
        let reply = self.admin_call(Method::DELETE, &path, &[], None).await?;
        match reply.ok_or_classify() {
            Ok(_) => Ok(true),
            Err(ScaleSetError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn is_transient(status: StatusCode) -> bool {
    status.as_u16() == 429 || (status.is_server_error() && status.as_u16() != 501)
}

/// The scale set's labels: its name first, then the extra ones, each once.
pub(super) fn desired_labels(name: &str, extra: &[String]) -> Vec<String> {
    let mut labels = vec![name.to_owned()];
    for label in extra {
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(label)) {
            labels.push(label.clone());
        }
    }
    labels
}

/// A session answer, validated: the degraded answers of contract §5 (empty queue URL or
/// token, no statistics) are errors the caller retries, not a half-working session.
pub(super) fn session_from(bytes: &[u8]) -> Result<Session, ScaleSetError> {
    let body: SessionBody = decode(bytes)?;
    if body.session_id.is_empty()
        || body.message_queue_url.is_empty()
        || body.message_queue_access_token.is_empty()
    {
        return Err(ScaleSetError::Decode(
            "the session has no id, queue URL or queue token".into(),
        ));
    }
    let statistics = body
        .statistics
        .ok_or_else(|| ScaleSetError::Decode("the session has no statistics".into()))?;
    Ok(Session {
        id: body.session_id,
        queue_url: body.message_queue_url,
        queue_token: SecretString::from(body.message_queue_access_token),
        statistics,
    })
}

/// A 200 answer of the queue. An empty body (a known service bug, contract §6) is "no
/// message"; an unknown message type carries no jobs we understand, and is returned
/// empty so it is acknowledged rather than redelivered forever.
pub(super) fn parse_message(bytes: &[u8]) -> Result<Option<QueueMessage>, ScaleSetError> {
    let bytes = strip_bom(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let envelope: QueueMessageBody = decode(bytes)?;
    let jobs: Vec<JobMessage> = if envelope.message_type != "RunnerScaleSetJobMessages" {
        tracing::warn!(
            message_type = %envelope.message_type,
            message_id = envelope.message_id,
            "unknown scale set message type; acknowledged without effect"
        );
        Vec::new()
    } else if envelope.body.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&envelope.body).map_err(|e| ScaleSetError::Decode(e.to_string()))?
    };
    Ok(Some(QueueMessage {
        id: envelope.message_id,
        jobs,
        statistics: envelope.statistics,
    }))
}
