//! Everything the fake knows, behind one lock, and the small rules shared by the RPCs
//! (ids, names, time, the creation-rate bucket).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::RpcError;
use super::faults::FaultTable;
use super::images::ImageRecord;
use super::process::ProcessGroups;
use super::sandboxes::SandboxRecord;
use super::types::{FakeModalConfig, RecordedCall};

/// Environment that an empty `environment_name` means and that always exists.
pub(crate) const DEFAULT_ENVIRONMENT: &str = "main";
/// Longest object name Modal accepts (docs/modal.md §2.1).
const MAX_NAME_LEN: usize = 64;

/// Settings fixed at start.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) token_id: String,
    pub(crate) token_secret: String,
    pub(crate) runner_command: Vec<String>,
    pub(crate) image_build_time: Duration,
    pub(crate) list_page_size: usize,
}

/// What the server, the background tasks and the test-facing handle share.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    state: Mutex<State>,
    calls: Mutex<Vec<RecordedCall>>,
    /// Process groups of live sandbox entrypoints, killed as a last resort on drop.
    pub(crate) groups: ProcessGroups,
    /// Cancelled once, on shutdown or drop; every wait selects on it.
    pub(crate) shutdown: CancellationToken,
    /// Background work (builds, sandbox supervisors, log streams) to wait for on shutdown.
    pub(crate) tracker: TaskTracker,
    /// How late `SandboxGetStats` data arrives (costs, issue 13 item 4).
    stats_delay: Mutex<Duration>,
}

impl Shared {
    pub(crate) fn new(config: FakeModalConfig) -> Self {
        let state = State::new(config.create_rate_per_sec, config.create_latency);
        Self {
            settings: Settings {
                token_id: config.token_id,
                token_secret: config.token_secret,
                runner_command: config.runner_command,
                image_build_time: config.image_build_time,
                list_page_size: config.list_page_size.max(1),
            },
            state: Mutex::new(state),
            calls: Mutex::new(Vec::new()),
            groups: ProcessGroups::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            stats_delay: Mutex::new(Duration::ZERO),
        }
    }

    /// How late `SandboxGetStats` data arrives.
    pub(crate) fn stats_delay(&self) -> Duration {
        *lock(&self.stats_delay)
    }

    pub(crate) fn set_stats_delay(&self, delay: Duration) {
        *lock(&self.stats_delay) = delay;
    }

    /// Runs `f` under the state lock. A panic elsewhere cannot leave the state half-updated
    /// in a way that matters to a fake, so poisoning is ignored.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.state))
    }

    pub(crate) fn record(&self, call: RecordedCall) {
        lock(&self.calls).push(call);
    }

    pub(crate) fn calls(&self) -> Vec<RecordedCall> {
        lock(&self.calls).clone()
    }

    /// Sleeps unless the fake shuts down first; false if it did.
    pub(crate) async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A named App.
#[derive(Debug, Clone)]
pub(crate) struct AppRecord {
    pub(crate) environment: String,
    pub(crate) name: String,
}

/// A secret: the variables it adds to a sandbox's environment.
#[derive(Debug)]
pub(crate) struct SecretRecord {
    pub(crate) env: BTreeMap<String, String>,
}

/// The mutable world.
pub(crate) struct State {
    /// Environment name → `en-` id.
    pub(crate) environments: HashMap<String, String>,
    /// App id → record, and (environment, name) → app id.
    pub(crate) apps: HashMap<String, AppRecord>,
    pub(crate) app_names: HashMap<(String, String), String>,
    /// Secret id → record, and (environment, name) → secret id for named secrets.
    pub(crate) secrets: HashMap<String, SecretRecord>,
    pub(crate) secret_names: HashMap<(String, String), String>,
    /// Image id → record, and recipe → the image id that serves it.
    pub(crate) images: HashMap<String, ImageRecord>,
    pub(crate) recipes: HashMap<super::images::Recipe, String>,
    /// When set, new builds fail with this message.
    pub(crate) fail_builds: Option<String>,
    /// Builds performed (cache hits excluded).
    pub(crate) image_builds: usize,
    /// Sandboxes in creation order (so `created_at` increases along the vector).
    pub(crate) sandboxes: Vec<SandboxRecord>,
    pub(crate) sandbox_index: HashMap<String, usize>,
    /// (app id, name) of admitted creates not yet stored, so two cannot take one name.
    pub(crate) reserved_names: HashSet<(String, String)>,
    /// `created_at` of the newest sandbox, to keep the next one strictly later.
    pub(crate) last_created_at: f64,
    pub(crate) peak_running: usize,
    pub(crate) rate: CreationRate,
    pub(crate) create_latency: Duration,
    pub(crate) create_times: Vec<Instant>,
    pub(crate) rate_limit_errors: u64,
    pub(crate) faults: FaultTable,
    /// Volumes (issue 13).
    pub(crate) volumes: super::volumes::Volumes,
}

impl State {
    fn new(create_rate_per_sec: Option<f64>, create_latency: Duration) -> Self {
        let mut environments = HashMap::new();
        environments.insert(DEFAULT_ENVIRONMENT.to_owned(), new_id("en-"));
        Self {
            environments,
            apps: HashMap::new(),
            app_names: HashMap::new(),
            secrets: HashMap::new(),
            secret_names: HashMap::new(),
            images: HashMap::new(),
            recipes: HashMap::new(),
            fail_builds: None,
            image_builds: 0,
            sandboxes: Vec::new(),
            sandbox_index: HashMap::new(),
            reserved_names: HashSet::new(),
            last_created_at: 0.0,
            peak_running: 0,
            rate: CreationRate::new(create_rate_per_sec),
            create_latency,
            create_times: Vec::new(),
            rate_limit_errors: 0,
            faults: FaultTable::default(),
            volumes: Default::default(),
        }
    }

    /// NOT_FOUND unless `app_id` names an App.
    pub(crate) fn require_app(&self, app_id: &str) -> Result<&AppRecord, RpcError> {
        self.apps
            .get(app_id)
            .ok_or_else(|| RpcError::NotFound(format!("App {app_id} not found")))
    }

    pub(crate) fn sandbox(&self, sandbox_id: &str) -> Result<&SandboxRecord, RpcError> {
        self.sandbox_index
            .get(sandbox_id)
            .and_then(|&index| self.sandboxes.get(index))
            .ok_or_else(|| RpcError::NotFound(format!("Sandbox {sandbox_id} not found")))
    }

    pub(crate) fn running_count(&self) -> usize {
        self.sandboxes.iter().filter(|s| s.is_running()).count()
    }

    /// The next `created_at`: now, but strictly after the previous sandbox's.
    pub(crate) fn next_created_at(&mut self) -> f64 {
        let at = unix_now().max(self.last_created_at + 1e-6);
        self.last_created_at = at;
        at
    }
}

/// Workspace-wide token bucket with burst 1: admissions are at least `1 / rate` apart.
#[derive(Debug)]
pub(crate) struct CreationRate {
    per_sec: Option<f64>,
    last_admission: Option<Instant>,
}

impl CreationRate {
    fn new(per_sec: Option<f64>) -> Self {
        Self {
            per_sec,
            last_admission: None,
        }
    }

    pub(crate) fn set(&mut self, per_sec: Option<f64>) {
        self.per_sec = per_sec;
    }

    /// Takes the token if there is one; otherwise the refusal in Modal's wording. A rate
    /// that is not a positive number admits nothing.
    pub(crate) fn try_admit(&mut self, now: Instant) -> Result<(), RpcError> {
        let Some(rate) = self.per_sec else {
            self.last_admission = Some(now);
            return Ok(());
        };
        let interval = (rate > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
            .flatten();
        let admitted = interval.is_some_and(|interval| {
            self.last_admission
                .is_none_or(|last| now.saturating_duration_since(last) >= interval)
        });
        if !admitted {
            return Err(RpcError::ResourceExhausted(format!(
                "Sandbox creation rate limit ({}/s) exceeded",
                format_rate(rate)
            )));
        }
        self.last_admission = Some(now);
        Ok(())
    }
}

/// `5.0` → `"5"`, `2.5` → `"2.5"`.
fn format_rate(rate: f64) -> String {
    if rate.fract() == 0.0 && rate.abs() < 1e15 {
        format!("{rate:.0}")
    } else {
        format!("{rate}")
    }
}

/// `prefix` + 22 random alphanumerics, the shape of every Modal object id.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 22);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(22));
    id
}

/// Seconds since the Unix epoch, as Modal's timestamps are.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `""` → the default environment.
pub(crate) fn environment_key(name: &str) -> String {
    if name.is_empty() {
        DEFAULT_ENVIRONMENT.to_owned()
    } else {
        name.to_owned()
    }
}

/// INVALID_ARGUMENT unless `name` is 1–64 characters of `[a-zA-Z0-9-_.]`.
pub(crate) fn validate_name(kind: &str, name: &str) -> Result<(), RpcError> {
    let charset_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !charset_ok {
        return Err(RpcError::InvalidArgument(format!(
            "Invalid {kind} name {name:?}: names may contain only alphanumeric characters, \
             dashes, periods and underscores, and must be at most {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

/// INVALID_ARGUMENT unless `key` matches `^[a-zA-Z_][a-zA-Z0-9_]*$`.
pub(crate) fn validate_env_key(key: &str) -> Result<(), RpcError> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(RpcError::InvalidArgument(format!(
            "Invalid secret key {key:?}: keys must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
        )));
    }
    Ok(())
}

/// A long-poll `timeout` field (seconds, as sent) as a duration within `[min, max]`.
pub(crate) fn clamp_secs(value: f32, min: f64, max: f64) -> Duration {
    let value = f64::from(value);
    let value = if value.is_nan() {
        min
    } else {
        value.clamp(min, max)
    };
    Duration::from_secs_f64(value)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn names_follow_modals_rules() {
        for ok in ["a", "gha-runners", "x.y_z-1", &"a".repeat(64)] {
            assert!(validate_name("App", ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "has space", "slash/x", "ünï", &"a".repeat(65)] {
            assert!(validate_name("App", bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn env_keys_follow_modals_rules() {
        for ok in ["A", "_x", "ACTIONS_RUNNER_INPUT_JITCONFIG", "a1"] {
            assert!(validate_env_key(ok).is_ok(), "{ok} should be valid");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(validate_env_key(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn the_bucket_admits_one_creation_per_interval() {
        let start = Instant::now();
        let mut rate = CreationRate::new(Some(5.0));
        assert!(rate.try_admit(start).is_ok());
        let refused = rate.try_admit(start + Duration::from_millis(199));
        assert_eq!(
            refused,
            Err(RpcError::ResourceExhausted(
                "Sandbox creation rate limit (5/s) exceeded".into()
            ))
        );
        assert!(rate.try_admit(start + Duration::from_millis(200)).is_ok());
    }

    #[test]
    fn a_non_positive_rate_admits_nothing_and_none_admits_everything() {
        let now = Instant::now();
        assert!(CreationRate::new(Some(0.0)).try_admit(now).is_err());
        assert!(CreationRate::new(Some(f64::NAN)).try_admit(now).is_err());
        let mut unlimited = CreationRate::new(None);
        assert!(unlimited.try_admit(now).is_ok() && unlimited.try_admit(now).is_ok());
    }

    #[test]
    fn ids_have_modals_shape() {
        let id = new_id("sb-");
        assert_eq!(id.len(), 25);
        assert!(id[3..].chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
