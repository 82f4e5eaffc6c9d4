//! The benchmarks' tables: each figure with the target it is measured against (BENCHMARKS.md
//! documents them) and PASS or FAIL, so a run says by itself whether the targets hold.

/// One scenario's table.
pub struct Table {
    title: String,
    rows: Vec<Row>,
}

struct Row {
    metric: String,
    value: String,
    /// The target and whether the value meets it; `None` for figures without one.
    target: Option<(String, bool)>,
}

impl Table {
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// A figure reported for information.
    pub fn row(&mut self, metric: &str, value: impl Into<String>) -> &mut Table {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: None,
        });
        self
    }

    /// A figure with its target and whether it is met.
    pub fn judged(&mut self, metric: &str, value: impl Into<String>, target: &str, met: bool) -> &mut Table {
        self.rows.push(Row {
            metric: metric.into(),
            value: value.into(),
            target: Some((target.into(), met)),
        });
        self
    }

    /// The targets missed, as `title: metric` lines.
    pub fn misses(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| r.target.as_ref().is_some_and(|(_, met)| !met))
            .map(|r| format!("{}: {}", self.title, r.metric))
            .collect()
    }

    /// Prints the table; returns the targets it missed.
    pub fn print(&self) -> Vec<String> {
        println!("{}", self.title);
        println!("  {:<44} {:<34} {:<22} verdict", "metric", "value", "target");
        for r in &self.rows {
            let (target, verdict) = match &r.target {
                Some((t, true)) => (t.as_str(), "PASS"),
                Some((t, false)) => (t.as_str(), "FAIL"),
                None => ("", ""),
            };
            println!("  {:<44} {:<34} {target:<22} {verdict}", r.metric, r.value);
        }
        println!();
        self.misses()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_judged_figures_that_miss_their_target_are_misses() {
        let mut t = Table::new("2. burst");
        t.row("jobs", "500")
            .judged("ratio", "1.04", "<= 1.25", true)
            .judged("errors", "3", "0", false);
        assert_eq!(t.misses(), ["2. burst: errors"]);
    }
}
