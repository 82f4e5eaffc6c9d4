//! The `encoded_jit_config` blob, in the real runner's format (docs/github.md §4).
//!
//! `generate-jitconfig` answers base64 of a JSON map *file name → base64 of
//! the file*, with the files `.runner` (settings), `.credentials` (OAuth
//! client id) and `.credentials_rsaparams` (RSA key). The runner writes the
//! files into its root and reads them like a configured runner would. The
//! fake points `ServerUrl`/`ServerUrlV2` at its own `/_fake/actions/` base and
//! uses the OAuth `clientId` as the per-runner secret.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// Settings file name.
pub const RUNNER_FILE: &str = ".runner";
/// Credentials file name.
pub const CREDENTIALS_FILE: &str = ".credentials";
/// RSA key file name.
pub const RSA_PARAMS_FILE: &str = ".credentials_rsaparams";

/// Why a JIT config could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum JitConfigError {
    #[error("JIT config is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("JIT config is not a JSON map of file name to base64 content: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JIT config lacks the file {0}")]
    MissingFile(&'static str),
    #[error("JIT config field {0} is missing or invalid")]
    MissingField(&'static str),
    #[error("JIT config names a file that is not a plain file name")]
    UnsafeFileName,
}

/// The fields of `.runner` the fake uses (`ConfigurationStore.cs` names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSettings {
    pub agent_id: u64,
    pub agent_name: String,
    pub pool_id: u64,
    pub pool_name: String,
    pub server_url: String,
    pub server_url_v2: String,
    pub github_url: String,
    pub work_folder: String,
    pub ephemeral: bool,
    pub use_v2_flow: bool,
}

impl RunnerSettings {
    fn to_json(&self) -> Value {
        json!({
            "AgentId": self.agent_id, "AgentName": self.agent_name,
            "PoolId": self.pool_id, "PoolName": self.pool_name,
            "ServerUrl": self.server_url, "GitHubUrl": self.github_url,
            "WorkFolder": self.work_folder, "Ephemeral": self.ephemeral,
            "UseV2Flow": self.use_v2_flow, "ServerUrlV2": self.server_url_v2,
        })
    }

    /// Reads `.runner`; names are case-insensitive, as with Newtonsoft.
    fn from_json(value: &Value) -> Result<Self, JitConfigError> {
        let text = |key: &'static str| field(value, key).and_then(Value::as_str).map(str::to_owned);
        let required = |key: &'static str| text(key).ok_or(JitConfigError::MissingField(key));
        let server_url = required("ServerUrl")?;
        Ok(Self {
            agent_id: number(value, "AgentId")?,
            agent_name: required("AgentName")?,
            pool_id: number(value, "PoolId").unwrap_or(1),
            pool_name: text("PoolName").unwrap_or_default(),
            server_url_v2: text("ServerUrlV2").unwrap_or_else(|| server_url.clone()),
            server_url,
            github_url: text("GitHubUrl").unwrap_or_default(),
            work_folder: text("WorkFolder").unwrap_or_else(|| "_work".to_owned()),
            ephemeral: field(value, "Ephemeral")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            use_v2_flow: field(value, "UseV2Flow")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// The OAuth data of `.credentials`. `Debug` hides the client id: it is the
/// runner's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RunnerCredentials {
    pub client_id: String,
    pub authorization_url: String,
}

impl fmt::Debug for RunnerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerCredentials")
            .field("client_id", &"<redacted>")
            .field("authorization_url", &self.authorization_url)
            .finish()
    }
}

impl RunnerCredentials {
    fn to_json(&self) -> Value {
        json!({
            "Scheme": "OAuth",
            "Data": {
                "clientId": self.client_id,
                "authorizationUrl": self.authorization_url,
                "requireFipsCryptography": "False",
            },
        })
    }

    fn from_json(value: &Value) -> Result<Self, JitConfigError> {
        let data = field(value, "Data").ok_or(JitConfigError::MissingField("Data"))?;
        let text = |key: &'static str| {
            field(data, key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(JitConfigError::MissingField(key))
        };
        Ok(Self {
            client_id: text("clientId")?,
            authorization_url: text("authorizationUrl").unwrap_or_default(),
        })
    }
}

/// A decoded JIT config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitConfig {
    pub settings: RunnerSettings,
    pub credentials: RunnerCredentials,
}

impl JitConfig {
    /// Encodes the three files the way GitHub does.
    pub fn encode(&self) -> String {
        let mut files = BTreeMap::new();
        files.insert(RUNNER_FILE.to_owned(), json_bytes(&self.settings.to_json()));
        files.insert(
            CREDENTIALS_FILE.to_owned(),
            json_bytes(&self.credentials.to_json()),
        );
        files.insert(RSA_PARAMS_FILE.to_owned(), json_bytes(&random_rsa_params()));
        encode_files(&files)
    }

    /// Decodes a blob into the settings and the raw files to write.
    pub fn decode(encoded: &str) -> Result<(Self, BTreeMap<String, Vec<u8>>), JitConfigError> {
        let files = decode_files(encoded)?;
        let settings = RunnerSettings::from_json(&file_json(&files, RUNNER_FILE)?)?;
        let credentials = RunnerCredentials::from_json(&file_json(&files, CREDENTIALS_FILE)?)?;
        if !files.contains_key(RSA_PARAMS_FILE) {
            return Err(JitConfigError::MissingFile(RSA_PARAMS_FILE));
        }
        Ok((
            Self {
                settings,
                credentials,
            },
            files,
        ))
    }
}

/// base64(JSON { name: base64(content) }).
pub fn encode_files(files: &BTreeMap<String, Vec<u8>>) -> String {
    let map: Map<String, Value> = files
        .iter()
        .map(|(name, bytes)| (name.clone(), Value::String(STANDARD.encode(bytes))))
        .collect();
    STANDARD.encode(json_bytes(&Value::Object(map)))
}

/// Inverse of [`encode_files`]; rejects names that are not plain file names
/// so a hostile blob cannot write outside the runner root.
pub fn decode_files(encoded: &str) -> Result<BTreeMap<String, Vec<u8>>, JitConfigError> {
    let outer = STANDARD.decode(encoded.trim())?;
    let map: BTreeMap<String, String> = serde_json::from_slice(&outer)?;
    map.into_iter()
        .map(|(name, content)| {
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                return Err(JitConfigError::UnsafeFileName);
            }
            Ok((name, STANDARD.decode(content.trim())?))
        })
        .collect()
}

fn file_json(files: &BTreeMap<String, Vec<u8>>, name: &'static str) -> Result<Value, JitConfigError> {
    let bytes = files.get(name).ok_or(JitConfigError::MissingFile(name))?;
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    Ok(serde_json::from_slice(text)?)
}

/// Case-insensitive object member lookup.
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// A number that may also be written as a string (`"AgentId": "42"`).
fn number(value: &Value, key: &'static str) -> Result<u64, JitConfigError> {
    match field(value, key) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or(JitConfigError::MissingField(key))
}

fn json_bytes(value: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (all keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Key-shaped random material; nothing verifies it, but the file must exist.
fn random_rsa_params() -> Value {
    let random = |len: usize| STANDARD.encode((0..len).map(|_| fastrand::u8(..)).collect::<Vec<u8>>());
    json!({
        "d": random(256), "dp": random(128), "dq": random(128), "exponent": "AQAB",
        "inverseQ": random(128), "modulus": random(256), "p": random(128), "q": random(128),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JitConfig {
        JitConfig {
            settings: RunnerSettings {
                agent_id: 7,
                agent_name: "runner-7".into(),
                pool_id: 1,
                pool_name: "Default".into(),
                server_url: "http://127.0.0.1:1/_fake/actions/".into(),
                server_url_v2: "http://127.0.0.1:1/_fake/actions/".into(),
                github_url: "https://github.com/acme/widgets".into(),
                work_folder: "_work".into(),
                ephemeral: true,
                use_v2_flow: true,
            },
            credentials: RunnerCredentials {
                client_id: "secret-client".into(),
                authorization_url: "http://127.0.0.1:1/_fake/actions/oauth2/token".into(),
            },
        }
    }

    #[test]
    fn an_encoded_config_decodes_to_the_same_settings_and_three_files() {
        let config = sample();
        let (decoded, files) = JitConfig::decode(&config.encode()).expect("decodes");
        assert_eq!(decoded, config);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, [CREDENTIALS_FILE, RSA_PARAMS_FILE, RUNNER_FILE]);
    }

    #[test]
    fn settings_are_read_case_insensitively_and_ids_may_be_strings() {
        let runner = br#"{"agentid":"42","AGENTNAME":"x","serverurl":"http://s/"}"#.to_vec();
        let settings =
            RunnerSettings::from_json(&serde_json::from_slice(&runner).expect("json")).expect("settings");
        assert_eq!(settings.agent_id, 42);
        assert_eq!(settings.server_url_v2, "http://s/");
    }

    #[test]
    fn garbage_and_path_traversal_are_rejected() {
        assert!(matches!(
            JitConfig::decode("not base64!"),
            Err(JitConfigError::Base64(_))
        ));
        assert!(matches!(
            JitConfig::decode(&STANDARD.encode("[1]")),
            Err(JitConfigError::Json(_))
        ));
        let mut files = BTreeMap::new();
        files.insert("../evil".to_owned(), b"x".to_vec());
        assert!(matches!(
            decode_files(&encode_files(&files)),
            Err(JitConfigError::UnsafeFileName)
        ));
    }

    #[test]
    fn debug_output_does_not_reveal_the_client_id() {
        assert!(!format!("{:?}", sample()).contains("secret-client"));
    }
}
