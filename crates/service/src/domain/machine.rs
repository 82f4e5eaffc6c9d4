use std::fmt;

use super::LabelSet;

/// A GPU request, Modal's way: a type and a count (`A10G`, `H100:2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub kind: String,
    pub count: u32,
}

impl Gpu {
    /// Parses `TYPE`, `TYPE:N` or `TYPEx N` (`H100x2`, for labels that avoid `:`).
    pub fn parse(s: &str) -> Result<Gpu, String> {
        let s = s.trim();
        let (kind, count) = match s.split_once(':') {
            Some((k, n)) => (
                k,
                n.parse::<u32>()
                    .map_err(|_| format!("`{n}` is not a GPU count"))?,
            ),
            None => match s.rsplit_once(['x', 'X']) {
                Some((k, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (
                    k,
                    n.parse::<u32>()
                        .map_err(|_| format!("`{n}` is not a GPU count"))?,
                ),
                _ => (s, 1),
            },
        };
        let kind = kind.trim().to_ascii_uppercase();
        if kind.is_empty() || count == 0 || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("`{s}` is not a GPU like A10G or H100:2"));
        }
        Ok(Gpu { kind, count })
    }
}

impl fmt::Display for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}:{}", self.kind, self.count)
        }
    }
}

/// The machine a job asks for through its labels (`cpu=4`, `memory=16384`, `gpu=A10G`),
/// RunsOn-style; unset parts take the deployment's defaults (`SANDBOX_CPU`, …).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineSpec {
    /// Physical cores.
    pub cpu: Option<f64>,
    pub memory_mib: Option<u32>,
    pub gpu: Option<Gpu>,
    // ---- issue 13: sandbox features chosen by label ----
    /// The `docker` label: a sandbox in Modal's VM runtime with `dockerd` running.
    pub docker: bool,
    /// The `image=NAME` label (lower-cased): a base image from `SANDBOX_IMAGES`.
    pub image: Option<String>,
}

impl MachineSpec {
    /// Reads the `key=value` labels this service understands; other labels are ignored.
    pub fn from_labels(labels: &LabelSet) -> Result<MachineSpec, String> {
        let mut spec = MachineSpec::default();
        for label in labels.labels() {
            let Some((key, value)) = label.split_once('=') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "cpu" => {
                    let cpu: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("label `{label}`: not a number of cores"))?;
                    if !(cpu.is_finite() && cpu > 0.0) {
                        return Err(format!("label `{label}`: cores must be positive"));
                    }
                    spec.cpu = Some(cpu);
                }
                "memory" => {
                    spec.memory_mib = Some(memory(value).map_err(|m| format!("label `{label}`: {m}"))?)
                }
                "gpu" => spec.gpu = Some(Gpu::parse(value).map_err(|m| format!("label `{label}`: {m}"))?),
                "image" => spec.image = Some(image_name(value).map_err(|m| format!("label `{label}`: {m}"))?),
                _ => {}
            }
        }
        spec.docker = labels.contains(DOCKER_LABEL);
        Ok(spec)
    }
}

/// The label that asks for Docker (issue 13).
pub const DOCKER_LABEL: &str = "docker";

/// The name in an `image=NAME` label: what `SANDBOX_IMAGES` may define, lower-cased.
pub fn image_name(value: &str) -> Result<String, String> {
    let name = value.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(name)
    } else {
        Err("an image name is 1 to 32 letters, digits, `-`, `_` or `.`".into())
    }
}

/// MiB, or with a `g`/`gb`/`gib` suffix, GiB.
fn memory(value: &str) -> Result<u32, String> {
    let v = value.trim().to_ascii_lowercase();
    let (digits, factor) = match v
        .strip_suffix("gib")
        .or_else(|| v.strip_suffix("gb"))
        .or_else(|| v.strip_suffix('g'))
    {
        Some(d) => (d, 1024),
        None => (
            v.strip_suffix("mib")
                .or_else(|| v.strip_suffix("mb"))
                .unwrap_or(&v),
            1,
        ),
    };
    let n: u32 = digits
        .trim()
        .parse()
        .map_err(|_| "not an amount of memory (MiB, or GiB with a g suffix)".to_string())?;
    n.checked_mul(factor)
        .filter(|m| *m > 0)
        .ok_or_else(|| "memory must be positive and below 4 PiB".to_string())
}

/// What jobs may ask for through labels (`SANDBOX_MAX_CPU`, `SANDBOX_MAX_MEMORY_MIB`,
/// `SANDBOX_GPU_TYPES`, `SANDBOX_MAX_GPUS`): workflow authors choose labels, the operator
/// chooses what they may cost.
#[derive(Debug, Clone, PartialEq)]
pub struct MachinePolicy {
    pub max_cpu: f64,
    pub max_memory_mib: u32,
    /// GPU types (upper case) a label may ask for; empty: none.
    pub gpu_types: Vec<String>,
    pub max_gpus: u32,
    /// What the `docker` and `image=` labels may ask for; `None` where the backend has no
    /// such features (the local backend runs on the host as it is and ignores them).
    pub features: Option<FeaturePolicy>,
}

impl Default for MachinePolicy {
    fn default() -> Self {
        MachinePolicy {
            max_cpu: 16.0,
            max_memory_mib: 65_536,
            gpu_types: Vec::new(),
            max_gpus: 1,
            features: None,
        }
    }
}

// ---- issue 13: what the `docker` and `image=` labels may ask for ----

/// The Modal backend's label-chosen features, as the operator enabled them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeaturePolicy {
    /// `SANDBOX_DOCKER`: the runner image holds Docker, so `docker` jobs can be served.
    pub docker: bool,
    /// `SANDBOX_GPU` is set: every sandbox gets a GPU, which a VM sandbox cannot have.
    pub default_gpu: bool,
    /// The names `SANDBOX_IMAGES` defines (lower case).
    pub images: Vec<String>,
}

impl FeaturePolicy {
    /// Refuses what a sandbox cannot be made with: Docker without `SANDBOX_DOCKER`, Docker
    /// with a GPU (Docker runs in Modal's VM runtime, which has none), an image name the
    /// operator did not list.
    fn check(&self, spec: &MachineSpec) -> Result<(), String> {
        if spec.docker {
            if !self.docker {
                return Err(
                    "label docker: Docker is not enabled in this deployment's runner image; \
                            the operator enables it with SANDBOX_DOCKER=true"
                        .into(),
                );
            }
            if let Some(gpu) = &spec.gpu {
                return Err(format!(
                    "labels docker and gpu={gpu} together: Docker runs in Modal's VM runtime, which has no GPU"
                ));
            }
            if self.default_gpu {
                return Err(
                    "label docker: Docker runs in Modal's VM runtime, which has no GPU, \
                            and SANDBOX_GPU gives every sandbox one"
                        .into(),
                );
            }
        }
        if let Some(image) = &spec.image
            && !self.images.iter().any(|i| i == image)
        {
            let known = if self.images.is_empty() {
                "none are defined".to_string()
            } else {
                self.images.join(",")
            };
            return Err(format!("image={image} is not in SANDBOX_IMAGES ({known})"));
        }
        Ok(())
    }
}

// ---- end of issue 13 ----

impl MachinePolicy {
    /// Whether a job's labels can be registered and ask for something this deployment
    /// allows; the error says what, and which variable allows it.
    pub fn check(&self, labels: &LabelSet) -> Result<MachineSpec, String> {
        labels.registrable()?;
        let spec = MachineSpec::from_labels(labels)?;
        if let Some(cpu) = spec.cpu.filter(|c| *c > self.max_cpu) {
            return Err(format!("cpu={cpu} is above SANDBOX_MAX_CPU={}", self.max_cpu));
        }
        if let Some(m) = spec.memory_mib.filter(|m| *m > self.max_memory_mib) {
            return Err(format!(
                "memory={m} MiB is above SANDBOX_MAX_MEMORY_MIB={}",
                self.max_memory_mib
            ));
        }
        if let Some(gpu) = &spec.gpu {
            if !self.gpu_types.iter().any(|t| t.eq_ignore_ascii_case(&gpu.kind)) {
                return Err(format!(
                    "gpu={gpu} is not in SANDBOX_GPU_TYPES ({})",
                    self.gpu_types.join(",")
                ));
            }
            if gpu.count > self.max_gpus {
                return Err(format!(
                    "gpu={gpu} asks for more than SANDBOX_MAX_GPUS={}",
                    self.max_gpus
                ));
            }
        }
        if let Some(features) = &self.features {
            features.check(&spec)?;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_requests_parse_type_and_count() {
        assert_eq!(
            Gpu::parse("a10g"),
            Ok(Gpu {
                kind: "A10G".into(),
                count: 1
            })
        );
        assert_eq!(
            Gpu::parse("H100:2"),
            Ok(Gpu {
                kind: "H100".into(),
                count: 2
            })
        );
        assert_eq!(
            Gpu::parse("h100x2"),
            Ok(Gpu {
                kind: "H100".into(),
                count: 2
            })
        );
        assert_eq!(
            Gpu::parse("A100-80GB"),
            Ok(Gpu {
                kind: "A100-80GB".into(),
                count: 1
            })
        );
        assert_eq!(Gpu::parse("H100:2").map(|g| g.to_string()), Ok("H100:2".into()));
        assert!(Gpu::parse("H100:0").is_err());
        assert!(Gpu::parse("H100:x").is_err());
        assert!(Gpu::parse("").is_err());
    }

    #[test]
    fn machine_labels_are_read_and_others_ignored() {
        let labels = LabelSet::new(["self-hosted", "modal", "CPU=4", "memory=16g", "gpu=t4", "team=ml"]);
        let spec = MachineSpec::from_labels(&labels).expect("valid");
        assert_eq!(spec.cpu, Some(4.0));
        assert_eq!(spec.memory_mib, Some(16_384));
        assert_eq!(
            spec.gpu,
            Some(Gpu {
                kind: "T4".into(),
                count: 1
            })
        );
        assert_eq!(
            MachineSpec::from_labels(&LabelSet::new(["modal"])),
            Ok(MachineSpec::default())
        );
        assert_eq!(
            MachineSpec::from_labels(&LabelSet::new(["memory=512"])).map(|m| m.memory_mib),
            Ok(Some(512))
        );
    }

    #[test]
    fn malformed_machine_labels_are_errors_naming_the_label() {
        for bad in ["cpu=lots", "cpu=0", "memory=-1", "memory=", "gpu=", "gpu=H100:0"] {
            let err = MachineSpec::from_labels(&LabelSet::new([bad])).expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
    }

    fn feature_policy() -> MachinePolicy {
        MachinePolicy {
            gpu_types: vec!["T4".into()],
            features: Some(FeaturePolicy {
                docker: true,
                default_gpu: false,
                images: vec!["node".into(), "cuda".into()],
            }),
            ..MachinePolicy::default()
        }
    }

    #[test]
    fn docker_and_image_labels_are_read() {
        let spec =
            MachineSpec::from_labels(&LabelSet::new(["modal", "Docker", "image=Node"])).expect("valid");
        assert!(spec.docker);
        assert_eq!(spec.image.as_deref(), Some("node"));
        let plain = MachineSpec::from_labels(&LabelSet::new(["modal", "dockerish"])).expect("valid");
        assert!(!plain.docker && plain.image.is_none());
        let err = MachineSpec::from_labels(&LabelSet::new(["image=a/b"])).expect_err("slash");
        assert!(err.contains("image=a/b"), "{err}");
    }

    #[test]
    fn docker_is_refused_with_a_gpu_or_when_not_enabled() {
        let policy = feature_policy();
        assert!(policy.check(&LabelSet::new(["docker", "cpu=4"])).is_ok());
        let err = policy
            .check(&LabelSet::new(["docker", "gpu=T4"]))
            .expect_err("gpu");
        assert!(err.contains("VM runtime") && err.contains("no GPU"), "{err}");
        let mut default_gpu = feature_policy();
        default_gpu.features.as_mut().expect("set").default_gpu = true;
        let err = default_gpu
            .check(&LabelSet::new(["docker"]))
            .expect_err("default gpu");
        assert!(err.contains("SANDBOX_GPU"), "{err}");
        let mut off = feature_policy();
        off.features.as_mut().expect("set").docker = false;
        let err = off.check(&LabelSet::new(["docker"])).expect_err("off");
        assert!(err.contains("SANDBOX_DOCKER=true"), "{err}");
        assert!(
            MachinePolicy::default().check(&LabelSet::new(["docker"])).is_ok(),
            "a backend without features ignores the label"
        );
    }

    #[test]
    fn only_listed_images_may_be_chosen() {
        let policy = feature_policy();
        assert!(policy.check(&LabelSet::new(["image=cuda"])).is_ok());
        let err = policy.check(&LabelSet::new(["image=rust"])).expect_err("unknown");
        assert!(
            err.contains("image=rust is not in SANDBOX_IMAGES (node,cuda)"),
            "{err}"
        );
    }

    #[test]
    fn the_policy_caps_cpu_memory_and_gpus() {
        let policy = MachinePolicy {
            gpu_types: vec!["T4".into(), "A10G".into()],
            ..MachinePolicy::default()
        };
        assert!(policy.check(&LabelSet::new(["gpu=a10g", "cpu=8"])).is_ok());
        let err = policy
            .check(&LabelSet::new(["gpu=H100"]))
            .expect_err("not allowed");
        assert!(err.contains("SANDBOX_GPU_TYPES"), "{err}");
        assert!(
            policy
                .check(&LabelSet::new(["gpu=T4:2"]))
                .expect_err("two")
                .contains("SANDBOX_MAX_GPUS")
        );
        assert!(
            policy
                .check(&LabelSet::new(["cpu=32"]))
                .expect_err("big")
                .contains("SANDBOX_MAX_CPU")
        );
        assert!(
            policy
                .check(&LabelSet::new(["memory=128g"]))
                .expect_err("big")
                .contains("SANDBOX_MAX_MEMORY_MIB")
        );
        assert!(
            MachinePolicy::default()
                .check(&LabelSet::new(["gpu=T4"]))
                .is_err(),
            "no GPU unless allowed"
        );
    }
}
