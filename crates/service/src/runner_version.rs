//! Actions runner releases as values: a version and where its tarball is.
//!
//! GitHub refuses to register runners older than 2.329.0 and stops sending jobs to a
//! release more than 30 days old (docs/github.md §4), so the original default 2.311.0
//! is dead: a `RUNNER_VERSION` pin is checked against that floor. Which release to install
//! when nothing is pinned is the app's business (`runner_release`); the backend only
//! receives the resulting `RunnerRelease`.

/// The oldest release GitHub still registers.
pub const MINIMUM: (u32, u32, u32) = (2, 329, 0);

/// A runner release, e.g. 2.336.0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunnerVersion(u32, u32, u32);

impl RunnerVersion {
    /// Parses `2.336.0` or `v2.336.0`.
    pub fn parse(s: &str) -> Option<RunnerVersion> {
        let mut parts = s
            .trim()
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.parse::<u32>().ok());
        let v = RunnerVersion(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }

    /// A `RUNNER_VERSION` pin: well formed and new enough for GitHub to register it.
    pub fn pinned(s: &str) -> Result<RunnerVersion, String> {
        let v =
            RunnerVersion::parse(s).ok_or_else(|| format!("`{s}` is not a runner version like 2.336.0"))?;
        let (a, b, c) = MINIMUM;
        if v < RunnerVersion(a, b, c) {
            return Err(format!(
                "{v} is older than {a}.{b}.{c}, the oldest runner GitHub still registers; and a runner must be \
                 at most 30 days older than the newest release to receive jobs. Unset RUNNER_VERSION to use the \
                 release GitHub currently serves, or pin a current one"
            ));
        }
        Ok(v)
    }
}

impl std::fmt::Display for RunnerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A release and where to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRelease {
    pub version: RunnerVersion,
    pub url: String,
    pub sha256: Option<String>,
}

impl RunnerRelease {
    /// The github.com download of a linux-x64 release.
    pub fn from_version(version: RunnerVersion) -> RunnerRelease {
        RunnerRelease {
            url: format!(
                "https://github.com/actions/runner/releases/download/v{version}/actions-runner-linux-x64-{version}.tar.gz"
            ),
            version,
            sha256: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_or_without_a_v() {
        assert_eq!(RunnerVersion::parse("v2.336.0"), Some(RunnerVersion(2, 336, 0)));
        assert_eq!(
            RunnerVersion::parse("2.336.0").map(|v| v.to_string()),
            Some("2.336.0".into())
        );
        assert_eq!(RunnerVersion::parse("2.336"), None);
        assert_eq!(RunnerVersion::parse("2.336.0.1"), None);
        assert_eq!(RunnerVersion::parse("latest"), None);
    }

    #[test]
    fn the_original_default_pin_is_refused_with_the_reason() {
        let err = RunnerVersion::pinned("2.311.0").expect_err("too old");
        assert!(err.contains("2.329.0") && err.contains("30 days"), "{err}");
        assert!(RunnerVersion::pinned("2.329.0").is_ok());
        assert!(RunnerVersion::pinned("2.336.0").is_ok());
        assert!(RunnerVersion::pinned("two").is_err());
    }

    #[test]
    fn a_version_downloads_from_github_com() {
        let url = "https://github.com/actions/runner/releases/download/v2.336.0/actions-runner-linux-x64-2.336.0.tar.gz";
        assert_eq!(RunnerRelease::from_version(RunnerVersion(2, 336, 0)).url, url);
    }
}
