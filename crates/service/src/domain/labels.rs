use std::fmt;

/// Most labels GitHub accepts on one runner registration.
pub const GITHUB_MAX_LABELS: usize = 100;

/// Most labels a job may ask for: the service adds the deployment's label to every
/// registration (`DeploymentId::label`).
pub const MAX_LABELS: usize = GITHUB_MAX_LABELS - 1;

/// Longest label the service registers.
pub const MAX_LABEL_LEN: usize = 256;

/// The labels a job asks for (`runs-on`), deduplicated case-insensitively.
///
/// GitHub compares labels without regard to case, so two jobs asking for `[self-hosted, Modal]`
/// and `[modal, SELF-HOSTED]` need the same kind of runner: they share one [`LabelSet::key`].
/// The original spelling is kept for the JIT registration, where GitHub shows it to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    labels: Vec<String>,
    key: String,
}

impl LabelSet {
    /// Builds a set from labels as GitHub sent them. Empty and whitespace-only labels are
    /// dropped; the first spelling of a label wins.
    pub fn new<I, S>(labels: I) -> LabelSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut kept: Vec<String> = Vec::new();
        for label in labels {
            let label = label.as_ref().trim();
            if label.is_empty() || kept.iter().any(|k| k.eq_ignore_ascii_case(label)) {
                continue;
            }
            kept.push(label.to_string());
        }
        let mut lowered: Vec<String> = kept.iter().map(|l| l.to_ascii_lowercase()).collect();
        lowered.sort();
        LabelSet {
            key: lowered.join(","),
            labels: kept,
        }
    }

    /// Rebuilds a set from the JSON array the store keeps.
    pub fn from_json(json: &str) -> Result<LabelSet, serde_json::Error> {
        let labels: Vec<String> = serde_json::from_str(json)?;
        Ok(LabelSet::new(labels))
    }

    /// The labels as a JSON array, for the store.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.labels).unwrap_or_else(|_| unreachable!("strings serialise"))
    }

    /// A canonical string: sorted, lower-cased, comma-joined. Jobs with equal keys can be
    /// served by the same runner.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The labels in their original spelling and order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Whether GitHub would register a runner with these labels. It takes 1 to 100 labels
    /// (docs/github.md §2.1), one of which the service spends on the deployment; per label it documents no rule, so the service refuses what
    /// cannot travel intact: a comma (the runner's own configuration splits on it), a
    /// control character, or more than [`MAX_LABEL_LEN`] bytes. A job refused here would
    /// be refused by GitHub at every registration, so it is never planned.
    pub fn registrable(&self) -> Result<(), String> {
        if self.labels.len() > MAX_LABELS {
            return Err(format!(
                "the job asks for {} labels; GitHub registers a runner with at most {GITHUB_MAX_LABELS}, \
                 one of them the deployment's label",
                self.labels.len()
            ));
        }
        for label in &self.labels {
            let shown: String = label.chars().take(40).flat_map(char::escape_default).collect();
            if label.len() > MAX_LABEL_LEN {
                return Err(format!("label {shown}… is longer than {MAX_LABEL_LEN} bytes"));
            }
            if label.contains(',') || label.chars().any(char::is_control) {
                return Err(format!(
                    "label \"{shown}\" holds a comma or a control character, which GitHub would refuse"
                ));
            }
        }
        Ok(())
    }

    /// Whether the set holds `label`, ignoring case.
    pub fn contains(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l.eq_ignore_ascii_case(label))
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.labels.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_labels_than_fit_beside_the_deployment_label_cannot_be_registered() {
        let at_limit: Vec<String> = (0..MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert_eq!(LabelSet::new(&at_limit).registrable(), Ok(()));
        let over: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        let err = LabelSet::new(&over).registrable().expect_err("100 labels");
        assert!(
            err.contains("100 labels") && err.contains("deployment's label"),
            "{err}"
        );
    }

    #[test]
    fn labels_with_commas_control_characters_or_too_long_cannot_be_registered() {
        for bad in ["a,b", "tab\there", "new\nline"] {
            let err = LabelSet::new(["modal", bad]).registrable().expect_err(bad);
            assert!(err.contains("comma or a control character"), "{err}");
            assert!(!err.contains('\n'), "the reason stays on one line: {err}");
        }
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(LabelSet::new(["modal", long.as_str()]).registrable().is_err());
        let fits = "x".repeat(MAX_LABEL_LEN);
        assert_eq!(
            LabelSet::new(["modal", fits.as_str(), "gpu=a10g", "ünïcode"]).registrable(),
            Ok(())
        );
    }

    #[test]
    fn labels_that_differ_only_in_case_share_a_key() {
        let a = LabelSet::new(["self-hosted", "Modal"]);
        let b = LabelSet::new(["MODAL", "self-hosted"]);
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key(), "modal,self-hosted");
    }

    #[test]
    fn the_first_spelling_is_kept_and_duplicates_dropped() {
        let s = LabelSet::new(["Modal", "modal", " ", "gpu"]);
        assert_eq!(s.labels(), ["Modal", "gpu"]);
    }

    #[test]
    fn contains_ignores_case() {
        let s = LabelSet::new(["self-hosted", "MoDaL"]);
        assert!(s.contains("modal"));
        assert!(!s.contains("gpu"));
    }

    #[test]
    fn a_set_survives_the_json_round_trip() {
        let s = LabelSet::new(["self-hosted", "modal", "job-1-2"]);
        let back = LabelSet::from_json(&s.to_json()).expect("valid json");
        assert_eq!(back, s);
    }
}
