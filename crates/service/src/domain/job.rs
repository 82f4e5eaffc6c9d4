use std::fmt;

/// A GitHub Actions job id. Real ids exceed 2^32 (docs/github.md §0.1), so 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a job is in GitHub's life cycle, as far as runner planning cares.
///
/// `Waiting` (held by an environment protection rule) and `Queued` both mean "not started";
/// a job moves between them when it is approved, so they share a rank and either may
/// replace the other. Later states never go back: an event that arrives late cannot undo
/// a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Waiting,
    Queued,
    InProgress,
    Completed,
}

impl JobStatus {
    /// Parses GitHub's spelling. Unknown values (`requested`, `pending`) are not started yet
    /// and not runnable, which is what `Waiting` means to the planner.
    pub fn parse(s: &str) -> JobStatus {
        match s {
            "queued" => JobStatus::Queued,
            "in_progress" => JobStatus::InProgress,
            "completed" => JobStatus::Completed,
            _ => JobStatus::Waiting,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Waiting => "waiting",
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
        }
    }

    /// Monotone order used to merge out-of-order events: 1 not started, 2 running, 3 done.
    pub fn rank(self) -> i64 {
        match self {
            JobStatus::Waiting | JobStatus::Queued => 1,
            JobStatus::InProgress => 2,
            JobStatus::Completed => 3,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the service closed a job that never got its `completed` event. Without these rules
/// such a job would get a fresh runner every idle timeout, forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abandoned {
    /// Its repository left `ALLOWED_REPOS` (its `completed` webhook would be refused).
    RepoNotAllowed,
    /// GitHub answers 404 for it.
    GoneAtGitHub,
    /// Queued longer than GitHub lets a job wait (24 hours), after which GitHub fails it.
    QueuedTooLong,
    /// This many runners were made for it and none ran it (`MAX_ATTEMPTS_PER_JOB`).
    TooManyAttempts(u32),
}

impl Abandoned {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Abandoned::RepoNotAllowed => "repo_not_allowed",
            Abandoned::GoneAtGitHub => "gone_at_github",
            Abandoned::QueuedTooLong => "queued_too_long",
            Abandoned::TooManyAttempts(_) => "too_many_attempts",
        }
    }
}

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abandoned::RepoNotAllowed => f.write_str("its repository is no longer in ALLOWED_REPOS"),
            Abandoned::GoneAtGitHub => f.write_str("GitHub no longer has it (404)"),
            Abandoned::QueuedTooLong => f.write_str("queued longer than GitHub's 24-hour limit"),
            Abandoned::TooManyAttempts(n) => write!(
                f,
                "{n} runners were made for it and none ran it (MAX_ATTEMPTS_PER_JOB)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_github_spelling() {
        for s in [
            JobStatus::Waiting,
            JobStatus::Queued,
            JobStatus::InProgress,
            JobStatus::Completed,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), s);
        }
    }

    #[test]
    fn unknown_statuses_are_treated_as_not_runnable() {
        assert_eq!(JobStatus::parse("requested"), JobStatus::Waiting);
        assert_eq!(JobStatus::parse("pending"), JobStatus::Waiting);
    }

    #[test]
    fn waiting_and_queued_share_a_rank_below_running_and_done() {
        assert_eq!(JobStatus::Waiting.rank(), JobStatus::Queued.rank());
        assert!(JobStatus::Queued.rank() < JobStatus::InProgress.rank());
        assert!(JobStatus::InProgress.rank() < JobStatus::Completed.rank());
    }
}
