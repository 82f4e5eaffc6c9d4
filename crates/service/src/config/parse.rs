//! Value parsers for the `serve` options. Each one turns the text of one variable (or its
//! flag) into its type; its error is a [`ConfigError`] naming the variable, which clap shows
//! after the flag (`invalid value '0' for '--max-runners <N>': MAX_RUNNERS: must be greater
//! than 0`) and keeps as the error's source. The same functions check the values that are
//! parsed later, in `Settings::from_args`.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use super::{ConfigError, err};
use crate::domain::{NamePrefix, RepoAllowList};
use crate::store::{Backend, Durability};

/// The largest number of seconds (or hours) a duration option takes: beyond it, a typo.
const MAX_SECONDS: f64 = 1e7;

/// A value parser for `var` from a check that says what is wrong.
pub(super) fn checked<T>(
    var: &'static str,
    check: impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
) -> impl TypedValueParser<Value = T>
where
    T: Clone + Send + Sync + 'static,
{
    move |raw: &str| check(raw).map_err(|message| err(var, message))
}

/// A number of any size (`PORT`, `SANDBOX_MAX_GPUS`).
pub fn number<T>(var: &'static str) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
{
    checked(var, parse_number)
}

/// A number greater than zero (counts, ids, sizes).
pub fn positive<T>(var: &'static str) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Default + PartialOrd + Clone + Send + Sync + 'static,
{
    checked(var, parse_positive)
}

/// Seconds, fractions allowed (intervals in tests run well below a second); 0 allowed.
pub fn seconds(var: &'static str) -> impl TypedValueParser<Value = Duration> {
    checked(var, |raw| parse_duration(raw, 1.0, "seconds"))
}

/// Seconds greater than zero.
pub fn nonzero_seconds(var: &'static str) -> impl TypedValueParser<Value = Duration> {
    checked(var, |raw| {
        let d = parse_duration(raw, 1.0, "seconds")?;
        if d.is_zero() {
            return Err("must be greater than 0".into());
        }
        Ok(d)
    })
}

/// Hours, fractions allowed.
pub fn hours(var: &'static str) -> impl TypedValueParser<Value = Duration> {
    checked(var, |raw| parse_duration(raw, 3600.0, "hours"))
}

/// `SANDBOX_TIMEOUT_SECS`: whole seconds, 1 to Modal's 24 h maximum.
pub fn sandbox_timeout() -> impl TypedValueParser<Value = Duration> {
    checked("SANDBOX_TIMEOUT_SECS", |raw| {
        let secs: u64 = parse_number(raw)?;
        if secs == 0 || secs > 86_400 {
            return Err("must be between 1 and 86400 (Modal's 24 h maximum)".into());
        }
        Ok(Duration::from_secs(secs))
    })
}

/// `STORE_RETENTION_DAYS`: days, at least the 3 in which GitHub can redeliver a webhook.
pub fn retention_days() -> impl TypedValueParser<Value = Duration> {
    checked("STORE_RETENTION_DAYS", |raw| {
        let days: f64 = parse_number(raw)?;
        if !(days.is_finite() && days >= 3.0) {
            return Err("must be at least 3 (GitHub redelivers webhooks for 3 days)".into());
        }
        Duration::try_from_secs_f64(days * 86_400.0).map_err(|_| format!("`{raw}` is too many days"))
    })
}

/// A rate or limit where 0 turns the limiting off (`GITHUB_JIT_LIMIT_PER_MIN`,
/// `MODAL_CREATE_RATE`).
pub fn rate(var: &'static str) -> impl TypedValueParser<Value = f64> {
    checked(var, |raw| {
        let n: f64 = parse_number(raw)?;
        if !(n.is_finite() && n >= 0.0) {
            return Err("must be 0 (no limit) or a positive number".into());
        }
        Ok(n)
    })
}

/// A positive number of CPU cores, fractions allowed.
pub fn cores(var: &'static str) -> impl TypedValueParser<Value = f64> {
    checked(var, |raw| {
        let n: f64 = parse_number(raw)?;
        if !(n.is_finite() && n > 0.0) {
            return Err("must be a positive number of cores".into());
        }
        Ok(n)
    })
}

/// `MAX_CONNECTIONS`: positive, and far below what a semaphore or the file descriptors of
/// one process can hold.
pub fn max_connections() -> impl TypedValueParser<Value = usize> {
    checked("MAX_CONNECTIONS", |raw| {
        let n: usize = parse_positive(raw)?;
        if n > 1_000_000 {
            return Err("must be at most 1000000".into());
        }
        Ok(n)
    })
}

/// A yes/no option. Only these spellings: a typo must not turn a safety switch on.
pub fn boolean(var: &'static str) -> impl TypedValueParser<Value = bool> {
    checked(var, |raw| match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("`{raw}` is not true or false")),
    })
}

/// `BIND_ADDRESS`.
pub fn ip() -> impl TypedValueParser<Value = IpAddr> {
    checked("BIND_ADDRESS", |raw| {
        raw.trim()
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address"))
    })
}

/// `RUNNER_LABEL`: one label, compared without case later.
pub fn label() -> impl TypedValueParser<Value = String> {
    checked("RUNNER_LABEL", |raw| {
        let label = raw.trim();
        if label.is_empty() || label.contains(',') {
            return Err("must be one non-empty label without commas".into());
        }
        Ok(label.to_string())
    })
}

/// `SCALE_SET_NAME`: one label (workflows name it in `runs-on`), without whitespace.
pub fn scale_set_name() -> impl TypedValueParser<Value = String> {
    checked("SCALE_SET_NAME", |raw| {
        let name = raw.trim();
        if name.is_empty() || name.contains(',') || name.chars().any(char::is_whitespace) {
            return Err("must be one non-empty name without commas or spaces".into());
        }
        Ok(name.to_string())
    })
}

/// `RUNNER_NAME_PREFIX`.
pub fn name_prefix() -> impl TypedValueParser<Value = NamePrefix> {
    checked("RUNNER_NAME_PREFIX", NamePrefix::parse)
}

/// `ALLOWED_REPOS`: a comma-separated list; blank allows every repository.
pub fn allow_list() -> impl TypedValueParser<Value = RepoAllowList> {
    checked("ALLOWED_REPOS", |raw| {
        RepoAllowList::parse(raw).map_err(|e| e.to_string())
    })
}

/// `DATABASE_URL`: SQLite (one replica) or PostgreSQL (any number of replicas).
pub fn database_url() -> impl TypedValueParser<Value = String> {
    checked("DATABASE_URL", |raw| match Backend::of_url(raw) {
        Some(_) => Ok(raw.to_string()),
        None => Err(
            "must be a sqlite: URL (sqlite://PATH or sqlite::memory:) or a postgres:// URL \
             (postgres://USER:PASSWORD@HOST:PORT/DATABASE)"
                .into(),
        ),
    })
}

/// `LEADER_LEASE_SECS`: at least 3 seconds (it is renewed every third of it), at most an hour.
pub fn lease_secs() -> impl TypedValueParser<Value = Duration> {
    checked("LEADER_LEASE_SECS", |raw| {
        let d = parse_duration(raw, 1.0, "seconds")?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err("must be between 1 and 3600 seconds".into());
        }
        Ok(d)
    })
}

/// `REPLICA_ID`: names this replica in the lease, `status` and `/metrics`; a label value,
/// so letters, digits, `.`, `-`, `_` and `:` only, 1 to 100 of them.
pub fn replica_id() -> impl TypedValueParser<Value = String> {
    checked("REPLICA_ID", |raw| {
        let ok = !raw.is_empty()
            && raw.len() <= 100
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if ok {
            Ok(raw.to_string())
        } else {
            Err("must be 1 to 100 letters, digits, '.', '-', '_' or ':'".into())
        }
    })
}

/// `STORE_SYNC`: the store's durability, named here so the store needs no command-line
/// library. clap lists the two values in `--help` and refuses any other.
pub fn durability() -> impl TypedValueParser<Value = Durability> {
    PossibleValuesParser::new([
        PossibleValue::new("normal").help(
            "An answered webhook survives the service being killed; a power cut can lose the \
             last commits, which the reconciler then recovers from GitHub",
        ),
        PossibleValue::new("full").help("An answered webhook survives a power cut too: one fsync per commit"),
    ])
    .map(|name| match name.as_str() {
        "full" => Durability::Full,
        _ => Durability::Normal,
    })
}

pub(super) fn parse_number<T: FromStr>(raw: &str) -> Result<T, String> {
    raw.trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a valid number"))
}

pub(super) fn parse_positive<T: FromStr + Default + PartialOrd>(raw: &str) -> Result<T, String> {
    let n: T = parse_number(raw)?;
    if n <= T::default() {
        return Err("must be greater than 0".into());
    }
    Ok(n)
}

/// A duration of at most `MAX_SECONDS` units of `unit_secs` seconds each.
fn parse_duration(raw: &str, unit_secs: f64, unit: &str) -> Result<Duration, String> {
    let n: f64 = parse_number(raw)?;
    if !n.is_finite() || !(0.0..=MAX_SECONDS).contains(&n) {
        return Err(format!("`{raw}` is not a duration in {unit}"));
    }
    Ok(Duration::from_secs_f64(n * unit_secs))
}

/// Applies a value check to an optional value that is unset when blank (an empty variable
/// is how a deployment template leaves an option out).
pub(super) fn optional<T>(
    var: &'static str,
    raw: Option<&str>,
    check: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    raw.map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| check(r).map_err(|m| err(var, m)))
        .transpose()
}
