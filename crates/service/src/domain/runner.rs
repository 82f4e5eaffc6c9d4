use std::fmt;

use super::JobId;

/// GitHub refuses runner names longer than 64 characters (docs/github.md §2.1).
pub const MAX_RUNNER_NAME: usize = 64;

/// Longest job id (`u64::MAX` has 20 digits) plus two dashes plus a 4-digit attempt.
const SUFFIX_ROOM: usize = 1 + 20 + 1 + 4;

/// `RUNNER_NAME_PREFIX`, checked so that every name built from it stays within 64 characters
/// and uses only characters GitHub, Modal and file systems all accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePrefix(String);

impl NamePrefix {
    pub fn parse(prefix: &str) -> Result<NamePrefix, String> {
        if prefix.is_empty() || prefix.len() > MAX_RUNNER_NAME - SUFFIX_ROOM {
            return Err(format!(
                "must be 1 to {} characters",
                MAX_RUNNER_NAME - SUFFIX_ROOM
            ));
        }
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("may hold only letters, digits, `-` and `_`".into());
        }
        Ok(NamePrefix(prefix.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The unique name of one runner: `<prefix>-<job id>-<attempt>`.
///
/// The name is derived from the job the runner was made for and the attempt number, so a
/// retried step after a crash computes the same name and finds what the first try made
/// (the sandbox carries the same name) instead of making a second one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunnerName(String);

impl RunnerName {
    pub fn for_job(prefix: &NamePrefix, job: JobId, attempt: u32) -> RunnerName {
        RunnerName(format!("{}-{}-{}", prefix.as_str(), job.0, attempt))
    }

    /// Checks a name read back from somewhere a path will be built from (the local
    /// backend's metadata files): only the characters a name built from a `NamePrefix`
    /// can hold, so it can never hold a path separator or `..`.
    pub fn parse(name: &str) -> Result<RunnerName, InvalidRunnerName> {
        let valid = !name.is_empty()
            && name.len() <= MAX_RUNNER_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(RunnerName(name.to_string()))
        } else {
            Err(InvalidRunnerName)
        }
    }

    /// Wraps a name read back from the store or from GitHub.
    pub fn from_stored(name: String) -> RunnerName {
        RunnerName(name)
    }

    /// Recovers `(job, attempt)` from a name this deployment made, or `None` if the name is
    /// not ours. The reaper uses it to recognise its own orphans.
    pub fn parse_ours(prefix: &NamePrefix, name: &str) -> Option<(JobId, u32)> {
        let rest = name.strip_prefix(prefix.as_str())?.strip_prefix('-')?;
        let (job, attempt) = rest.split_once('-')?;
        if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((JobId(job.parse().ok()?), attempt.parse().ok()?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A string that cannot be a runner name. The text leaves the string out: it may be
/// anything a file held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a runner name (1 to {MAX_RUNNER_NAME} letters, digits, `-` and `_`)")]
pub struct InvalidRunnerName;

impl fmt::Display for RunnerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A runner's life cycle in the store.
///
/// `Pending` (planned, nothing done yet) → `Registering` (a JIT request may be in flight) →
/// `Registered` (GitHub knows it; the sandbox is being made) → `Running` (the sandbox
/// exists) → `Done`. `Retiring` marks a surplus runner that the reaper must deregister and
/// stop; `Failed` is terminal with a reason. Whether a running runner is busy is not a
/// state: it is derived from the job whose `runner_name` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunnerState {
    Pending,
    Registering,
    Registered,
    Running,
    Retiring,
    Done,
    Failed,
}

impl RunnerState {
    pub const ALL: [RunnerState; 7] = [
        RunnerState::Pending,
        RunnerState::Registering,
        RunnerState::Registered,
        RunnerState::Running,
        RunnerState::Retiring,
        RunnerState::Done,
        RunnerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Pending => "pending",
            RunnerState::Registering => "registering",
            RunnerState::Registered => "registered",
            RunnerState::Running => "running",
            RunnerState::Retiring => "retiring",
            RunnerState::Done => "done",
            RunnerState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RunnerState> {
        RunnerState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the runner still holds capacity (counts toward `MAX_RUNNERS`).
    pub fn is_live(self) -> bool {
        !matches!(self, RunnerState::Done | RunnerState::Failed)
    }
}

impl fmt::Display for RunnerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_name_fits_githubs_limit() {
        let prefix = NamePrefix::parse(&"p".repeat(38)).expect("valid prefix");
        let name = RunnerName::for_job(&prefix, JobId(u64::MAX), 9999);
        assert!(name.as_str().len() <= MAX_RUNNER_NAME, "{}", name.as_str());
    }

    #[test]
    fn a_prefix_that_could_overflow_the_limit_is_rejected() {
        assert!(NamePrefix::parse(&"p".repeat(39)).is_err());
        assert!(NamePrefix::parse("").is_err());
        assert!(NamePrefix::parse("bad/prefix").is_err());
    }

    #[test]
    fn names_we_made_parse_back_to_job_and_attempt() {
        let prefix = NamePrefix::parse("modal").expect("valid");
        let name = RunnerName::for_job(&prefix, JobId(12_877_621_891), 3);
        assert_eq!(name.as_str(), "modal-12877621891-3");
        assert_eq!(
            RunnerName::parse_ours(&prefix, name.as_str()),
            Some((JobId(12_877_621_891), 3))
        );
    }

    #[test]
    fn names_of_other_runners_are_not_ours() {
        let prefix = NamePrefix::parse("modal").expect("valid");
        for other in ["modal", "modalx-1-1", "modal-abc-1", "gpu-1-1", "modal--1"] {
            assert_eq!(RunnerName::parse_ours(&prefix, other), None, "{other}");
        }
    }

    #[test]
    fn only_names_that_cannot_leave_a_directory_parse() {
        for ok in ["modal-12877621891-3", "r-1-1", "a_b"] {
            assert_eq!(RunnerName::parse(ok).map(|n| n.to_string()), Ok(ok.to_string()));
        }
        let long = "r".repeat(MAX_RUNNER_NAME + 1);
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "/etc",
            "a.b",
            "a b",
            "a\0",
            long.as_str(),
        ] {
            assert_eq!(RunnerName::parse(bad), Err(InvalidRunnerName), "{bad:?}");
        }
    }

    #[test]
    fn states_round_trip_and_only_done_and_failed_free_capacity() {
        for st in RunnerState::ALL {
            assert_eq!(RunnerState::parse(st.as_str()), Some(st));
        }
        let freed: Vec<_> = RunnerState::ALL.into_iter().filter(|s| !s.is_live()).collect();
        assert_eq!(freed, [RunnerState::Done, RunnerState::Failed]);
    }
}
