//! Named objects: Apps, environments and secrets (docs/modal.md §2.1–2.3).

use std::collections::{BTreeMap, HashMap};

use modal_proto::{
    AppGetOrCreateRequest, AppGetOrCreateResponse, EnvironmentGetOrCreateRequest,
    EnvironmentGetOrCreateResponse, EnvironmentMetadata, EnvironmentSettings, ObjectCreationType,
    SecretGetOrCreateRequest, SecretGetOrCreateResponse,
};

use super::error::RpcError;
use super::state::{
    AppRecord, SecretRecord, Shared, State, environment_key, new_id, validate_env_key, validate_name,
};

/// The image builder version every environment reports.
pub const IMAGE_BUILDER_VERSION: &str = "2025.06";

/// What a get-or-create call found or made.
pub(crate) enum Lookup {
    Existing(String),
    Created(String),
}

impl Lookup {
    fn id(self) -> String {
        match self {
            Self::Existing(id) | Self::Created(id) => id,
        }
    }
}

/// Decodes the `object_creation_type` field, refusing numbers the enum lacks.
pub(crate) fn creation_type(value: i32) -> Result<ObjectCreationType, RpcError> {
    ObjectCreationType::try_from(value)
        .map_err(|_| RpcError::InvalidArgument(format!("unknown object_creation_type {value}")))
}

/// Get-or-create by name with the semantics every named object shares: UNSPECIFIED looks
/// up, CREATE_IF_MISSING creates when absent, CREATE_FAIL_IF_EXISTS refuses an existing one.
pub(crate) fn get_or_create_named(
    names: &HashMap<(String, String), String>,
    key: &(String, String),
    kind: ObjectCreationType,
    what: &str,
    prefix: &str,
) -> Result<Lookup, RpcError> {
    let existing = names.get(key).cloned();
    let (environment, name) = key;
    match (kind, existing) {
        (ObjectCreationType::Unspecified | ObjectCreationType::CreateIfMissing, Some(id)) => {
            Ok(Lookup::Existing(id))
        }
        (ObjectCreationType::Unspecified, None) => Err(RpcError::NotFound(format!(
            "{what} '{name}' not found in environment '{environment}'"
        ))),
        (ObjectCreationType::CreateFailIfExists, Some(_)) => Err(RpcError::AlreadyExists(format!(
            "{what} '{name}' already exists in environment '{environment}'"
        ))),
        (ObjectCreationType::CreateIfMissing | ObjectCreationType::CreateFailIfExists, None) => {
            Ok(Lookup::Created(new_id(prefix)))
        }
        (other, _) => Err(RpcError::InvalidArgument(format!(
            "object_creation_type {} is not supported for {what}s",
            other.as_str_name()
        ))),
    }
}

/// `AppGetOrCreate`: Apps by (environment, name). The environment is only part of the
/// key; it need not have been created, so tests can use any environment name.
pub(crate) fn app_get_or_create(
    shared: &Shared,
    request: AppGetOrCreateRequest,
) -> Result<AppGetOrCreateResponse, RpcError> {
    validate_name("App", &request.app_name)?;
    let kind = creation_type(request.object_creation_type)?;
    let key = (environment_key(&request.environment_name), request.app_name);
    shared.with_state(|state| {
        let lookup = get_or_create_named(&state.app_names, &key, kind, "App", "ap-")?;
        if let Lookup::Created(id) = &lookup {
            let record = AppRecord {
                environment: key.0.clone(),
                name: key.1.clone(),
            };
            state.apps.insert(id.clone(), record);
            state.app_names.insert(key, id.clone());
        }
        Ok(AppGetOrCreateResponse { app_id: lookup.id() })
    })
}

/// `EnvironmentGetOrCreate`: the default environment always exists; others are created on
/// request. Every environment reports [`IMAGE_BUILDER_VERSION`].
pub(crate) fn environment_get_or_create(
    shared: &Shared,
    request: EnvironmentGetOrCreateRequest,
) -> Result<EnvironmentGetOrCreateResponse, RpcError> {
    let name = environment_key(&request.deployment_name);
    validate_name("Environment", &name)?;
    let kind = creation_type(request.object_creation_type)?;
    shared.with_state(|state| {
        let environment_id = match state.environments.get(&name) {
            Some(id) if kind != ObjectCreationType::CreateFailIfExists => id.clone(),
            Some(_) => {
                return Err(RpcError::AlreadyExists(format!(
                    "Environment '{name}' already exists"
                )));
            }
            None if kind == ObjectCreationType::Unspecified => {
                return Err(RpcError::NotFound(format!("Environment '{name}' not found")));
            }
            None => {
                let id = new_id("en-");
                state.environments.insert(name.clone(), id.clone());
                id
            }
        };
        let settings = EnvironmentSettings {
            image_builder_version: IMAGE_BUILDER_VERSION.to_owned(),
        };
        Ok(EnvironmentGetOrCreateResponse {
            environment_id,
            metadata: Some(EnvironmentMetadata {
                name,
                settings: Some(settings),
            }),
        })
    })
}

/// `SecretGetOrCreate`: EPHEMERAL (and ANONYMOUS_OWNED_BY_APP) make a fresh secret from
/// `env_dict`; the named types look up or create by (environment, `deployment_name`).
pub(crate) fn secret_get_or_create(
    shared: &Shared,
    request: SecretGetOrCreateRequest,
) -> Result<SecretGetOrCreateResponse, RpcError> {
    let kind = creation_type(request.object_creation_type)?;
    for key in request.env_dict.keys() {
        validate_env_key(key)?;
    }
    let env: BTreeMap<String, String> = request.env_dict.into_iter().collect();
    let secret_id = match kind {
        ObjectCreationType::Ephemeral | ObjectCreationType::AnonymousOwnedByApp => {
            shared.with_state(|state| insert_secret(state, env))
        }
        _ => {
            validate_name("Secret", &request.deployment_name)?;
            let key = (
                environment_key(&request.environment_name),
                request.deployment_name,
            );
            shared.with_state(|state| named_secret(state, key, kind, env, &request.required_keys))?
        }
    };
    Ok(SecretGetOrCreateResponse { secret_id })
}

fn insert_secret(state: &mut State, env: BTreeMap<String, String>) -> String {
    let id = new_id("st-");
    state.secrets.insert(id.clone(), SecretRecord { env });
    id
}

/// Named-secret branch of `SecretGetOrCreate`, including CREATE_OVERWRITE_IF_EXISTS
/// (keeps the id, replaces the variables) and the `required_keys` check on lookups.
fn named_secret(
    state: &mut State,
    key: (String, String),
    kind: ObjectCreationType,
    env: BTreeMap<String, String>,
    required_keys: &[String],
) -> Result<String, RpcError> {
    if kind == ObjectCreationType::CreateOverwriteIfExists {
        if let Some(id) = state.secret_names.get(&key)
            && let Some(secret) = state.secrets.get_mut(id)
        {
            secret.env = env;
            return Ok(id.clone());
        }
        let id = insert_secret(state, env);
        state.secret_names.insert(key, id.clone());
        return Ok(id);
    }
    match get_or_create_named(&state.secret_names, &key, kind, "Secret", "st-")? {
        Lookup::Existing(id) => {
            check_required_keys(state, &id, &key.1, required_keys)?;
            Ok(id)
        }
        Lookup::Created(id) => {
            state.secrets.insert(id.clone(), SecretRecord { env });
            state.secret_names.insert(key, id.clone());
            Ok(id)
        }
    }
}

/// FAILED_PRECONDITION if the secret lacks a key the caller requires.
fn check_required_keys(
    state: &State,
    id: &str,
    name: &str,
    required_keys: &[String],
) -> Result<(), RpcError> {
    let Some(secret) = state.secrets.get(id) else {
        return Ok(());
    };
    let missing: Vec<&str> = required_keys
        .iter()
        .filter(|key| !secret.env.contains_key(key.as_str()))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RpcError::FailedPrecondition(format!(
            "Secret '{name}' is missing required keys: {}",
            missing.join(", ")
        )))
    }
}
