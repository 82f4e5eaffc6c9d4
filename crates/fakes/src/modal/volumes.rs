//! Issue 13: volumes and the sandbox fields of Docker and caches
//! (shared/docs/modal-features.md §1, §2).
//!
//! `VolumeGetOrCreate` finds or makes a named volume per environment with the semantics of
//! every named object (UNSPECIFIED looks up, CREATE_IF_MISSING, CREATE_FAIL_IF_EXISTS); an
//! unspecified `version` means v1; asking for a version other than the existing volume's is
//! refused (the SDK raises this client-side; the fake makes it visible to tests).
//! `SandboxCreate` checks the runtime (`gvisor` or `vm`; the VM runtime has no GPU, §1)
//! and the mounts (a volume that exists, mounted once, at a canonical absolute path other
//! than `/`, `/root` and `/tmp`, §2).

use std::collections::{HashMap, HashSet};

use modal_proto::{
    ObjectCreationType, Sandbox, VolumeFsVersion, VolumeGetOrCreateRequest, VolumeGetOrCreateResponse,
    VolumeMetadata,
};

use super::catalog::{Lookup, creation_type, get_or_create_named};
use super::error::RpcError;
use super::state::{Shared, State, environment_key, validate_name};

/// Mount paths Modal refuses.
const FORBIDDEN_MOUNTS: [&str; 3] = ["/", "/root", "/tmp"];

/// One volume.
#[derive(Debug, Clone)]
pub(crate) struct VolumeRecord {
    pub(crate) environment: String,
    pub(crate) name: String,
    pub(crate) version: VolumeFsVersion,
}

/// Every volume, by id and by (environment, name).
#[derive(Debug, Default)]
pub(crate) struct Volumes {
    pub(crate) by_id: HashMap<String, VolumeRecord>,
    names: HashMap<(String, String), String>,
    /// Volumes created (lookups of existing ones excluded).
    pub(crate) created: usize,
}

/// A volume as tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    /// `vo-` + 22 alphanumerics.
    pub id: String,
    pub environment: String,
    pub name: String,
    pub version: VolumeFsVersion,
}

/// `VolumeGetOrCreate`.
pub(crate) fn get_or_create(
    shared: &Shared,
    request: VolumeGetOrCreateRequest,
) -> Result<VolumeGetOrCreateResponse, RpcError> {
    validate_name("Volume", &request.deployment_name)?;
    let kind = creation_type(request.object_creation_type)?;
    if !matches!(
        kind,
        ObjectCreationType::Unspecified
            | ObjectCreationType::CreateIfMissing
            | ObjectCreationType::CreateFailIfExists
    ) {
        return Err(RpcError::InvalidArgument(format!(
            "object_creation_type {} is not supported by this fake for Volumes",
            kind.as_str_name()
        )));
    }
    let wanted = match VolumeFsVersion::try_from(request.version) {
        Ok(VolumeFsVersion::Unspecified) => VolumeFsVersion::V1,
        Ok(v) => v,
        Err(_) => {
            return Err(RpcError::InvalidArgument(format!(
                "unknown volume version {}",
                request.version
            )));
        }
    };
    let key = (
        environment_key(&request.environment_name),
        request.deployment_name,
    );
    shared.with_state(|state| {
        let volumes = &mut state.volumes;
        let lookup = get_or_create_named(&volumes.names, &key, kind, "Volume", "vo-")?;
        let id = match lookup {
            Lookup::Created(id) => {
                let record = VolumeRecord {
                    environment: key.0.clone(),
                    name: key.1.clone(),
                    version: wanted,
                };
                volumes.by_id.insert(id.clone(), record);
                volumes.names.insert(key.clone(), id.clone());
                volumes.created += 1;
                id
            }
            Lookup::Existing(id) => id,
        };
        let version = volumes.by_id.get(&id).map_or(wanted, |v| v.version);
        if request.version != 0 && version != wanted {
            return Err(RpcError::FailedPrecondition(format!(
                "Volume '{}' has version {}, not the requested {}",
                key.1,
                version.as_str_name(),
                wanted.as_str_name()
            )));
        }
        Ok(VolumeGetOrCreateResponse {
            volume_id: id,
            version: version as i32,
            metadata: Some(VolumeMetadata {
                version: version as i32,
                name: key.1,
            }),
        })
    })
}

/// The runtime field: unset, `gvisor` or `vm`; the VM runtime has no GPU.
pub(crate) fn check_runtime(definition: &Sandbox) -> Result<(), RpcError> {
    match definition.runtime.as_deref() {
        None | Some("gvisor") => Ok(()),
        Some("vm") => {
            let gpu = definition
                .resources
                .as_ref()
                .and_then(|r| r.gpu_config.as_ref())
                .is_some_and(|g| !g.gpu_type.is_empty() || g.count > 0);
            if gpu {
                Err(RpcError::InvalidArgument(
                    "GPUs are not supported by the VM sandbox runtime".to_owned(),
                ))
            } else {
                Ok(())
            }
        }
        Some(other) => Err(RpcError::InvalidArgument(format!(
            "invalid sandbox runtime {other:?}: expected \"gvisor\" or \"vm\""
        ))),
    }
}

/// The volume mounts: each volume exists and is mounted once, at a distinct, canonical,
/// absolute path Modal allows.
pub(crate) fn check_mounts(state: &State, definition: &Sandbox) -> Result<(), RpcError> {
    let mut volumes = HashSet::new();
    let mut paths = HashSet::new();
    for mount in &definition.volume_mounts {
        check_mount_path(&mount.mount_path)?;
        if !state.volumes.by_id.contains_key(&mount.volume_id) {
            return Err(RpcError::NotFound(format!(
                "Volume {} not found",
                mount.volume_id
            )));
        }
        if !volumes.insert(mount.volume_id.as_str()) || !paths.insert(mount.mount_path.as_str()) {
            return Err(RpcError::InvalidArgument(format!(
                "volume {} or path {} is mounted twice",
                mount.volume_id, mount.mount_path
            )));
        }
    }
    Ok(())
}

fn check_mount_path(path: &str) -> Result<(), RpcError> {
    let canonical = path.starts_with('/')
        && (path == "/" || !path.ends_with('/'))
        && path
            .split('/')
            .skip(1)
            .all(|part| path == "/" || !(part.is_empty() || part == "." || part == ".."));
    if !canonical {
        return Err(RpcError::InvalidArgument(format!(
            "mount path {path:?} must be a canonical absolute path"
        )));
    }
    if FORBIDDEN_MOUNTS.contains(&path) {
        return Err(RpcError::InvalidArgument(format!(
            "cannot mount a volume at {path}"
        )));
    }
    Ok(())
}

/// Every volume, sorted by (environment, name).
pub(crate) fn views(state: &State) -> Vec<VolumeView> {
    let mut out: Vec<VolumeView> = state
        .volumes
        .by_id
        .iter()
        .map(|(id, v)| VolumeView {
            id: id.clone(),
            environment: v.environment.clone(),
            name: v.name.clone(),
            version: v.version,
        })
        .collect();
    out.sort_by(|a, b| (&a.environment, &a.name).cmp(&(&b.environment, &b.name)));
    out
}
