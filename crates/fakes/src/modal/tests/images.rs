//! Image builds: caching by recipe, log streaming, failures.

use tonic::Code;

use super::*;
use crate::modal::{FaultKind, ModalFault};
use modal_proto::generic_result::GenericStatus;

#[tokio::test]
async fn one_recipe_is_built_once_however_often_it_is_requested() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let recipe = ["FROM alpine:3.21", "RUN apk add git"];

    // Act
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = client
            .image_get_or_create(image_request(&app_id, &recipe))
            .await
            .expect("accepted")
            .into_inner();
        assert!(response.result.is_none(), "still building");
        ids.push(response.image_id);
    }
    let other = client
        .image_get_or_create(image_request(&app_id, &["FROM alpine:3.20"]))
        .await
        .expect("accepted")
        .into_inner();
    follow_build(&mut client, &ids[0], 5.0).await;
    let again = client
        .image_get_or_create(image_request(&app_id, &recipe))
        .await
        .expect("accepted")
        .into_inner();
    let mut forced = image_request(&app_id, &recipe);
    forced.force_build = true;
    let forced = client
        .image_get_or_create(forced)
        .await
        .expect("accepted")
        .into_inner();

    // Assert
    assert!(ids[0].starts_with("im-"));
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_ne!(other.image_id, ids[0]);
    assert_eq!(again.image_id, ids[0]);
    let result = again.result.expect("an existing image answers with its result");
    assert_eq!(result.status, GenericStatus::Success as i32);
    assert_ne!(forced.image_id, ids[0]);
    assert_eq!(fake.image_builds(), 3, "two recipes plus one forced build");
    fake.shutdown().await;
}

#[tokio::test]
async fn join_streaming_delivers_the_logs_then_success() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = client
        .image_get_or_create(image_request(&app_id, &["FROM alpine:3.21", "RUN true"]))
        .await
        .expect("accepted")
        .into_inner()
        .image_id;

    // Act
    let (logs, result) = follow_build(&mut client, &image_id, 5.0).await;

    // Assert
    assert_eq!(logs[0], "Step 1/2 : FROM alpine:3.21");
    assert_eq!(logs[1], "Step 2/2 : RUN true");
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert_eq!(result.status, GenericStatus::Success as i32);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_join_stream_ends_without_result_at_its_timeout_and_resumes_from_the_last_entry() {
    // Arrange
    let mut settings = config(&[]);
    settings.image_build_time = Duration::from_millis(500);
    let fake = FakeModal::start(settings).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let commands = ["FROM alpine:3.21", "RUN a", "RUN b", "RUN c"];
    let image_id = client
        .image_get_or_create(image_request(&app_id, &commands))
        .await
        .expect("accepted")
        .into_inner()
        .image_id;

    // Act: 0.01 s is below the minimum wait; the server clamps it to 0.05 s.
    let started = std::time::Instant::now();
    let (logs, result) = follow_build(&mut client, &image_id, 0.01).await;

    // Assert
    assert_eq!(result.status, GenericStatus::Success as i32);
    assert_eq!(logs.len(), 5, "every line exactly once: {logs:?}");
    assert_eq!(logs[3], "Step 4/4 : RUN c");
    let joins = fake
        .requests()
        .iter()
        .filter(|c| c.rpc == "ImageJoinStreaming")
        .count();
    assert!(joins >= 3, "the client had to reopen the stream ({joins} joins)");
    assert!(started.elapsed() >= Duration::from_millis(400));
    fake.shutdown().await;
}

/// What one `ImageJoinStreaming` call brought: its log lines and last entry id, the
/// result if any, and how it ended (`None`: cleanly).
struct Joined {
    messages: usize,
    logs: Vec<String>,
    last_entry_id: Option<String>,
    result: Option<GenericResult>,
    error: Option<Code>,
}

async fn join_once(client: &mut Client, image_id: &str, last_entry_id: &str) -> Joined {
    let request = ImageJoinStreamingRequest {
        image_id: image_id.to_owned(),
        timeout: 5.0,
        last_entry_id: last_entry_id.to_owned(),
        include_logs_for_finished: true,
    };
    let mut stream = client
        .image_join_streaming(request)
        .await
        .expect("join opens")
        .into_inner();
    let mut joined = Joined {
        messages: 0,
        logs: Vec::new(),
        last_entry_id: None,
        result: None,
        error: None,
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                joined.messages += 1;
                joined
                    .logs
                    .extend(message.task_logs.iter().map(|l| l.data.trim_end().to_owned()));
                if !message.entry_id.is_empty() {
                    joined.last_entry_id = Some(message.entry_id);
                }
                if message.result.is_some() {
                    joined.result = message.result;
                }
            }
            Ok(None) => return joined,
            Err(status) => {
                joined.error = Some(status.code());
                return joined;
            }
        }
    }
}

#[tokio::test]
async fn a_join_stream_broken_mid_build_resumes_after_the_last_delivered_entry() {
    // Arrange: the first two streams reset after one message, the third closes empty.
    let mut settings = config(&[]);
    settings.image_build_time = Duration::from_millis(400);
    let fake = FakeModal::start(settings).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let commands = ["FROM alpine:3.21", "RUN a", "RUN b", "RUN c"];
    let image_id = client
        .image_get_or_create(image_request(&app_id, &commands))
        .await
        .expect("accepted")
        .into_inner()
        .image_id;
    let reset = FaultKind::BreakStream {
        after_messages: 1,
        code: Some(Code::Unavailable),
    };
    fake.inject(ModalFault::new("ImageJoinStreaming", 2, reset));
    let closed = FaultKind::BreakStream {
        after_messages: 0,
        code: None,
    };
    fake.inject(ModalFault::new("ImageJoinStreaming", 1, closed));

    // Act: reopen from the last entry id, like a client, until the result.
    let mut ends = Vec::new();
    let mut messages = Vec::new();
    let mut logs = Vec::new();
    let mut last_entry_id = String::new();
    let mut result = None;
    while result.is_none() && ends.len() < 50 {
        let joined = join_once(&mut client, &image_id, &last_entry_id).await;
        logs.extend(joined.logs);
        last_entry_id = joined.last_entry_id.unwrap_or(last_entry_id);
        result = joined.result;
        ends.push(joined.error);
        messages.push(joined.messages);
    }

    // Assert
    assert_eq!(
        &ends[..3],
        [Some(Code::Unavailable), Some(Code::Unavailable), None]
    );
    assert_eq!(
        &messages[..3],
        [1, 1, 0],
        "each cut stream brought what the fault allowed"
    );
    assert_eq!(result.expect("a result").status, GenericStatus::Success as i32);
    let mut expected: Vec<String> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| format!("Step {}/4 : {c}", i + 1))
        .collect();
    expected.push(format!("Built image {image_id}"));
    assert_eq!(logs, expected, "every line exactly once, in order");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_unary_answer_cut_before_its_message_is_lost_but_the_call_was_performed() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let cut = FaultKind::BreakStream {
        after_messages: 0,
        code: Some(Code::Internal),
    };
    fake.inject(ModalFault::new("AppGetOrCreate", 1, cut));

    // Act
    let lost = app_request(&mut client, "runners").await;
    let again = app_request(&mut client, "runners").await;

    // Assert
    assert_eq!(lost.expect_err("cut").code(), Code::Internal);
    assert!(again.is_ok());
    assert_eq!(fake.apps().len(), 1, "the first call created the app");
    fake.shutdown().await;
}

async fn app_request(client: &mut Client, name: &str) -> Result<String, Status> {
    let request = modal_proto::AppGetOrCreateRequest {
        app_name: name.to_owned(),
        environment_name: String::new(),
        object_creation_type: modal_proto::ObjectCreationType::CreateIfMissing as i32,
    };
    client
        .app_get_or_create(request)
        .await
        .map(|r| r.into_inner().app_id)
}

#[tokio::test]
async fn a_failing_build_reports_failure_with_the_message() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    fake.fail_image_builds(Some("registry said no".to_owned()));

    // Act
    let image_id = client
        .image_get_or_create(image_request(&app_id, &["FROM ghcr.io/x/y:1"]))
        .await
        .expect("accepted")
        .into_inner()
        .image_id;
    let (logs, result) = follow_build(&mut client, &image_id, 5.0).await;
    let create = create(&mut client, create_request(&app_id, &image_id, &[])).await;
    fake.fail_image_builds(None);
    let retried = client
        .image_get_or_create(image_request(&app_id, &["FROM ghcr.io/x/y:1"]))
        .await
        .expect("accepted")
        .into_inner();

    // Assert
    assert_eq!(result.status, GenericStatus::Failure as i32);
    assert_eq!(result.exception, "registry said no");
    assert!(logs.iter().any(|l| l.contains("registry said no")), "{logs:?}");
    assert_eq!(create.expect_err("no image").code(), Code::FailedPrecondition);
    assert_ne!(retried.image_id, image_id, "a failed build is not reused");
    assert_eq!(fake.image_builds(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn bad_recipes_unknown_apps_and_unknown_images_are_refused() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;

    // Act
    let no_from = client
        .image_get_or_create(image_request(&app_id, &["RUN echo hi"]))
        .await;
    let empty = client.image_get_or_create(image_request(&app_id, &[])).await;
    let unknown_app = client
        .image_get_or_create(image_request("ap-0000000000000000000000", &["FROM alpine"]))
        .await;
    let unknown_image = client
        .image_join_streaming(ImageJoinStreamingRequest {
            image_id: "im-0000000000000000000000".to_owned(),
            timeout: 1.0,
            ..ImageJoinStreamingRequest::default()
        })
        .await;

    // Assert
    assert_eq!(no_from.expect_err("no FROM").code(), Code::InvalidArgument);
    assert_eq!(empty.expect_err("empty").code(), Code::InvalidArgument);
    assert_eq!(unknown_app.expect_err("unknown app").code(), Code::NotFound);
    assert_eq!(unknown_image.expect_err("unknown image").code(), Code::NotFound);
    assert_eq!(fake.image_builds(), 0);
    fake.shutdown().await;
}
