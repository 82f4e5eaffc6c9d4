//! Workflow files: which workflow job a job belongs to and its `strategy.max-parallel`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::{Yaml, YamlLoader};

/// Largest workflow file read. GitHub serves files up to 1 MB through the contents API;
/// real workflows are a few KiB.
pub const MAX_WORKFLOW_BYTES: usize = 512 * 1024;

/// Most YAML nodes a workflow may expand to, aliases counted at their expanded size.
pub const MAX_NODES: usize = 200_000;

/// Why a workflow file was not read. Every one of them means "plan as if max-parallel
/// were absent".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("the file is {0} bytes, above the {MAX_WORKFLOW_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the file expands to more than {MAX_NODES} YAML nodes (aliases counted at their expanded size)")]
    TooManyNodes,
    #[error("not YAML: {0}")]
    Syntax(String),
    #[error("the file has no `jobs` mapping")]
    NotAWorkflow,
}

/// One job of a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowJob {
    /// The key under `jobs:`.
    pub key: String,
    /// `jobs.<key>.name`, when set.
    pub name: Option<String>,
    /// `strategy.max-parallel`; 0 = unlimited (absent, or an expression).
    pub max_parallel: u32,
}

/// Reads the jobs of a workflow file. The file comes from the run's commit, which the author
/// of a fork's pull request controls, so it is measured before it is loaded: too large a
/// file, or one whose aliases expand past the node budget (an "alias bomb": yaml-rust2
/// copies the anchored node at every alias), is refused without being built.
pub fn parse_workflow(text: &str) -> Result<Vec<WorkflowJob>, WorkflowError> {
    if text.len() > MAX_WORKFLOW_BYTES {
        return Err(WorkflowError::TooLarge(text.len()));
    }
    check_node_budget(text, MAX_NODES)?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| WorkflowError::Syntax(e.to_string()))?;
    let jobs = docs
        .first()
        .and_then(|d| d["jobs"].as_hash())
        .ok_or(WorkflowError::NotAWorkflow)?;
    let mut out = Vec::new();
    for (key, job) in jobs {
        let Some(key) = key.as_str() else { continue };
        let max_parallel = match &job["strategy"]["max-parallel"] {
            Yaml::Integer(n) => u32::try_from(*n).unwrap_or(0),
            Yaml::String(s) => s.trim().parse().unwrap_or(0),
            _ => 0,
        };
        out.push(WorkflowJob {
            key: key.to_string(),
            name: job["name"].as_str().map(str::to_string),
            max_parallel,
        });
    }
    Ok(out)
}

/// Counts the nodes the document would have once every alias is expanded, from the
/// parser's events alone (nothing is copied), and stops at the first event past `budget`.
fn check_node_budget(text: &str, budget: usize) -> Result<(), WorkflowError> {
    let mut parser = Parser::new_from_str(text);
    // Expanded size of each anchored node, and of each collection still open.
    let mut anchored: HashMap<usize, usize> = HashMap::new();
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut total = 0usize;
    loop {
        let (event, _) = parser
            .next_token()
            .map_err(|e| WorkflowError::Syntax(e.to_string()))?;
        let closed = match event {
            Event::StreamEnd => return Ok(()),
            Event::Scalar(_, _, anchor, _) => Some((anchor, 1)),
            Event::Alias(anchor) => Some((0, anchored.get(&anchor).copied().unwrap_or(1))),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, 1));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => open.pop(),
            _ => None,
        };
        let Some((anchor, size)) = closed else { continue };
        if anchor != 0 {
            anchored.insert(anchor, size);
        }
        match open.last_mut() {
            Some((_, parent)) => *parent = parent.saturating_add(size),
            None => total = total.saturating_add(size),
        }
        // A collection's size is only known when it closes; its open ancestors bound it.
        let pending: usize = open.iter().map(|(_, n)| *n).fold(0, usize::saturating_add);
        if total.saturating_add(pending) > budget {
            return Err(WorkflowError::TooManyNodes);
        }
    }
}

/// How well a display name matches a workflow job; higher is better.
fn match_quality(display: &str, job: &WorkflowJob) -> u8 {
    let templated = job.name.as_deref().filter(|n| n.contains("${{"));
    let plain = match (&job.name, templated) {
        (Some(n), None) => n.as_str(),
        (None, _) => job.key.as_str(),
        (Some(_), Some(_)) => "",
    };
    if !plain.is_empty() && display == plain {
        return 3;
    }
    if !plain.is_empty() && display.starts_with(&format!("{plain} (")) && display.ends_with(')') {
        return 2;
    }
    if let Some(t) = templated
        && matches_template(display, t)
    {
        return 1;
    }
    0
}

/// Whether `display` could be `template` with its `${{ … }}` expressions filled in.
fn matches_template(display: &str, template: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        literals.push(&rest[..start]);
        match rest[start..].find("}}") {
            Some(end) => rest = &rest[start + end + 2..],
            None => return false,
        }
    }
    literals.push(rest);
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    if !display.starts_with(first) || !display.ends_with(last) || display.len() < first.len() + last.len() {
        return false;
    }
    let mut hay = &display[first.len()..display.len() - last.len()];
    for lit in &literals[1..literals.len() - 1] {
        match hay.find(lit) {
            Some(i) => hay = &hay[i + lit.len()..],
            None => return false,
        }
    }
    true
}

/// The workflow job a job's display name belongs to, and its max-parallel. Jobs called
/// through a reusable workflow show as `caller / callee`; the caller's strategy applies.
/// Ties take the smaller limit (0 = unlimited counts as the largest).
pub fn match_job(display: &str, jobs: &[WorkflowJob]) -> Option<(String, u32)> {
    let head = display.split(" / ").next().unwrap_or(display);
    let best = jobs
        .iter()
        .map(|j| (match_quality(head, j), j))
        .filter(|(q, _)| *q > 0)
        .max_by_key(|(q, _)| *q)?
        .0;
    jobs.iter()
        .filter(|j| match_quality(head, j) == best)
        .min_by_key(|j| {
            if j.max_parallel == 0 {
                u32::MAX
            } else {
                j.max_parallel
            }
        })
        .map(|j| (j.key.clone(), j.max_parallel))
}

/// A workflow with every shape of `max-parallel` and job name the matcher handles.
#[cfg(test)]
pub(crate) const SAMPLE: &str = r#"
name: CI
on: [push]
jobs:
  lint:
    runs-on: [self-hosted, modal]
    steps: [{run: make lint}]
  test:
    runs-on: [self-hosted, modal]
    strategy:
      max-parallel: 2
      matrix:
        shard: [1, 2, 3, 4, 5]
    steps: [{run: make test}]
  build:
    name: Build ${{ matrix.os }} py${{ matrix.py }}
    runs-on: [self-hosted, modal]
    strategy:
      max-parallel: 1
      matrix: {os: [linux, mac], py: ["3.11", "3.12"]}
  deploy:
    name: Deploy
    strategy:
      max-parallel: ${{ fromJSON(inputs.n) }}
      matrix: {env: [a, b]}
  call:
    strategy: {max-parallel: 3, matrix: {x: [1, 2]}}
    uses: ./.github/workflows/reusable.yml
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Vec<WorkflowJob> {
        parse_workflow(SAMPLE).expect("parses")
    }

    #[test]
    fn max_parallel_is_read_per_job_and_absent_or_dynamic_means_unlimited() {
        let j = jobs();
        let mp: Vec<(&str, u32)> = j.iter().map(|j| (j.key.as_str(), j.max_parallel)).collect();
        assert_eq!(
            mp,
            [("lint", 0), ("test", 2), ("build", 1), ("deploy", 0), ("call", 3)]
        );
    }

    #[test]
    fn matrix_display_names_match_their_workflow_job() {
        let j = jobs();
        assert_eq!(match_job("test (3)", &j), Some(("test".into(), 2)));
        assert_eq!(match_job("lint", &j), Some(("lint".into(), 0)));
        assert_eq!(match_job("Build linux py3.12", &j), Some(("build".into(), 1)));
        assert_eq!(match_job("Deploy (a)", &j), Some(("deploy".into(), 0)));
        assert_eq!(match_job("call (1) / build", &j), Some(("call".into(), 3)));
        assert_eq!(match_job("unknown", &j), None);
    }

    #[test]
    fn templates_match_only_with_their_literal_parts_in_order() {
        assert!(matches_template(
            "Build linux py3.11",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template(
            "Test linux py3.11",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template(
            "Build linux",
            "Build ${{ matrix.os }} py${{ matrix.py }}"
        ));
        assert!(!matches_template("x", "Build ${{ unterminated"));
    }

    #[test]
    fn files_that_are_not_workflows_give_nothing() {
        assert!(matches!(
            parse_workflow("just: [a, b"),
            Err(WorkflowError::Syntax(_))
        ));
        assert_eq!(
            parse_workflow("name: no jobs here"),
            Err(WorkflowError::NotAWorkflow)
        );
    }

    /// Nine levels of ten aliases each: 10^9 nodes once expanded, from a few hundred bytes.
    fn alias_bomb() -> String {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let refs = vec![format!("*a{}", level - 1); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        text.push_str("jobs:\n  test:\n    strategy: {max-parallel: 1}\n    steps: *a9\n");
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_without_being_expanded() {
        let bomb = alias_bomb();
        assert!(bomb.len() < 1024, "{} bytes", bomb.len());
        assert_eq!(parse_workflow(&bomb), Err(WorkflowError::TooManyNodes));
    }

    #[test]
    fn aliases_count_at_their_expanded_size() {
        // mapping 1 + keys a, b, c 3 + sequence 4 + two aliases of it 4 each = 16 nodes.
        let text = "a: &x [1, 2, 3]\nb: *x\nc: *x\n";
        assert_eq!(check_node_budget(text, 16), Ok(()));
        assert_eq!(check_node_budget(text, 15), Err(WorkflowError::TooManyNodes));
    }

    #[test]
    fn workflows_that_share_settings_through_aliases_are_still_read() {
        let text = "defaults: &s {max-parallel: 2}\njobs:\n  a: {strategy: *s}\n  b: {strategy: *s}\n";
        let mp: Vec<u32> = parse_workflow(text)
            .expect("parses")
            .iter()
            .map(|j| j.max_parallel)
            .collect();
        assert_eq!(mp, [2, 2]);
    }

    #[test]
    fn a_file_above_the_size_limit_is_refused_before_parsing() {
        let big = format!("jobs:\n  a: {{}}\n#{}\n", "x".repeat(MAX_WORKFLOW_BYTES));
        assert_eq!(parse_workflow(&big), Err(WorkflowError::TooLarge(big.len())));
    }
}
