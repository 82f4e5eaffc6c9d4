//! What a sandbox costs when Modal's own statistics are not available: its resources ×
//! seconds at published rates (issue 13 item 4). The table below is the default;
//! `COST_RATES` overrides any entry.
//!
//! Source of the defaults: shared/docs/modal-features.md §6, "Prices (USD/s)": Modal's
//! pricing page as copied by third parties between 2026-06-18 and 2026-10-08 (Sandbox CPU
//! per physical core, Sandbox memory per GiB; of the two conflicting memory prices the
//! higher, 0.00000672, so an estimate does not under-count), GPU rates from a copy dated
//! 2026-06-27. Modal bills max(request, usage) per second; an estimate from the request is
//! therefore a lower bound when a job used more than it asked for.

use std::collections::BTreeMap;

/// The date of the newest copy the default rates come from.
pub const RATES_AS_OF: &str = "2026-10-08";

/// USD per physical core per second.
const CPU_PER_CORE_SECOND: f64 = 0.000_039_42;
/// USD per GiB of memory per second.
const MEMORY_PER_GIB_SECOND: f64 = 0.000_006_72;
/// USD per GPU per second, by Modal's GPU type name (upper case).
const GPU_PER_SECOND: &[(&str, f64)] = &[
    ("T4", 0.000_164),
    ("L4", 0.000_222),
    ("A10", 0.000_306),
    ("A10G", 0.000_306),
    ("L40S", 0.000_542),
    ("A100", 0.000_583),
    ("A100-40GB", 0.000_583),
    ("A100-80GB", 0.000_694),
    ("RTX-PRO-6000", 0.000_842),
    ("H100", 0.001_097),
    ("H200", 0.001_261),
    ("B200", 0.001_736),
];

/// The rates estimates use.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRates {
    pub cpu_per_core_second: f64,
    pub memory_per_gib_second: f64,
    /// Upper-case GPU type → USD per GPU-second.
    pub gpu_per_second: BTreeMap<String, f64>,
    /// Multiplies every estimate (Modal's region multipliers, a negotiated discount).
    pub factor: f64,
}

impl Default for CostRates {
    fn default() -> Self {
        CostRates {
            cpu_per_core_second: CPU_PER_CORE_SECOND,
            memory_per_gib_second: MEMORY_PER_GIB_SECOND,
            gpu_per_second: GPU_PER_SECOND
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
            factor: 1.0,
        }
    }
}

/// What a sandbox was given, in the units Modal bills.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Physical cores.
    pub cpu: f64,
    pub memory_gib: f64,
    /// GPU type and count.
    pub gpu: Option<(String, u32)>,
}

/// A `COST_RATES` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RatesError {
    #[error("COST_RATES entry `{0}` is not NAME=DOLLARS (names: cpu, memory, gpu:TYPE, factor)")]
    Shape(String),
    #[error("COST_RATES entry `{0}` has an unknown name (names: cpu, memory, gpu:TYPE, factor)")]
    Name(String),
    #[error("COST_RATES entry `{0}` needs a finite, non-negative number")]
    Value(String),
}

impl CostRates {
    /// The defaults with `spec`'s entries in their place. `spec` is comma-separated
    /// `NAME=USD_PER_SECOND`: `cpu` (per physical core), `memory` (per GiB), `gpu:TYPE`
    /// (per GPU), and `factor` (a multiplier for the whole estimate). Empty keeps the
    /// defaults.
    pub fn parse(spec: &str) -> Result<CostRates, RatesError> {
        let mut rates = CostRates::default();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, value) = entry
                .split_once('=')
                .ok_or_else(|| RatesError::Shape(entry.to_string()))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| RatesError::Value(entry.to_string()))?;
            let name = name.trim().to_ascii_lowercase();
            match name.as_str() {
                "cpu" => rates.cpu_per_core_second = value,
                "memory" => rates.memory_per_gib_second = value,
                "factor" => rates.factor = value,
                _ => match name.strip_prefix("gpu:").filter(|t| !t.is_empty()) {
                    Some(kind) => {
                        rates.gpu_per_second.insert(kind.to_ascii_uppercase(), value);
                    }
                    None => return Err(RatesError::Name(entry.to_string())),
                },
            }
        }
        Ok(rates)
    }

    /// USD for `resources` held for `seconds`. A GPU type missing from the table is priced
    /// at the dearest known GPU, so an unknown type over- rather than under-states spend.
    pub fn estimate(&self, resources: &Resources, seconds: f64) -> f64 {
        let seconds = seconds.max(0.0);
        let gpu = resources.gpu.as_ref().map_or(0.0, |(kind, count)| {
            let rate = self
                .gpu_per_second
                .get(&kind.to_ascii_uppercase())
                .copied()
                .unwrap_or_else(|| self.gpu_per_second.values().copied().fold(0.0, f64::max));
            rate * f64::from(*count)
        });
        let per_second = resources.cpu * self.cpu_per_core_second
            + resources.memory_gib * self.memory_per_gib_second
            + gpu;
        per_second * seconds * self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cpu: f64, memory_gib: f64, gpu: Option<(&str, u32)>) -> Resources {
        Resources {
            cpu,
            memory_gib,
            gpu: gpu.map(|(k, n)| (k.to_string(), n)),
        }
    }

    #[test]
    fn an_estimate_is_cores_and_memory_and_gpus_times_seconds_at_the_published_rates() {
        let rates = CostRates::default();
        let cost = rates.estimate(&machine(2.0, 4.0, None), 100.0);
        let expected = (2.0 * 0.000_039_42 + 4.0 * 0.000_006_72) * 100.0;
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
        let with_gpu = rates.estimate(&machine(1.0, 1.0, Some(("h100", 2))), 10.0);
        let expected = (0.000_039_42 + 0.000_006_72 + 2.0 * 0.001_097) * 10.0;
        assert!((with_gpu - expected).abs() < 1e-12, "{with_gpu} vs {expected}");
    }

    #[test]
    fn an_unknown_gpu_type_is_priced_at_the_dearest_known_one() {
        let rates = CostRates::default();
        let unknown = rates.estimate(&machine(0.0, 0.0, Some(("X999", 1))), 1.0);
        assert!((unknown - 0.001_736).abs() < 1e-12, "{unknown}");
    }

    #[test]
    fn cost_rates_override_only_the_entries_they_name() {
        let rates = CostRates::parse(" cpu=0.5, gpu:h100=2 ,factor=1.5,").expect("valid");
        assert_eq!(rates.cpu_per_core_second, 0.5);
        assert_eq!(rates.memory_per_gib_second, MEMORY_PER_GIB_SECOND);
        assert_eq!(rates.gpu_per_second.get("H100"), Some(&2.0));
        assert_eq!(rates.gpu_per_second.get("T4"), Some(&0.000_164));
        assert_eq!(rates.factor, 1.5);
        assert_eq!(CostRates::parse("").expect("empty"), CostRates::default());
    }

    #[test]
    fn cost_rates_refuse_bad_entries_with_the_entry_named() {
        for (spec, want) in [
            ("cpu", RatesError::Shape("cpu".into())),
            ("disk=1", RatesError::Name("disk=1".into())),
            ("gpu:=1", RatesError::Name("gpu:=1".into())),
            ("cpu=-1", RatesError::Value("cpu=-1".into())),
            ("cpu=abc", RatesError::Value("cpu=abc".into())),
            ("memory=NaN", RatesError::Value("memory=NaN".into())),
        ] {
            assert_eq!(CostRates::parse(spec), Err(want), "{spec}");
        }
    }
}
