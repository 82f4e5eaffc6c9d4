//! `WARM_POOL` (issue 13 item 3): registered, idle runners kept ready per label set, so the
//! common job starts without waiting for a sandbox.
//!
//! The planner's counting does it: a pool's target is its eligible queued jobs plus its warm
//! size, so a warm runner that takes a job leaves the pool one short and the same count
//! makes its replacement at once. Warm runners hold capacity like any other
//! (`MAX_RUNNERS`), jobs' runners come first when capacity is short, and surplus is retired
//! only beyond the target. A warm runner is made for no job: its job id is 0. It is kept
//! for each reach (repository, owner or everything, by `RUNNER_SCOPE`) that has had a job
//! with its labels (a reach with an open job or a live runner of those labels).

use std::collections::BTreeMap;

use crate::domain::{JobId, LabelSet, NamePrefix, RepoName, RunnerName};
use crate::store::NewRunner;

/// The job id warm runners carry: they were made for no job.
pub const WARM_JOB: JobId = JobId(0);

/// One `WARM_POOL` entry: this many idle runners with these labels.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmPool {
    pub labels: LabelSet,
    pub size: usize,
}

/// Every `WARM_POOL` entry (a newtype so clap takes the whole list as one value).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WarmPools(pub Vec<WarmPool>);

/// A `WARM_POOL` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WarmPoolError {
    #[error("WARM_POOL entry `{0}` is not LABEL+LABEL…=N")]
    Shape(String),
    #[error("WARM_POOL entry `{0}` needs a whole number of runners")]
    Size(String),
    #[error("WARM_POOL names the label set `{0}` twice")]
    Twice(String),
}

/// Parses `WARM_POOL`: entries separated by `;`, each `LABEL+LABEL…=N`. The count is after
/// the last `=`, so labels may hold one (`self-hosted+modal+cpu=8=1`). Empty: no pool.
pub fn parse(spec: &str) -> Result<WarmPools, WarmPoolError> {
    let mut pools: Vec<WarmPool> = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (labels, size) = entry
            .rsplit_once('=')
            .ok_or_else(|| WarmPoolError::Shape(entry.to_string()))?;
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| WarmPoolError::Size(entry.to_string()))?;
        let labels = LabelSet::new(labels.split('+'));
        if labels.is_empty() {
            return Err(WarmPoolError::Shape(entry.to_string()));
        }
        if pools.iter().any(|p| p.labels.key() == labels.key()) {
            return Err(WarmPoolError::Twice(labels.key().to_string()));
        }
        if size > 0 {
            pools.push(WarmPool { labels, size });
        }
    }
    Ok(WarmPools(pools))
}

/// The entry for the label key `key`, if it has one.
pub fn entry<'a>(pools: &'a [WarmPool], key: &str) -> Option<&'a WarmPool> {
    pools.iter().find(|p| p.labels.key() == key)
}

/// The warm size of the pool whose label key is `key`.
pub fn size_of(pools: &[WarmPool], key: &str) -> usize {
    entry(pools, key).map_or(0, |p| p.size)
}

/// Warm runners to make: `count` for the pool of `labels` in the reach of `repo`. Names are
/// `PREFIX-0-N` with N from `now` (milliseconds) so that no two passes reuse one.
pub fn runners(
    prefix: &NamePrefix,
    repo: &RepoName,
    labels: &LabelSet,
    count: usize,
    now: i64,
) -> Vec<NewRunner> {
    let base = u32::try_from(now.rem_euclid(4_000_000_000)).unwrap_or(0);
    (0..count)
        .map(|i| {
            let seq = base.wrapping_add(u32::try_from(i).unwrap_or(0));
            NewRunner {
                name: RunnerName::for_job(prefix, WARM_JOB, seq),
                job: WARM_JOB,
                attempt: seq,
                repo: repo.clone(),
                labels: labels.clone(),
            }
        })
        .collect()
}

/// For each pool key with a warm size, a repository of its reach: from the pool's jobs or
/// runners, so a warm runner registers where that reach's jobs run.
pub fn reaches<'a>(
    pools: &[WarmPool],
    seen: impl Iterator<Item = (&'a (String, String), &'a RepoName)>,
) -> BTreeMap<(String, String), RepoName> {
    let mut out = BTreeMap::new();
    for (pool, repo) in seen {
        if size_of(pools, &pool.1) > 0 {
            out.entry(pool.clone()).or_insert_with(|| repo.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_pool_entries_name_label_sets_and_sizes_and_labels_may_hold_an_equals_sign() {
        let pools = parse(" self-hosted+modal=2; self-hosted+modal+cpu=8=1 ;")
            .expect("valid")
            .0;
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].labels.key(), "modal,self-hosted");
        assert_eq!(pools[0].size, 2);
        assert_eq!(pools[1].labels.key(), "cpu=8,modal,self-hosted");
        assert_eq!(pools[1].size, 1);
        assert_eq!(size_of(&pools, "modal,self-hosted"), 2);
        assert_eq!(size_of(&pools, "other"), 0);
        assert!(parse("").expect("empty").0.is_empty());
        assert!(parse("modal=0").expect("zero").0.is_empty());
    }

    #[test]
    fn bad_warm_pool_entries_are_refused_with_the_entry_named() {
        assert_eq!(parse("modal"), Err(WarmPoolError::Shape("modal".into())));
        assert_eq!(parse("=2"), Err(WarmPoolError::Shape("=2".into())));
        assert_eq!(parse("modal=two"), Err(WarmPoolError::Size("modal=two".into())));
        assert_eq!(parse("modal=-1"), Err(WarmPoolError::Size("modal=-1".into())));
        assert_eq!(
            parse("modal+self-hosted=1;Self-Hosted+modal=2"),
            Err(WarmPoolError::Twice("modal,self-hosted".into()))
        );
    }
}
