//! Which deployment of the service this is (`DEPLOYMENT_ID`). Several deployments may share
//! one Modal app and one GitHub organisation; each touches only what it made: its sandboxes
//! carry the id in their `modal-github-runner` tag (the local backend writes it in each
//! sandbox's metadata file), and its GitHub registrations carry the label
//! [`DeploymentId::label`]. A runner's extra label does not narrow the jobs it takes (GitHub
//! gives a job to a runner whose labels include all of the job's), so the label only says
//! whose registration it is (docs/design.md §9).

use std::fmt;

use sha2::{Digest, Sha256};

/// Longest deployment id (the label built from it stays far below GitHub's 256 bytes).
const MAX_LEN: usize = 63;

/// A deployment's identity: 1 to 63 letters, digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// Checks an id given with `DEPLOYMENT_ID`.
    pub fn parse(id: &str) -> Result<DeploymentId, String> {
        if id.is_empty() || id.len() > MAX_LEN {
            return Err(format!("must be 1 to {MAX_LEN} characters"));
        }
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("may hold only letters, digits, `-` and `_`".into());
        }
        Ok(DeploymentId(id.to_string()))
    }

    /// The default id: the runner name prefix, then a digest of the Modal app's name, the
    /// prefix and the GitHub owners served (sorted, without case). Two deployments that
    /// differ in any of them get different ids; one that changes them gets a new id, and
    /// no longer sees what the old one made (set `DEPLOYMENT_ID` to keep it stable).
    pub fn derive(app_name: &str, prefix: &str, owners: &[String]) -> DeploymentId {
        let mut owners: Vec<String> = owners.iter().map(|o| o.to_ascii_lowercase()).collect();
        owners.sort();
        owners.dedup();
        let mut digest = Sha256::new();
        for part in [app_name, prefix, &owners.join(",")] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        let short = hex::encode(&digest.finalize()[..4]);
        DeploymentId(format!("{prefix}-{short}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The label every registration of this deployment carries.
    pub fn label(&self) -> String {
        format!("deployment-{}", self.0)
    }
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_is_stable_and_differs_when_the_app_prefix_or_owners_differ() {
        let owners = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let id = DeploymentId::derive("app", "modal", &owners(&["acme", "beta"]));
        assert!(id.as_str().starts_with("modal-") && id.as_str().len() == "modal-".len() + 8);
        assert_eq!(
            id,
            DeploymentId::derive("app", "modal", &owners(&["Beta", "acme"]))
        );
        for other in [
            DeploymentId::derive("app2", "modal", &owners(&["acme", "beta"])),
            DeploymentId::derive("app", "gpu", &owners(&["acme", "beta"])),
            DeploymentId::derive("app", "modal", &owners(&["acme"])),
        ] {
            assert_ne!(id, other);
        }
        assert!(
            DeploymentId::parse(id.as_str()).is_ok(),
            "a derived id is a valid id"
        );
    }

    #[test]
    fn an_id_is_refused_unless_it_is_short_and_plain() {
        for bad in ["", "has space", "a/b", &"x".repeat(64)] {
            assert!(DeploymentId::parse(bad).is_err(), "{bad:?}");
        }
        let ok = DeploymentId::parse("team-a_1").expect("valid");
        assert_eq!(ok.label(), "deployment-team-a_1");
    }
}
