use std::collections::HashSet;
use std::fmt;

/// A repository's `owner/name`, checked against GitHub's naming rules so it can be put in a
/// URL path without escaping. Comparisons ignore case, as GitHub's do.
#[derive(Debug, Clone)]
pub struct RepoName {
    full: String,
    slash: usize,
}

/// Why a string is not a repository name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an owner/repo name: {reason}")]
pub struct RepoNameError {
    pub input: String,
    pub reason: &'static str,
}

impl RepoName {
    /// Parses `owner/repo`. The owner is 1–39 letters, digits or hyphens; the repository
    /// 1–100 letters, digits, `.`, `_` or `-` and not `.` or `..`.
    pub fn parse(input: &str) -> Result<RepoName, RepoNameError> {
        let err = |reason| RepoNameError {
            input: input.to_string(),
            reason,
        };
        let (owner, name) = input.split_once('/').ok_or_else(|| err("missing `/`"))?;
        if owner.is_empty() || owner.len() > 39 {
            return Err(err("the owner must be 1 to 39 characters"));
        }
        if !owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(err("the owner may hold only letters, digits and `-`"));
        }
        if name.is_empty() || name.len() > 100 || name == "." || name == ".." {
            return Err(err("the repository must be 1 to 100 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(err(
                "the repository may hold only letters, digits, `.`, `_` and `-`",
            ));
        }
        Ok(RepoName {
            full: input.to_string(),
            slash: owner.len(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.full[..self.slash]
    }

    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The lower-cased name: the key under which runners and allowlists group repositories.
    pub fn key(&self) -> String {
        self.full.to_ascii_lowercase()
    }
}

impl PartialEq for RepoName {
    fn eq(&self, other: &Self) -> bool {
        self.full.eq_ignore_ascii_case(&other.full)
    }
}

impl Eq for RepoName {}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// `ALLOWED_REPOS`: which repositories may get runners. `None` allows every repository the
/// webhook can reach, as the original system did when the variable was unset.
#[derive(Debug, Clone, Default)]
pub struct RepoAllowList {
    repos: Option<HashSet<String>>,
    listed: Vec<RepoName>,
}

impl RepoAllowList {
    /// Parses the comma-separated list. Blank entries are ignored (a trailing comma is
    /// harmless); any malformed entry is an error, so that a typo cannot silently allow
    /// nothing or everything.
    pub fn parse(list: &str) -> Result<RepoAllowList, RepoNameError> {
        let mut listed = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            listed.push(RepoName::parse(entry)?);
        }
        if listed.is_empty() {
            return Ok(RepoAllowList::default());
        }
        Ok(RepoAllowList {
            repos: Some(listed.iter().map(RepoName::key).collect()),
            listed,
        })
    }

    pub fn allows(&self, repo: &RepoName) -> bool {
        match &self.repos {
            None => true,
            Some(set) => set.contains(&repo.key()),
        }
    }

    /// The listed repositories, or `None` when every repository is allowed.
    pub fn listed(&self) -> Option<&[RepoName]> {
        self.repos.as_ref().map(|_| self.listed.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_name_splits_into_owner_and_repo() {
        let r = RepoName::parse("octo-org/hello.world_2").expect("valid");
        assert_eq!(r.owner(), "octo-org");
        assert_eq!(r.name(), "hello.world_2");
    }

    #[test]
    fn malformed_names_are_rejected_with_a_reason() {
        for bad in [
            "noslash",
            "/repo",
            "owner/",
            "own er/repo",
            "owner/re po",
            "owner/..",
            "a/b/c",
            "owner/repo?x=1",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn repository_names_compare_without_case() {
        let a = RepoName::parse("Octo/Repo").expect("valid");
        let b = RepoName::parse("octo/repo").expect("valid");
        assert_eq!(a, b);
    }

    #[test]
    fn an_empty_allowlist_allows_every_repository() {
        let list = RepoAllowList::parse(" ").expect("valid");
        assert!(list.allows(&RepoName::parse("any/repo").expect("valid")));
        assert!(list.listed().is_none());
    }

    #[test]
    fn an_allowlist_matches_listed_repositories_ignoring_case() {
        let list = RepoAllowList::parse("octo/one, Octo/Two,").expect("valid");
        assert!(list.allows(&RepoName::parse("octo/two").expect("valid")));
        assert!(!list.allows(&RepoName::parse("octo/three").expect("valid")));
    }

    #[test]
    fn a_malformed_allowlist_entry_is_an_error() {
        let err = RepoAllowList::parse("octo/one,not-a-repo").expect_err("invalid");
        assert_eq!(err.input, "not-a-repo");
    }
}
