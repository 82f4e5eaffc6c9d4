//! Whether a repository is public. On a public repository anyone can open a pull request
//! from a fork, and the fork's workflow file chooses its own `runs-on`, our label and the
//! `cpu=`, `memory=` and `gpu=` labels included; GitHub advises against self-hosted runners
//! there. So the service serves public repositories only when told to
//! (`ALLOW_PUBLIC_REPOS=true`).

/// A repository's visibility, as a webhook payload or a REST object describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
    /// Visible to an enterprise's members (GitHub sends `private: true` for these).
    Internal,
    /// Neither `private` nor `visibility` was present: payloads break GitHub's schema now
    /// and then (docs/github.md §0.1).
    Unknown,
}

impl Visibility {
    /// Reads `repository.private` and `repository.visibility`. Either one saying public
    /// makes the repository public: a doubt is resolved the safe way. With neither field,
    /// the visibility is `Unknown`, which the service serves (and logs): refusing would stop
    /// a private repository's jobs over a missing field, and a public repository's payloads
    /// always carry `private`.
    pub fn from_fields(private: Option<bool>, visibility: Option<&str>) -> Visibility {
        let named = visibility.map(|v| v.trim().to_ascii_lowercase());
        match (private, named.as_deref()) {
            (Some(false), _) | (_, Some("public")) => Visibility::Public,
            (_, Some("internal")) => Visibility::Internal,
            (Some(true), _) | (_, Some("private")) => Visibility::Private,
            (None, _) => Visibility::Unknown,
        }
    }

    pub fn is_public(self) -> bool {
        self == Visibility::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_field_saying_public_makes_the_repository_public() {
        assert_eq!(Visibility::from_fields(Some(false), None), Visibility::Public);
        assert_eq!(Visibility::from_fields(None, Some("public")), Visibility::Public);
        assert_eq!(
            Visibility::from_fields(Some(false), Some("public")),
            Visibility::Public
        );
        // Contradicting fields: the safe reading wins.
        assert_eq!(
            Visibility::from_fields(Some(true), Some("public")),
            Visibility::Public
        );
        assert_eq!(
            Visibility::from_fields(Some(false), Some("private")),
            Visibility::Public
        );
        assert_eq!(Visibility::from_fields(None, Some("PUBLIC")), Visibility::Public);
    }

    #[test]
    fn private_and_internal_repositories_are_not_public() {
        assert_eq!(Visibility::from_fields(Some(true), None), Visibility::Private);
        assert_eq!(
            Visibility::from_fields(Some(true), Some("private")),
            Visibility::Private
        );
        assert_eq!(
            Visibility::from_fields(Some(true), Some("internal")),
            Visibility::Internal
        );
        assert_eq!(
            Visibility::from_fields(None, Some("internal")),
            Visibility::Internal
        );
        assert!(!Visibility::Internal.is_public());
    }

    #[test]
    fn without_either_field_the_visibility_is_unknown() {
        assert_eq!(Visibility::from_fields(None, None), Visibility::Unknown);
        assert_eq!(Visibility::from_fields(None, Some("secret")), Visibility::Unknown);
        assert!(!Visibility::Unknown.is_public());
    }
}
