//! A fake GitHub Actions runner: plays `run.sh --jitconfig <blob>` against
//! the fake GitHub (docs/github.md §4).
//!
//! Like the real listener it takes the JIT config from `--jitconfig` or from
//! `ACTIONS_RUNNER_INPUT_JITCONFIG` (and then removes that variable from its
//! environment), decodes it into `.runner`, `.credentials` and
//! `.credentials_rsaparams`, writes them into its root, and talks to the
//! `ServerUrl` in `.runner` with the OAuth client id from `.credentials`. It
//! takes at most one job (JIT runners are ephemeral), reports it and exits.
//! A malformed config is an error, which the binary turns into exit code 1.
//! The config and the client id are secrets: they are never logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use crate::github::client::{HttpClient, HttpError, HttpResponse};
use crate::github::jitconfig::{JitConfig, JitConfigError};

/// The real runner's environment input for the JIT config.
pub const JITCONFIG_ENV: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
/// Pause between two "any job for me?" polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Pause between two job-lock renewals while working.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(1);
/// Give up when the service stays unreachable this long.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);
/// Timeout of one call to the service.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the fake runner failed.
#[derive(Debug, thiserror::Error)]
pub enum FakeRunnerError {
    #[error("no JIT config: pass --jitconfig or set {JITCONFIG_ENV}")]
    MissingJitConfig,
    #[error(transparent)]
    InvalidJitConfig(#[from] JitConfigError),
    #[error("cannot write runner file {path}: {source}")]
    WriteFile { path: PathBuf, source: std::io::Error },
    #[error("cannot determine the runner directory: {0}")]
    WorkingDirectory(std::io::Error),
    #[error("the Actions service rejected the runner credentials")]
    Unauthorized,
    #[error("unexpected HTTP {status} from {endpoint}")]
    UnexpectedStatus { endpoint: &'static str, status: u16 },
    #[error("malformed answer from {endpoint}")]
    MalformedAnswer { endpoint: &'static str },
    #[error("the Actions service is unreachable: {0}")]
    Unreachable(HttpError),
}

/// Runs the fake runner in the current directory.
pub async fn run(jitconfig_arg: Option<String>) -> Result<(), FakeRunnerError> {
    let dir = std::env::current_dir().map_err(FakeRunnerError::WorkingDirectory)?;
    run_in(&dir, jitconfig_arg).await
}

/// Runs the fake runner with `dir` as its root (tests use a temp dir).
pub async fn run_in(dir: &Path, jitconfig_arg: Option<String>) -> Result<(), FakeRunnerError> {
    let encoded = jitconfig_arg
        .or_else(take_env_jitconfig)
        .ok_or(FakeRunnerError::MissingJitConfig)?;
    let (config, files) = JitConfig::decode(&encoded)?;
    for (name, content) in &files {
        write_private(&dir.join(name), content).await?;
    }
    let session = Session::new(&config);
    tracing::info!(runner = %config.settings.agent_name, "fake runner configured");
    session.serve().await
}

/// Reads the JIT config from the environment and removes it, as the real
/// runner does, so the job's processes cannot read it.
#[allow(unsafe_code)]
fn take_env_jitconfig() -> Option<String> {
    let value = std::env::var(JITCONFIG_ENV).ok()?;
    // SAFETY: the fake runner reads its environment once at start-up, before
    // it spawns anything that could read the environment concurrently.
    unsafe { std::env::remove_var(JITCONFIG_ENV) };
    Some(value)
}

/// Writes a runner file readable by the owner only (it holds secrets).
async fn write_private(path: &Path, content: &[u8]) -> Result<(), FakeRunnerError> {
    let error = |source| FakeRunnerError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await.map_err(error)?;
    tokio::io::AsyncWriteExt::write_all(&mut file, content)
        .await
        .map_err(error)?;
    tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(error)
}

/// Instructions from `connect`.
#[derive(Debug, Deserialize)]
struct ConnectAnswer {
    behavior: String,
}

/// A job from `acquire`.
#[derive(Debug, Deserialize)]
struct Assignment {
    job_id: u64,
    duration_ms: u64,
}

/// The runner's connection to the fake Actions service.
struct Session {
    client: HttpClient,
    base: String,
    name: String,
    credentials: serde_json::Value,
}

impl Session {
    fn new(config: &JitConfig) -> Self {
        let base = config.settings.server_url_v2.trim_end_matches('/').to_owned();
        Self {
            client: HttpClient::new(CALL_TIMEOUT),
            base,
            name: config.settings.agent_name.clone(),
            credentials: json!({
                "agent_id": config.settings.agent_id,
                "client_id": config.credentials.client_id,
            }),
        }
    }

    /// connect → poll → work → complete.
    async fn serve(&self) -> Result<(), FakeRunnerError> {
        let Some(answer) = self.call("connect", None).await? else {
            tracing::info!(runner = %self.name, "registration removed before connecting; exiting");
            return Ok(());
        };
        let connect: ConnectAnswer = parse(&answer, "connect")?;
        match connect.behavior.as_str() {
            "never_connect" => {
                tracing::info!(runner = %self.name, "told to hang before connecting");
                std::future::pending::<()>().await;
                Ok(())
            }
            "exit_without_job" => {
                tracing::info!(runner = %self.name, "connected; exiting without a job as told");
                Ok(())
            }
            behavior => {
                tracing::info!(runner = %self.name, "connected; listening for a job");
                let Some(job) = self.wait_for_job().await? else {
                    return Ok(());
                };
                self.work(job).await?;
                if behavior == "linger_after_job" {
                    tracing::info!(runner = %self.name, "job done; lingering as told");
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }
    }

    /// Polls until a job arrives; `None` when the registration is deleted.
    async fn wait_for_job(&self) -> Result<Option<Assignment>, FakeRunnerError> {
        loop {
            match self.call("acquire", None).await? {
                None => {
                    tracing::info!(runner = %self.name, "registration deleted; exiting");
                    return Ok(None);
                }
                Some(answer) if answer.status == 200 => return parse(&answer, "acquire").map(Some),
                Some(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// "Runs" the job, renewing its lock, then reports it.
    async fn work(&self, job: Assignment) -> Result<(), FakeRunnerError> {
        tracing::info!(runner = %self.name, job_id = job.job_id, "running job");
        let deadline = Instant::now() + Duration::from_millis(job.duration_ms);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(RENEW_INTERVAL)).await;
            if Instant::now() < deadline && self.call("renew", Some(job.job_id)).await?.is_none() {
                tracing::info!(runner = %self.name, job_id = job.job_id, "job cancelled; exiting");
                return Ok(());
            }
        }
        match self.call("complete", Some(job.job_id)).await? {
            Some(_) => tracing::info!(runner = %self.name, job_id = job.job_id, "job completed"),
            None => tracing::info!(runner = %self.name, job_id = job.job_id, "job was cancelled"),
        }
        Ok(())
    }

    /// One call, retried while the service is unreachable. `None` = 410 Gone.
    async fn call(
        &self,
        endpoint: &'static str,
        job_id: Option<u64>,
    ) -> Result<Option<HttpResponse>, FakeRunnerError> {
        let mut body = self.credentials.clone();
        if let (Some(job_id), Some(map)) = (job_id, body.as_object_mut()) {
            map.insert("job_id".into(), job_id.into());
        }
        let url = format!("{}/{endpoint}", self.base);
        let started = Instant::now();
        loop {
            match self.client.post_json(&url, &body).await {
                Ok(answer) => return classify(endpoint, answer),
                Err(error) if started.elapsed() >= UNREACHABLE_AFTER => {
                    return Err(FakeRunnerError::Unreachable(error));
                }
                Err(error) => {
                    tracing::debug!(runner = %self.name, %error, endpoint, "Actions service unreachable; retrying");
                    tokio::time::sleep(POLL_INTERVAL * 5).await;
                }
            }
        }
    }
}

/// Maps an answer: 2xx → it, 410 → `None`, 401 → error, others → error.
fn classify(endpoint: &'static str, answer: HttpResponse) -> Result<Option<HttpResponse>, FakeRunnerError> {
    match answer.status {
        200..=299 => Ok(Some(answer)),
        410 => Ok(None),
        401 => Err(FakeRunnerError::Unauthorized),
        status => Err(FakeRunnerError::UnexpectedStatus { endpoint, status }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    answer: &HttpResponse,
    endpoint: &'static str,
) -> Result<T, FakeRunnerError> {
    serde_json::from_slice(&answer.body).map_err(|_| FakeRunnerError::MalformedAnswer { endpoint })
}

/// Writes `run.sh` into `dir`: a launcher that execs `command` (the `fake-runner` binary,
/// or a program and the arguments that make it play the runner) followed by its own
/// arguments, so `./run.sh --jitconfig X` works as with the real runner.
pub fn make_runner_dir(dir: &Path, command: &[String]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let quoted: Vec<String> = command.iter().map(|word| shell_quote(word)).collect();
    let script = format!("#!/bin/sh\nexec {} \"$@\"\n", quoted.join(" "));
    let path = dir.join("run.sh");
    std::fs::write(&path, script)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Single-quotes `text` for `sh` (`'` becomes `'\''`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fake-runner-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn the_launcher_script_quotes_the_binary_path_and_is_executable() {
        let dir = temp_dir("launcher");
        make_runner_dir(&dir, &["/opt/it's here/bin".into(), "fake-runner".into()]).expect("written");
        let script = std::fs::read_to_string(dir.join("run.sh")).expect("read");
        assert_eq!(
            script,
            "#!/bin/sh\nexec '/opt/it'\\''s here/bin' 'fake-runner' \"$@\"\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("run.sh"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_malformed_jit_config_is_an_error() {
        let dir = temp_dir("malformed");
        let result = run_in(&dir, Some("definitely not a jit config".into())).await;
        assert!(matches!(result, Err(FakeRunnerError::InvalidJitConfig(_))));
        let _ = std::fs::remove_dir_all(dir);
    }
}
