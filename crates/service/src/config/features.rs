//! Issue 13: the options of the Modal backend's sandbox features — Docker
//! (`SANDBOX_DOCKER`, `SANDBOX_DOCKER_MEMORY_MIB`), the cache volume (`CACHE_VOLUME`,
//! `CACHE_VOLUME_SCOPE`) and the `image=` allowlist (`SANDBOX_IMAGES`).

use clap::builder::TypedValueParser;

use super::parse::{self, checked};
use crate::backend::modal::features::{
    CacheScope, CacheVolume, DEFAULT_DOCKER_MEMORY_MIB, MAX_CACHE_VOLUME_BASE, SandboxFeatures,
};
use crate::domain::{FeaturePolicy, image_name};

/// `serve` options of the sandbox features (flattened into the Modal options).
#[derive(Debug, Clone, clap::Args)]
pub struct FeatureArgs {
    /// Install Docker in the runner image, so jobs labelled `docker` run (in Modal's VM runtime, with dockerd started).
    #[arg(
        long,
        env = "SANDBOX_DOCKER",
        default_value = "false",
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        value_parser = parse::boolean("SANDBOX_DOCKER")
    )]
    pub sandbox_docker: bool,
    /// Memory of a `docker` job's VM sandbox unless it has a memory= label (a VM's memory does not grow).
    #[arg(
        long,
        env = "SANDBOX_DOCKER_MEMORY_MIB",
        default_value_t = DEFAULT_DOCKER_MEMORY_MIB,
        value_name = "MIB",
        value_parser = parse::positive::<u32>("SANDBOX_DOCKER_MEMORY_MIB")
    )]
    pub sandbox_docker_memory_mib: u32,
    /// A Modal volume (v2, created if missing) mounted at /cache in every sandbox, holding the tool caches.
    #[arg(long, env = "CACHE_VOLUME", value_name = "NAME", value_parser = cache_volume())]
    pub cache_volume: Option<String>,
    /// One cache volume per repository (`repo`) or one for the whole deployment (`deployment`).
    #[arg(
        long,
        env = "CACHE_VOLUME_SCOPE",
        default_value = "repo",
        value_name = "SCOPE",
        value_parser = cache_scope()
    )]
    pub cache_volume_scope: CacheScope,
    /// Base images jobs may choose with an `image=NAME` label: `name=tag` pairs, comma-separated.
    #[arg(long, env = "SANDBOX_IMAGES", value_name = "NAME=TAG,...", value_parser = images())]
    pub sandbox_images: Option<ImageList>,
}

/// `SANDBOX_IMAGES` parsed: (name, tag) pairs. A type of its own, because clap reads an
/// `Option<Vec<_>>` as a repeated option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList(pub Vec<(String, String)>);

/// The backend's part.
pub fn settings(args: &FeatureArgs) -> SandboxFeatures {
    SandboxFeatures {
        docker: args.sandbox_docker,
        docker_memory_mib: args.sandbox_docker_memory_mib,
        cache: args.cache_volume.clone().map(|name| CacheVolume {
            name,
            scope: args.cache_volume_scope,
        }),
        images: args.sandbox_images.clone().map(|l| l.0).unwrap_or_default(),
    }
}

/// The planner's part: which `docker` and `image=` jobs are refused.
pub fn policy(args: &FeatureArgs, default_gpu: bool) -> FeaturePolicy {
    FeaturePolicy {
        docker: args.sandbox_docker,
        default_gpu,
        images: args
            .sandbox_images
            .iter()
            .flat_map(|l| l.0.iter())
            .map(|(name, _)| name.clone())
            .collect(),
    }
}

/// `CACHE_VOLUME`: a Modal object name short enough to take a repository part.
fn cache_volume() -> impl TypedValueParser<Value = String> {
    checked("CACHE_VOLUME", |raw| {
        let name = raw.trim();
        let valid = !name.is_empty()
            && name.len() <= MAX_CACHE_VOLUME_BASE
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(name.to_string())
        } else {
            Err(format!(
                "must be 1 to {MAX_CACHE_VOLUME_BASE} letters, digits, `-`, `_` or `.`"
            ))
        }
    })
}

/// `CACHE_VOLUME_SCOPE`.
fn cache_scope() -> impl TypedValueParser<Value = CacheScope> {
    checked("CACHE_VOLUME_SCOPE", |raw| {
        match raw.trim().to_ascii_lowercase().as_str() {
            "repo" => Ok(CacheScope::Repo),
            "deployment" => Ok(CacheScope::Deployment),
            _ => Err(format!("`{raw}` is not repo or deployment")),
        }
    })
}

/// `SANDBOX_IMAGES`.
fn images() -> impl TypedValueParser<Value = ImageList> {
    checked("SANDBOX_IMAGES", |raw| parse_images(raw).map(ImageList))
}

/// `name=tag` pairs, comma-separated: names as `image=` labels spell them (compared in
/// lower case, each once), tags non-empty and without spaces.
pub fn parse_images(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, tag) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not name=tag"))?;
        let name = image_name(name).map_err(|m| format!("`{pair}`: {m}"))?;
        let tag = tag.trim();
        if tag.is_empty() || tag.chars().any(char::is_whitespace) {
            return Err(format!("`{pair}`: the image tag is empty or holds a space"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("`{name}` is defined twice"));
        }
        out.push((name, tag.to_string()));
    }
    Ok(out)
}
