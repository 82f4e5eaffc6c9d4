//! Sandboxes: the entrypoint process, names, terminate, timeouts, listing.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tonic::Code;

use super::*;
use modal_proto::generic_result::GenericStatus;
use modal_proto::{
    GpuConfig, Resources, SandboxGetFromNameRequest, SandboxListRequest, SandboxTerminateRequest,
};

/// An App and a built image on a fresh fake running `runner`.
async fn world(runner: &[&str]) -> (FakeModal, Client, String, String) {
    let fake = FakeModal::start(config(runner)).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    (fake, client, app_id, image_id)
}

async fn terminate(client: &mut Client, sandbox_id: &str) -> Result<Option<GenericResult>, Status> {
    let request = SandboxTerminateRequest {
        sandbox_id: sandbox_id.to_owned(),
    };
    Ok(client
        .sandbox_terminate(request)
        .await?
        .into_inner()
        .existing_result)
}

fn status_of(result: Option<GenericResult>) -> GenericStatus {
    let status = result.expect("finished").status;
    GenericStatus::try_from(status).expect("known status")
}

#[tokio::test]
async fn create_runs_the_command_with_the_secrets_env() {
    // Arrange
    let script = r#"printf '%s|%s|%s' "$GREETING" "$MODAL_SANDBOX_ID" "$PWD" > "$OUT_FILE""#;
    let (fake, mut client, app_id, image_id) = world(&["/bin/sh", "-c", script]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let out_text = out.to_str().expect("utf-8 path");
    let first = secret(&mut client, &[("GREETING", "hello"), ("OUT_FILE", out_text)]).await;
    let second = secret(&mut client, &[("GREETING", "hi")]).await;
    let mut request = tagged(
        create_request(&app_id, &image_id, &[&first, &second]),
        &[("pool", "linux")],
    );
    if let Some(definition) = request.definition.as_mut() {
        definition.resources = Some(Resources {
            milli_cpu: 2000,
            memory_mb: 4096,
            gpu_config: Some(GpuConfig {
                r#type: 0,
                count: 2,
                gpu_type: "H100".to_owned(),
            }),
        });
    }

    // Act
    let sandbox_id = create(&mut client, request).await.expect("created");
    let result = wait(&mut client, &sandbox_id, 10.0).await;

    // Assert
    assert_eq!(status_of(result), GenericStatus::Success);
    let written = read(&out);
    let fields: Vec<&str> = written.split('|').collect();
    assert_eq!(
        fields[..2],
        ["hi", sandbox_id.as_str()],
        "later secrets win: {written}"
    );
    let workdir = std::path::PathBuf::from(fields[2]);
    assert!(workdir.starts_with(std::env::temp_dir()), "{written}");
    eventually("the sandbox directory is removed", || !workdir.exists()).await;

    let view = fake.sandbox(&sandbox_id).expect("recorded");
    assert!(sandbox_id.starts_with("sb-") && sandbox_id.len() == 25);
    assert_eq!(view.entrypoint_args, ["/actions-runner/run.sh"]);
    assert_eq!(view.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(view.secret_ids, [first, second]);
    assert_eq!(view.tag("pool"), Some("linux"));
    assert_eq!(view.resources.gpu.as_deref(), Some("H100:2"));
    assert_eq!((view.resources.milli_cpu, view.resources.memory_mb), (2000, 4096));
    assert_eq!(view.timeout_secs, 60);
    assert_eq!(view.finished.expect("finished").exitcode, 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_failing_command_finishes_with_failure_and_its_exit_code() {
    // Arrange
    let (fake, mut client, app_id, image_id) =
        world(&["/bin/sh", "-c", "echo 'runner broke' >&2; exit 3"]).await;

    // Act
    let sandbox_id = create(&mut client, create_request(&app_id, &image_id, &[]))
        .await
        .expect("created");
    let result = wait(&mut client, &sandbox_id, 10.0).await.expect("finished");

    // Assert
    assert_eq!(result.status, GenericStatus::Failure as i32);
    assert_eq!(result.exitcode, 3);
    eventually("the output is kept", || {
        fake.sandbox(&sandbox_id)
            .and_then(|v| v.finished)
            .and_then(|f| f.log_tail)
            .is_some_and(|tail| tail.contains("runner broke"))
    })
    .await;
    fake.shutdown().await;
}

#[tokio::test]
async fn names_are_unique_among_running_sandboxes_and_reusable_afterwards() {
    // Arrange
    let (fake, mut client, app_id, image_id) = world(&["/bin/sh", "-c", "sleep 1"]).await;
    let by_name = || SandboxGetFromNameRequest {
        sandbox_name: "job-42".to_owned(),
        environment_name: String::new(),
        app_name: "runners".to_owned(),
    };

    // Act
    let first = create(
        &mut client,
        named(create_request(&app_id, &image_id, &[]), "job-42"),
    )
    .await;
    let clash = create(
        &mut client,
        named(create_request(&app_id, &image_id, &[]), "job-42"),
    )
    .await;
    let found = client.sandbox_get_from_name(by_name()).await;
    let first = first.expect("created");
    let finished = wait(&mut client, &first, 10.0).await;
    let gone = client.sandbox_get_from_name(by_name()).await;
    let reused = create(
        &mut client,
        named(create_request(&app_id, &image_id, &[]), "job-42"),
    )
    .await;

    // Assert
    let clash = clash.expect_err("name taken");
    assert_eq!(clash.code(), Code::AlreadyExists);
    assert_eq!(clash.message(), "Sandbox with name job-42 already exists");
    assert_eq!(found.expect("found").into_inner().sandbox_id, first);
    assert_eq!(status_of(finished), GenericStatus::Success);
    assert_eq!(gone.expect_err("finished").code(), Code::NotFound);
    assert_ne!(reused.expect("reusable"), first);
    fake.shutdown().await;
}

#[tokio::test]
async fn terminate_kills_a_long_running_sandbox_and_is_idempotent() {
    // Arrange
    let (fake, mut client, app_id, image_id) =
        world(&["/bin/sh", "-c", r#"echo $$ > "$OUT_FILE"; exec sleep 30"#]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("pid");
    let env = secret(&mut client, &[("OUT_FILE", out.to_str().expect("utf-8"))]).await;
    let sandbox_id = create(&mut client, create_request(&app_id, &image_id, &[&env]))
        .await
        .expect("created");
    eventually("the entrypoint wrote its pid", || {
        read(&out).trim().parse::<i32>().is_ok()
    })
    .await;
    let pid = Pid::from_raw(read(&out).trim().parse().expect("pid"));

    // Act
    let first = terminate(&mut client, &sandbox_id).await.expect("terminated");
    let result = wait(&mut client, &sandbox_id, 5.0).await;
    let second = terminate(&mut client, &sandbox_id)
        .await
        .expect("terminated again");
    let unknown = terminate(&mut client, "sb-0000000000000000000000").await;

    // Assert
    assert!(first.is_none(), "it was running");
    assert_eq!(status_of(result), GenericStatus::Terminated);
    assert_eq!(kill(pid, None), Err(Errno::ESRCH), "the process is gone");
    assert_eq!(status_of(second), GenericStatus::Terminated);
    assert_eq!(unknown.expect_err("unknown").code(), Code::NotFound);
    assert_eq!(fake.running_count(), 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn timeout_secs_is_enforced() {
    // Arrange
    let (fake, mut client, app_id, image_id) = world(&["/bin/sh", "-c", "exec sleep 30"]).await;
    let mut request = create_request(&app_id, &image_id, &[]);
    let mut too_long = request.clone();
    if let (Some(short), Some(long)) = (request.definition.as_mut(), too_long.definition.as_mut()) {
        short.timeout_secs = 1;
        long.timeout_secs = 86_401;
    }

    // Act
    let refused = create(&mut client, too_long).await;
    let sandbox_id = create(&mut client, request).await.expect("created");
    let polled = wait(&mut client, &sandbox_id, 0.0).await;
    let result = wait(&mut client, &sandbox_id, 5.0).await;

    // Assert
    assert_eq!(refused.expect_err("over 24 h").code(), Code::InvalidArgument);
    assert!(polled.is_none(), "a poll returns at once while running");
    assert_eq!(status_of(result), GenericStatus::Timeout);
    fake.shutdown().await;
}

#[tokio::test]
async fn create_checks_the_app_image_secrets_and_name() {
    // Arrange
    let (fake, mut client, app_id, image_id) = world(&[]).await;
    let unknown = "xx-0000000000000000000000";
    let bad_name = named(create_request(&app_id, &image_id, &[]), "no spaces allowed");

    // Act
    let no_app = create(&mut client, create_request(unknown, &image_id, &[])).await;
    let no_image = create(&mut client, create_request(&app_id, unknown, &[])).await;
    let no_secret = create(&mut client, create_request(&app_id, &image_id, &[unknown])).await;
    let bad_name = create(&mut client, bad_name).await;

    // Assert
    assert_eq!(no_app.expect_err("app").code(), Code::NotFound);
    assert_eq!(no_image.expect_err("image").code(), Code::FailedPrecondition);
    assert_eq!(no_secret.expect_err("secret").code(), Code::NotFound);
    assert_eq!(bad_name.expect_err("name").code(), Code::InvalidArgument);
    assert!(fake.sandboxes().is_empty());
    fake.shutdown().await;
}

fn list_request(app_id: &str, before: f64, include_finished: bool) -> SandboxListRequest {
    SandboxListRequest {
        app_id: app_id.to_owned(),
        before_timestamp: before,
        environment_name: String::new(),
        include_finished,
        tags: vec![SandboxTag {
            tag_name: "pool".to_owned(),
            tag_value: "a".to_owned(),
        }],
    }
}

#[tokio::test]
async fn list_filters_by_tags_hides_finished_ones_and_pages() {
    // Arrange: sandboxes without entrypoint live until terminated.
    let mut settings = config(&[]);
    settings.list_page_size = 2;
    let fake = FakeModal::start(settings).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    let mut pool_a = Vec::new();
    for _ in 0..5 {
        let request = tagged(
            create_request(&app_id, &image_id, &[]),
            &[("pool", "a"), ("x", "y")],
        );
        pool_a.push(create(&mut client, request).await.expect("created"));
    }
    let request = tagged(create_request(&app_id, &image_id, &[]), &[("pool", "b")]);
    create(&mut client, request).await.expect("created");
    terminate(&mut client, &pool_a[4]).await.expect("terminated");

    // Act: page like libmodal until an empty page.
    let mut pages = Vec::new();
    let mut before = 0.0;
    loop {
        let page = client
            .sandbox_list(list_request(&app_id, before, true))
            .await
            .expect("listed")
            .into_inner()
            .sandboxes;
        let Some(last) = page.last() else { break };
        before = last.created_at;
        pages.push(page);
    }
    let running = client
        .sandbox_list(list_request(&app_id, 0.0, false))
        .await
        .expect("listed")
        .into_inner()
        .sandboxes;
    let unknown = client
        .sandbox_list(list_request("ap-0000000000000000000000", 0.0, false))
        .await;

    // Assert
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let listed: Vec<&str> = pages.iter().flatten().map(|s| s.id.as_str()).collect();
    let newest_first: Vec<&str> = pool_a.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let newest = &pages[0][0];
    let task = newest.task_info.as_ref().expect("task info");
    let result = task.result.as_ref().expect("finished");
    assert_eq!(result.status, GenericStatus::Terminated as i32);
    assert_eq!(newest.app_id, app_id);
    let running: Vec<&str> = running.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(running, newest_first[1..3], "first page of running ones");
    assert_eq!(unknown.expect_err("unknown app").code(), Code::NotFound);
    fake.shutdown().await;
}
