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
