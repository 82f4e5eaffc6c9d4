//! Tests of the fake through the generated client, over a real loopback connection.

mod catalog;
mod faults;
mod images;
mod sandboxes;
mod usage;
mod volumes;

use std::path::Path;
use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::{FakeModal, FakeModalConfig};
use modal_proto::modal_client_client::ModalClientClient;
use modal_proto::{
    AppGetOrCreateRequest, GenericResult, Image, ImageGetOrCreateRequest, ImageJoinStreamingRequest,
    ObjectCreationType, Sandbox, SandboxCreateRequest, SandboxTag, SandboxWaitRequest,
    SecretGetOrCreateRequest,
};

type Client = ModalClientClient<InterceptedService<Channel, Auth>>;

/// Adds the metadata every Modal client sends (docs/modal.md §1.2).
#[derive(Clone)]
struct Auth {
    token_id: String,
    token_secret: String,
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        let entries = [
            ("x-modal-token-id", self.token_id.as_str()),
            ("x-modal-token-secret", self.token_secret.as_str()),
            ("x-modal-client-type", "9"),
            ("x-modal-client-version", "1.0.0"),
        ];
        for (key, value) in entries {
            let value = value
                .parse()
                .map_err(|_| Status::invalid_argument("header value"))?;
            metadata.insert(key, value);
        }
        Ok(request)
    }
}

/// A config for tests: `runner` as the entrypoint, no rate limit, quick builds.
fn config(runner: &[&str]) -> FakeModalConfig {
    FakeModalConfig {
        runner_command: runner.iter().map(|s| (*s).to_owned()).collect(),
        create_rate_per_sec: None,
        image_build_time: Duration::from_millis(40),
        ..FakeModalConfig::default()
    }
}

async fn channel(fake: &FakeModal) -> Channel {
    Endpoint::from_shared(fake.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connects to the fake")
}

/// A client with valid credentials.
async fn client(fake: &FakeModal) -> Client {
    client_with(
        fake,
        Auth {
            token_id: fake.credentials().0,
            token_secret: fake.credentials().1,
        },
    )
    .await
}

async fn client_with(fake: &FakeModal, auth: Auth) -> Client {
    ModalClientClient::with_interceptor(channel(fake).await, auth)
}

async fn app(client: &mut Client, name: &str) -> String {
    let request = AppGetOrCreateRequest {
        app_name: name.to_owned(),
        environment_name: String::new(),
        object_creation_type: ObjectCreationType::CreateIfMissing as i32,
    };
    client
        .app_get_or_create(request)
        .await
        .expect("app created")
        .into_inner()
        .app_id
}

fn image_request(app_id: &str, commands: &[&str]) -> ImageGetOrCreateRequest {
    ImageGetOrCreateRequest {
        image: Some(Image {
            dockerfile_commands: commands.iter().map(|s| (*s).to_owned()).collect(),
            ..Image::default()
        }),
        app_id: app_id.to_owned(),
        force_build: false,
        builder_version: super::IMAGE_BUILDER_VERSION.to_owned(),
    }
}

/// Follows the build like libmodal: reopen the stream from the last entry id until a
/// result arrives. Returns the log lines and the result.
async fn follow_build(client: &mut Client, image_id: &str, timeout: f32) -> (Vec<String>, GenericResult) {
    let mut logs = Vec::new();
    let mut last_entry_id = String::new();
    for _ in 0..200 {
        let request = ImageJoinStreamingRequest {
            image_id: image_id.to_owned(),
            timeout,
            last_entry_id: last_entry_id.clone(),
            include_logs_for_finished: true,
        };
        let mut stream = client
            .image_join_streaming(request)
            .await
            .expect("join opens")
            .into_inner();
        while let Some(message) = stream.message().await.expect("stream message") {
            logs.extend(message.task_logs.iter().map(|l| l.data.trim_end().to_owned()));
            if !message.entry_id.is_empty() {
                last_entry_id = message.entry_id.clone();
            }
            if let Some(result) = message.result {
                assert!(message.eof, "the result comes with eof");
                return (logs, result);
            }
        }
    }
    panic!("the build never finished");
}

/// A successfully built `FROM alpine:3.21` image.
async fn built_image(client: &mut Client, app_id: &str) -> String {
    let response = client
        .image_get_or_create(image_request(app_id, &["FROM alpine:3.21"]))
        .await
        .expect("image accepted")
        .into_inner();
    if response.result.is_none() {
        follow_build(client, &response.image_id, 5.0).await;
    }
    response.image_id
}

async fn secret(client: &mut Client, env: &[(&str, &str)]) -> String {
    let request = SecretGetOrCreateRequest {
        object_creation_type: ObjectCreationType::Ephemeral as i32,
        env_dict: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..SecretGetOrCreateRequest::default()
    };
    client
        .secret_get_or_create(request)
        .await
        .expect("secret created")
        .into_inner()
        .secret_id
}

fn create_request(app_id: &str, image_id: &str, secret_ids: &[&str]) -> SandboxCreateRequest {
    SandboxCreateRequest {
        app_id: app_id.to_owned(),
        definition: Some(Sandbox {
            entrypoint_args: vec!["/actions-runner/run.sh".to_owned()],
            image_id: image_id.to_owned(),
            secret_ids: secret_ids.iter().map(|s| (*s).to_owned()).collect(),
            timeout_secs: 60,
            ..Sandbox::default()
        }),
        tags: Vec::new(),
    }
}

fn named(mut request: SandboxCreateRequest, name: &str) -> SandboxCreateRequest {
    if let Some(definition) = request.definition.as_mut() {
        definition.name = Some(name.to_owned());
    }
    request
}

fn tagged(mut request: SandboxCreateRequest, tags: &[(&str, &str)]) -> SandboxCreateRequest {
    request.tags = tags
        .iter()
        .map(|(name, value)| SandboxTag {
            tag_name: (*name).to_owned(),
            tag_value: (*value).to_owned(),
        })
        .collect();
    request
}

async fn create(client: &mut Client, request: SandboxCreateRequest) -> Result<String, Status> {
    Ok(client.sandbox_create(request).await?.into_inner().sandbox_id)
}

async fn wait(client: &mut Client, sandbox_id: &str, timeout: f32) -> Option<GenericResult> {
    let request = SandboxWaitRequest {
        sandbox_id: sandbox_id.to_owned(),
        timeout,
    };
    client
        .sandbox_wait(request)
        .await
        .expect("wait answers")
        .into_inner()
        .result
}

/// Polls `check` every 20 ms for up to 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
