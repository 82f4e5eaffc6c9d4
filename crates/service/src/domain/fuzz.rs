//! Fuzzing on stable Rust: arbitrary strings at the parsers of everything a workflow author
//! or an operator types (labels, machine specs, GPU names, repository names and allowlists).
//! None may panic; what is accepted is well formed, and what is refused says why on one
//! line. `PROPTEST_CASES=100000 cargo test -p modal-github-runner --lib fuzz` runs longer.

use proptest::prelude::*;

use super::{Gpu, LabelSet, MachinePolicy, MachineSpec, RepoAllowList, RepoName};

/// Labels as a workflow author might write them, well or badly.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,20}",
        "(cpu|memory|gpu|CPU|Gpu)=.{0,12}",
        "(cpu|memory)=[0-9.eE+-]{0,24}(g|gb|gib|mb|mib)?",
        "gpu=[A-Za-z0-9]{0,8}([:xX][0-9]{0,12})?",
    ]
}

proptest! {
    #[test]
    fn label_sets_are_normalised_from_any_strings(labels in prop::collection::vec(label(), 0..120)) {
        let set = LabelSet::new(&labels);
        prop_assert!(set.labels().iter().all(|l| !l.trim().is_empty() && l.trim() == l));
        prop_assert_eq!(LabelSet::from_json(&set.to_json()).expect("round trip"), set.clone());
        if let Err(reason) = set.registrable() {
            prop_assert!(!reason.contains('\n') && !reason.is_empty());
        }
    }

    #[test]
    fn machine_specs_parsed_from_any_labels_are_positive_and_refusals_name_the_label(
        labels in prop::collection::vec(label(), 0..8),
    ) {
        let set = LabelSet::new(&labels);
        match MachineSpec::from_labels(&set) {
            Ok(spec) => {
                prop_assert!(spec.cpu.is_none_or(|c| c.is_finite() && c > 0.0));
                prop_assert!(spec.memory_mib.is_none_or(|m| m > 0));
                prop_assert!(spec.gpu.is_none_or(|g| g.count > 0 && !g.kind.is_empty()));
            }
            Err(reason) => prop_assert!(reason.starts_with("label `"), "{}", reason),
        }
        let policy = MachinePolicy {
            max_cpu: 8.0,
            max_memory_mib: 32 * 1024,
            gpu_types: vec!["A10G".into(), "H100".into()],
            max_gpus: 2,
            features: None,
        };
        if let Ok(spec) = policy.check(&set) {
            prop_assert!(spec.cpu.is_none_or(|c| c <= 8.0));
            prop_assert!(spec.memory_mib.is_none_or(|m| m <= 32 * 1024));
            prop_assert!(spec.gpu.is_none_or(|g| g.count <= 2));
        }
    }

    #[test]
    fn gpu_names_parse_to_a_kind_and_a_positive_count_or_an_error(s in ".{0,24}") {
        if let Ok(gpu) = Gpu::parse(&s) {
            prop_assert!(gpu.count > 0);
            prop_assert!(gpu.kind.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'));
            prop_assert_eq!(Gpu::parse(&gpu.to_string()), Ok(gpu));
        }
    }

    #[test]
    fn repository_names_and_allowlists_accept_only_owner_slash_name(s in ".{0,60}") {
        if let Ok(repo) = RepoName::parse(&s) {
            prop_assert_eq!(repo.as_str().matches('/').count(), 1);
            prop_assert!(!repo.owner().is_empty() && !repo.name().is_empty());
        }
        let _ = RepoAllowList::parse(&s);
    }
}
