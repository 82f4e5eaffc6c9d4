//! Fuzzing the max-parallel reader with workflow files a fork's author could write: any
//! text, and documents whose anchors and aliases expand to any size. No panic, no stall:
//! a document within the budgets is read, one past them is refused.
//! `PROPTEST_CASES=100000 cargo test -p modal-github-runner --lib fuzz` runs longer.

use proptest::prelude::*;

use super::workflow::{MAX_NODES, WorkflowError, parse_workflow};

/// YAML built from pieces a workflow has, in any order and nesting.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("jobs:\n".to_string()),
        Just("  test:\n".to_string()),
        Just("    strategy:\n".to_string()),
        "      max-parallel: [-0-9a-z${} ]{0,12}\n",
        "    name: .{0,16}\n",
        "[ -]{0,6}&a[0-9] \\[[a-z, ]{0,10}\\]\n",
        "[ -]{0,6}\\*a[0-9]\n",
        "[ :{}\\[\\],&*!|>'\"#%@`-]{0,12}\n",
        ".{0,24}\n",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Levels of anchored sequences, each made of `fanout` aliases of the level below.
fn layered(fanouts: &[usize]) -> (String, usize) {
    let mut text = String::from("jobs:\n  test:\n    strategy: {max-parallel: 2}\n");
    // The mapping, `jobs`, `test`, `strategy` and its mapping, `max-parallel` and its value.
    let mut total = 7;
    let mut below = 0;
    for (level, &fanout) in fanouts.iter().enumerate() {
        let (items, size) = if level == 0 {
            (vec!["x".to_string(); fanout], 1 + fanout)
        } else {
            (vec![format!("*l{}", level - 1); fanout], 1 + fanout * below)
        };
        text.push_str(&format!("l{level}: &l{level} [{}]\n", items.join(", ")));
        total += 1 + size;
        below = size;
    }
    (text, total)
}

proptest! {
    #[test]
    fn any_text_is_read_or_refused_without_a_panic(text in prop_oneof![".{0,400}", yamlish()]) {
        if let Err(e) = parse_workflow(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn aliases_are_read_within_the_node_budget_and_refused_past_it(
        fanouts in prop::collection::vec(1usize..40, 1..7),
    ) {
        let (text, nodes) = layered(&fanouts);
        match parse_workflow(&text) {
            Ok(jobs) => {
                prop_assert!(nodes <= MAX_NODES, "{} nodes were expanded", nodes);
                prop_assert_eq!(jobs.len(), 1);
                prop_assert_eq!(jobs[0].max_parallel, 2);
            }
            Err(e) => {
                prop_assert_eq!(e, WorkflowError::TooManyNodes);
                prop_assert!(nodes > MAX_NODES, "refused at {} nodes", nodes);
            }
        }
    }
}
