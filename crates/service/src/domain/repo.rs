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

/// `ALLOWED_REPOS`: which repositories may get runners: `owner/repo` entries, and
/// `owner/*` for every repository of an owner. `None` allows every repository the webhook
/// can reach, as the original system did when the variable was unset.
#[derive(Debug, Clone, Default)]
pub struct RepoAllowList {
    rules: Option<Rules>,
}

#[derive(Debug, Clone, Default)]
struct Rules {
    /// Lower-cased `owner/repo` of the named repositories.
    repos: HashSet<String>,
    /// Lower-cased owners whose every repository is allowed.
    wildcards: HashSet<String>,
    /// The named repositories, in the order given.
    listed: Vec<RepoName>,
    /// Every owner named, by a repository or a wildcard, in the order given, once each.
    owners: Vec<String>,
}

impl RepoAllowList {
    /// Parses the comma-separated list. Blank entries are ignored (a trailing comma is
    /// harmless); any malformed entry is an error, so that a typo cannot silently allow
    /// nothing or everything.
    pub fn parse(list: &str) -> Result<RepoAllowList, RepoNameError> {
        let mut rules = Rules::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let owner = match entry.strip_suffix("/*") {
                Some(owner) => {
                    // Checked as a repository of that owner would be.
                    RepoName::parse(&format!("{owner}/x")).map_err(|e| RepoNameError {
                        input: entry.to_string(),
                        reason: e.reason,
                    })?;
                    rules.wildcards.insert(owner.to_ascii_lowercase());
                    owner.to_string()
                }
                None => {
                    let repo = RepoName::parse(entry)?;
                    rules.repos.insert(repo.key());
                    let owner = repo.owner().to_string();
                    rules.listed.push(repo);
                    owner
                }
            };
            if !rules.owners.iter().any(|o| o.eq_ignore_ascii_case(&owner)) {
                rules.owners.push(owner);
            }
        }
        Ok(RepoAllowList {
            rules: (!rules.owners.is_empty()).then_some(rules),
        })
    }

    pub fn allows(&self, repo: &RepoName) -> bool {
        match &self.rules {
            None => true,
            Some(r) => {
                r.repos.contains(&repo.key()) || r.wildcards.contains(&repo.owner().to_ascii_lowercase())
            }
        }
    }

    /// The repositories named one by one, or `None` when every repository is allowed.
    /// With `owner/*` entries this is not every allowed repository.
    pub fn listed(&self) -> Option<&[RepoName]> {
        self.rules.as_ref().map(|r| r.listed.as_slice())
    }

    /// Every owner the list names, by a repository or with `owner/*`; empty when every
    /// repository is allowed.
    pub fn owners(&self) -> &[String] {
        self.rules.as_ref().map_or(&[], |r| r.owners.as_slice())
    }

    /// Whether some entry is `owner/*`.
    pub fn has_wildcards(&self) -> bool {
        self.rules.as_ref().is_some_and(|r| !r.wildcards.is_empty())
    }

    /// The repositories to poll: those named one by one, then the `known` ones (seen in a
    /// job) the list allows; every known one when every repository is allowed. Each once.
    pub fn poll_targets(&self, known: Vec<RepoName>) -> Vec<RepoName> {
        let mut out: Vec<RepoName> = self.listed().map(<[RepoName]>::to_vec).unwrap_or_default();
        for repo in known {
            if self.allows(&repo) && !out.contains(&repo) {
                out.push(repo);
            }
        }
        out
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
        for bad in ["*/*", "bad owner/*", "/*", "octo/x*"] {
            assert!(RepoAllowList::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn an_owner_wildcard_allows_every_repository_of_that_owner_only() {
        let list = RepoAllowList::parse("Acme/*, beta/one").expect("valid");
        let repo = |n: &str| RepoName::parse(n).expect("valid");
        assert!(list.allows(&repo("acme/anything")));
        assert!(list.allows(&repo("ACME/other")));
        assert!(list.allows(&repo("beta/one")));
        assert!(!list.allows(&repo("beta/two")));
        assert!(!list.allows(&repo("acmex/one")));
        assert_eq!(list.owners(), ["Acme", "beta"]);
        assert!(list.has_wildcards());
        assert_eq!(list.listed().map(<[RepoName]>::len), Some(1));
    }

    #[test]
    fn poll_targets_are_the_named_repositories_then_the_known_allowed_ones() {
        let repo = |n: &str| RepoName::parse(n).expect("valid");
        let list = RepoAllowList::parse("acme/*,beta/one").expect("valid");
        let known = vec![
            repo("acme/two"),
            repo("beta/one"),
            repo("gamma/x"),
            repo("acme/two"),
        ];
        let names: Vec<String> = list
            .poll_targets(known.clone())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["beta/one", "acme/two"]);
        let all = RepoAllowList::default().poll_targets(known);
        assert_eq!(all.len(), 3, "every known repository, once");
    }
}
