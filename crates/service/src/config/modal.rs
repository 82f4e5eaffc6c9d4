//! The Modal backend's part: credentials from `MODAL_TOKEN_ID` / `MODAL_TOKEN_SECRET`, else
//! the active profile of `~/.modal.toml` (as Modal's own client reads them), and sandbox
//! resources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::TypedValueParser;
use secrecy::SecretString;
use serde::Deserialize;

use super::parse::{self, checked, optional, parse_number};
use super::{ConfigError, err};
use crate::backend::modal::ModalSettings;
use crate::backend::modal::client::ModalConnection;
use crate::backend::modal::image::ImageSettings;
use crate::domain::Gpu;
use crate::retry::Backoff;

/// `serve` options for the `modal` backend.
#[derive(Debug, Clone, clap::Args)]
pub struct ModalArgs {
    /// Modal API URL; http:// means plaintext (tests).
    #[arg(long, env = "MODAL_SERVER_URL", value_name = "URL")]
    pub modal_server_url: Option<String>,
    /// Modal token id (ak-…); default: the active profile of ~/.modal.toml.
    #[arg(long, env = "MODAL_TOKEN_ID", value_name = "ID")]
    pub modal_token_id: Option<String>,
    /// File holding the Modal token secret (default: the MODAL_TOKEN_SECRET environment variable, or ~/.modal.toml).
    #[arg(long, value_name = "PATH")]
    pub modal_token_secret_file: Option<PathBuf>,
    /// Modal config file with profiles.
    #[arg(long, env = "MODAL_CONFIG_PATH", value_name = "PATH")]
    pub modal_config_path: Option<PathBuf>,
    /// Profile of the Modal config file to use (default: the one marked active).
    #[arg(long, env = "MODAL_PROFILE", value_name = "NAME")]
    pub modal_profile: Option<String>,
    /// Modal environment (default: the workspace's default environment).
    #[arg(long, env = "MODAL_ENVIRONMENT", value_name = "NAME")]
    pub modal_environment: Option<String>,
    /// The Modal App that holds the sandboxes.
    #[arg(
        long,
        env = "MODAL_APP_NAME",
        default_value = "modal-github-runner",
        value_name = "NAME",
        value_parser = app_name()
    )]
    pub modal_app_name: String,
    /// Image builder version (default: the environment's).
    #[arg(long, env = "MODAL_IMAGE_BUILDER_VERSION", value_name = "VERSION")]
    pub modal_image_builder_version: Option<String>,
    /// Sandbox creations per second (Modal's default workspace limit is 5).
    #[arg(
        long,
        env = "MODAL_CREATE_RATE",
        default_value = "5",
        value_name = "PER_SEC",
        value_parser = parse::rate("MODAL_CREATE_RATE")
    )]
    pub modal_create_rate: f64,
    /// Physical CPU cores per sandbox.
    #[arg(long, env = "SANDBOX_CPU", default_value = "2", value_name = "CORES", value_parser = sandbox_cpu())]
    pub sandbox_cpu: f64,
    /// Memory per sandbox.
    #[arg(
        long,
        env = "SANDBOX_MEMORY_MIB",
        default_value = "4096",
        value_name = "MIB",
        value_parser = parse::positive::<u32>("SANDBOX_MEMORY_MIB")
    )]
    pub sandbox_memory_mib: u32,
    /// GPU per sandbox, e.g. A10G or H100:2 (default: none).
    #[arg(long, env = "SANDBOX_GPU", value_name = "GPU")]
    pub sandbox_gpu: Option<String>,
    /// Base image of the runner image (a registry tag).
    #[arg(
        long,
        env = "SANDBOX_IMAGE",
        default_value = "debian:bookworm-slim",
        value_name = "TAG",
        value_parser = image_base()
    )]
    pub sandbox_image: String,
    /// Extra Dockerfile commands for the runner image: one per line, or a JSON array.
    #[arg(long, env = "SANDBOX_IMAGE_COMMANDS", value_name = "COMMANDS")]
    pub sandbox_image_commands: Option<String>,
    /// Docker, the cache volume, `image=` (issue 13).
    #[command(flatten)]
    pub features: super::features::FeatureArgs,
}

/// One table of `~/.modal.toml`.
#[derive(Debug, Default, Deserialize)]
struct Profile {
    token_id: Option<String>,
    token_secret: Option<String>,
    server_url: Option<String>,
    environment: Option<String>,
}

/// Modal settings without the runner source, which needs the GitHub client.
pub fn settings(
    args: &ModalArgs,
    env: &impl Fn(&str) -> Option<String>,
    deployment: &str,
) -> Result<ModalSettings, ConfigError> {
    let profile = profile(args, env)?;
    let token_id = args
        .modal_token_id
        .clone()
        .or_else(|| profile.token_id.clone())
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| err("MODAL_TOKEN_ID", "is required with BACKEND=modal: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or log in with `modal token new` so ~/.modal.toml holds a profile"))?;
    let token_secret = match &args.modal_token_secret_file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            err(
                "MODAL_TOKEN_SECRET",
                format!("could not read {}: {e}", path.display()),
            )
        })?,
        None => env("MODAL_TOKEN_SECRET")
            .or_else(|| profile.token_secret.clone())
            .ok_or_else(|| {
                err(
                    "MODAL_TOKEN_SECRET",
                    "is required with BACKEND=modal (or a ~/.modal.toml profile)",
                )
            })?,
    };
    let token_secret = token_secret.trim().to_string();
    if token_secret.is_empty() {
        return Err(err("MODAL_TOKEN_SECRET", "is empty"));
    }
    let server_url = args
        .modal_server_url
        .clone()
        .or_else(|| profile.server_url.clone())
        .unwrap_or_else(|| "https://api.modal.com:443".into());
    if !(server_url.starts_with("https://") || server_url.starts_with("http://")) {
        return Err(err("MODAL_SERVER_URL", "must start with https:// or http://"));
    }
    let gpu = optional("SANDBOX_GPU", args.sandbox_gpu.as_deref(), Gpu::parse)?;
    let image = ImageSettings {
        base: args.sandbox_image.clone(),
        extra_commands: image_commands(args.sandbox_image_commands.as_deref())?,
    };
    let connection = ModalConnection {
        server_url,
        token_id: token_id.trim().to_string(),
        token_secret: SecretString::from(token_secret),
        max_throttle_wait: Duration::from_secs(300),
        retry: Backoff::new(6, Duration::from_millis(200), Duration::from_secs(10)),
    };
    let environment = args
        .modal_environment
        .clone()
        .or(profile.environment)
        .unwrap_or_default();
    Ok(ModalSettings {
        connection,
        environment,
        app_name: args.modal_app_name.clone(),
        image,
        cpu: args.sandbox_cpu,
        memory_mib: args.sandbox_memory_mib,
        gpu,
        create_rate: Some(args.modal_create_rate).filter(|r| *r > 0.0),
        deployment: deployment.to_string(),
        builder_version: args.modal_image_builder_version.clone(),
        build_timeout: Duration::from_secs(30 * 60),
        build_stream_retry: BUILD_STREAM_RETRY,
        refresh_interval: Duration::from_secs(24 * 3600),
        features: super::features::settings(&args.features),
    })
}

/// The build log stream is reopened after each of up to 3 errors in a row, about 1 s, 2 s
/// and 4 s later; a 4th error in a row fails the build (bounded, like Modal's own clients).
const BUILD_STREAM_RETRY: Backoff = Backoff::new(4, Duration::from_secs(1), Duration::from_secs(4));

/// `SANDBOX_CPU`: physical cores, within what Modal offers.
fn sandbox_cpu() -> impl TypedValueParser<Value = f64> {
    checked("SANDBOX_CPU", |raw| {
        let cpu: f64 = parse_number(raw)?;
        if !(0.125..=64.0).contains(&cpu) {
            return Err("must be between 0.125 and 64 cores".into());
        }
        Ok(cpu)
    })
}

/// `MODAL_APP_NAME`: a name Modal accepts.
fn app_name() -> impl TypedValueParser<Value = String> {
    checked("MODAL_APP_NAME", |name| {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err("must be 1 to 64 letters, digits, `-`, `_` or `.`".into());
        }
        Ok(name.to_string())
    })
}

/// `SANDBOX_IMAGE`: a registry tag.
fn image_base() -> impl TypedValueParser<Value = String> {
    checked("SANDBOX_IMAGE", |tag| match tag.trim() {
        "" => Err("is empty".into()),
        tag => Ok(tag.to_string()),
    })
}

/// The profile to read credentials from, if there is a config file.
fn profile(args: &ModalArgs, env: &impl Fn(&str) -> Option<String>) -> Result<Profile, ConfigError> {
    let path = match &args.modal_config_path {
        Some(p) => p.clone(),
        None => match env("HOME") {
            Some(home) => Path::new(&home).join(".modal.toml"),
            None => return Ok(Profile::default()),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Profile::default());
    };
    let mut profiles: toml::Table = toml::from_str(&text).map_err(|e| {
        err(
            "MODAL_CONFIG_PATH",
            format!("{} is not valid TOML: {e}", path.display()),
        )
    })?;
    let name = match &args.modal_profile {
        Some(n) => n.clone(),
        None => match profiles
            .iter()
            .find(|(_, v)| v.get("active").and_then(toml::Value::as_bool) == Some(true))
        {
            Some((n, _)) => n.clone(),
            None if profiles.len() == 1 => profiles.keys().next().cloned().unwrap_or_default(),
            None => return Ok(Profile::default()),
        },
    };
    let table = profiles.remove(&name).ok_or_else(|| {
        err(
            "MODAL_PROFILE",
            format!("profile `{name}` is not in {}", path.display()),
        )
    })?;
    table.try_into().map_err(|e| {
        err(
            "MODAL_CONFIG_PATH",
            format!("profile `{name}` in {}: {e}", path.display()),
        )
    })
}

/// `SANDBOX_IMAGE_COMMANDS`: a JSON array of commands, or one command per line.
fn image_commands(raw: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let commands: Vec<String> = if raw.starts_with('[') {
        serde_json::from_str(raw).map_err(|e| {
            err(
                "SANDBOX_IMAGE_COMMANDS",
                format!("not a JSON array of strings: {e}"),
            )
        })?
    } else {
        raw.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    if let Some(bad) = commands
        .iter()
        .find(|c| c.trim_start().to_ascii_uppercase().starts_with("FROM "))
    {
        return Err(err(
            "SANDBOX_IMAGE_COMMANDS",
            format!("`{bad}`: set the base image with SANDBOX_IMAGE instead"),
        ));
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config_error;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ModalArgs,
    }

    /// The settings, or the first problem: from a value parser (clap) or from `settings`.
    fn build(flags: &[&str], env: &[(&str, &str)]) -> Result<ModalSettings, ConfigError> {
        let mut argv = vec!["x"];
        argv.extend_from_slice(flags);
        let args = Cli::try_parse_from(argv).map_err(|e| config_error(&e))?.args;
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        settings(&args, &lookup, "modal")
    }

    #[test]
    fn credentials_come_from_the_environment_first() {
        let s = build(
            &["--modal-token-id", "ak-env"],
            &[("MODAL_TOKEN_SECRET", "as-env")],
        )
        .expect("valid");
        assert_eq!(s.connection.token_id, "ak-env");
        assert_eq!(s.connection.server_url, "https://api.modal.com:443");
        assert_eq!((s.cpu, s.memory_mib, s.create_rate), (2.0, 4096, Some(5.0)));
    }

    #[test]
    fn credentials_fall_back_to_the_active_profile_of_modal_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("modal.toml");
        std::fs::write(
            &path,
            "[work]\ntoken_id = \"ak-work\"\ntoken_secret = \"as-work\"\n\n[me]\ntoken_id = \"ak-me\"\ntoken_secret = \"as-me\"\nactive = true\nenvironment = \"dev\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let s = build(&["--modal-config-path", p], &[]).expect("valid");
        assert_eq!(
            (s.connection.token_id.as_str(), s.environment.as_str()),
            ("ak-me", "dev")
        );
        let s = build(&["--modal-config-path", p, "--modal-profile", "work"], &[]).expect("valid");
        assert_eq!(s.connection.token_id, "ak-work");
        let e =
            build(&["--modal-config-path", p, "--modal-profile", "nope"], &[]).expect_err("unknown profile");
        assert_eq!(e.var, "MODAL_PROFILE");
    }

    #[test]
    fn missing_credentials_are_a_clear_error() {
        let e = build(&["--modal-config-path", "/nonexistent"], &[]).expect_err("no credentials");
        assert_eq!(e.var, "MODAL_TOKEN_ID");
        assert!(e.message.contains("MODAL_TOKEN_SECRET"));
        let e = build(&["--modal-token-id", "ak"], &[]).expect_err("no secret");
        assert_eq!(e.var, "MODAL_TOKEN_SECRET");
    }

    #[test]
    fn bad_sandbox_settings_name_their_variable() {
        let ok = [("MODAL_TOKEN_SECRET", "as")];
        for (flags, var) in [
            (vec!["--sandbox-cpu", "0"], "SANDBOX_CPU"),
            (vec!["--sandbox-memory-mib", "0"], "SANDBOX_MEMORY_MIB"),
            (vec!["--sandbox-gpu", "H100:0"], "SANDBOX_GPU"),
            (vec!["--modal-create-rate", "fast"], "MODAL_CREATE_RATE"),
            (vec!["--modal-app-name", "has space"], "MODAL_APP_NAME"),
            (vec!["--modal-server-url", "api.modal.com"], "MODAL_SERVER_URL"),
            (
                vec!["--sandbox-image-commands", "FROM alpine"],
                "SANDBOX_IMAGE_COMMANDS",
            ),
        ] {
            let mut f = vec!["--modal-token-id", "ak"];
            f.extend(flags.iter().copied());
            let e = build(&f, &ok).expect_err("invalid");
            assert_eq!(e.var, var, "{flags:?}: {e}");
        }
    }

    #[test]
    fn image_commands_are_lines_or_a_json_array() {
        assert_eq!(
            image_commands(Some("RUN a\n\n RUN b ")).expect("lines"),
            ["RUN a", "RUN b"]
        );
        assert_eq!(
            image_commands(Some(r#"["RUN a", "ENV X=1"]"#)).expect("json"),
            ["RUN a", "ENV X=1"]
        );
        assert!(image_commands(None).expect("none").is_empty());
    }
}
