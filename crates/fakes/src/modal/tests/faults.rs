//! The creation rate limit, injected faults, latency and shutdown.

use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use prost::Message as _;
use tonic::Code;

use super::*;
use crate::modal::{FaultKind, ModalFault, RETRY_POLICY_TYPE_URL};
use modal_proto::{RpcRetryPolicy, RpcStatus, SandboxGetFromNameRequest};

#[tokio::test]
async fn creations_beyond_the_rate_are_refused_and_admissions_are_paced() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    fake.set_create_rate(Some(5.0));

    // Act: ten creates at once, then retry the refused ones every 50 ms.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut client = client.clone();
        let request = create_request(&app_id, &image_id, &[]);
        burst.spawn(async move { create(&mut client, request).await });
    }
    let outcomes = burst.join_all().await;
    let refused: Vec<Status> = outcomes.into_iter().filter_map(Result::err).collect();
    let mut pending = refused.len();
    while pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if create(&mut client, create_request(&app_id, &image_id, &[]))
            .await
            .is_ok()
        {
            pending -= 1;
        }
    }

    // Assert
    assert_eq!(refused.len(), 9, "burst 1: only the first is admitted");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "Sandbox creation rate limit (5/s) exceeded");
    }
    let times = fake.create_times();
    assert_eq!(times.len(), 10);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(199), "admissions {gap:?} apart");
    }
    assert!(fake.rate_limit_errors() >= 9);
    assert_eq!(fake.sandboxes().len(), 10);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_resource_exhausted_fault_carries_a_decodable_retry_policy() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    fake.inject(ModalFault::new(
        "AppGetOrCreate",
        1,
        FaultKind::ResourceExhausted {
            retry_after_secs: Some(1.5),
        },
    ));
    fake.inject(ModalFault::new(
        "*",
        1,
        FaultKind::ResourceExhausted {
            retry_after_secs: None,
        },
    ));

    // Act
    let throttled = client
        .app_get_or_create(AppGetOrCreateRequest {
            app_name: "runners".to_owned(),
            environment_name: String::new(),
            object_creation_type: ObjectCreationType::CreateIfMissing as i32,
        })
        .await
        .expect_err("throttled");
    let plain = client
        .secret_get_or_create(SecretGetOrCreateRequest {
            object_creation_type: ObjectCreationType::Ephemeral as i32,
            ..SecretGetOrCreateRequest::default()
        })
        .await
        .expect_err("throttled");
    let app_id = app(&mut client, "runners").await;

    // Assert
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    let details = RpcStatus::decode(throttled.details()).expect("RPCStatus in the details");
    assert_eq!(details.code, 8);
    let any = details
        .details
        .iter()
        .find(|any| any.type_url.ends_with("/modal.client.RPCRetryPolicy"))
        .expect("a retry policy");
    assert_eq!(any.type_url, RETRY_POLICY_TYPE_URL);
    let policy = RpcRetryPolicy::decode(any.value.as_slice()).expect("policy decodes");
    assert!((policy.retry_after_secs - 1.5).abs() < f32::EPSILON);
    assert_eq!(plain.code(), Code::ResourceExhausted);
    assert!(
        plain.details().is_empty(),
        "no retry hint without retry_after_secs"
    );
    assert!(app_id.starts_with("ap-"), "the rules are used up");
    fake.shutdown().await;
}

#[tokio::test]
async fn after_success_leaves_a_running_sandbox_while_the_caller_gets_the_error() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    fake.inject(ModalFault::new(
        "SandboxCreate",
        1,
        FaultKind::AfterSuccess(Code::Unavailable),
    ));

    // Act
    let lost = create(
        &mut client,
        named(create_request(&app_id, &image_id, &[]), "job-7"),
    )
    .await;
    let found = client
        .sandbox_get_from_name(SandboxGetFromNameRequest {
            sandbox_name: "job-7".to_owned(),
            environment_name: String::new(),
            app_name: "runners".to_owned(),
        })
        .await;
    let retried = create(
        &mut client,
        named(create_request(&app_id, &image_id, &[]), "job-7"),
    )
    .await;

    // Assert
    assert_eq!(lost.expect_err("response lost").code(), Code::Unavailable);
    let sandboxes = fake.sandboxes();
    assert_eq!(sandboxes.len(), 1);
    assert!(sandboxes[0].is_running());
    assert_eq!(found.expect("it exists").into_inner().sandbox_id, sandboxes[0].id);
    assert_eq!(retried.expect_err("name taken").code(), Code::AlreadyExists);
    fake.shutdown().await;
}

#[tokio::test]
async fn status_and_delay_faults_apply_after_auth_and_are_recorded() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    fake.inject(ModalFault::new(
        "SandboxCreate",
        1,
        FaultKind::Status(Code::Internal, "boom".into()),
    ));
    fake.inject(ModalFault::new(
        "SandboxCreate",
        1,
        FaultKind::Delay(Duration::from_millis(150)),
    ));

    // Act
    let failed = create(&mut client, create_request(&app_id, &image_id, &[])).await;
    let started = Instant::now();
    let delayed = create(&mut client, create_request(&app_id, &image_id, &[])).await;
    let elapsed = started.elapsed();

    // Assert
    let failed = failed.expect_err("injected");
    assert_eq!((failed.code(), failed.message()), (Code::Internal, "boom"));
    assert!(delayed.is_ok());
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert_eq!(fake.sandboxes().len(), 1, "the failed create did nothing");
    let codes: Vec<Code> = fake
        .requests()
        .iter()
        .filter(|c| c.rpc == "SandboxCreate")
        .map(|c| c.code)
        .collect();
    assert_eq!(codes, [Code::Internal, Code::Ok]);
    fake.shutdown().await;
}

#[tokio::test]
async fn cleared_faults_no_longer_fire() {
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    fake.inject(ModalFault::new(
        "AppGetOrCreate",
        100,
        FaultKind::Status(Code::Unavailable, "no healthy upstream".into()),
    ));
    let outage = client
        .app_get_or_create(AppGetOrCreateRequest {
            app_name: "runners".into(),
            environment_name: String::new(),
            object_creation_type: ObjectCreationType::CreateIfMissing as i32,
        })
        .await;
    assert_eq!(outage.map(|_| ()).map_err(|s| s.code()), Err(Code::Unavailable));

    fake.clear_faults();

    assert!(!app(&mut client, "runners").await.is_empty());
    fake.shutdown().await;
}

#[tokio::test]
async fn create_latency_delays_the_answer() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    fake.set_create_latency(Duration::from_millis(200));

    // Act
    let started = Instant::now();
    create(&mut client, create_request(&app_id, &image_id, &[]))
        .await
        .expect("created");

    // Assert
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!((fake.running_count(), fake.peak_running()), (1, 1));
    fake.shutdown().await;
}

#[tokio::test]
async fn shutdown_kills_every_sandbox_process() {
    // Arrange
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = FakeModal::start(config(&[
        "/bin/sh",
        "-c",
        r#"echo $$ > "$OUT_FILE"; exec sleep 30"#,
    ]))
    .await
    .expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    let mut pid_files = Vec::new();
    for index in 0..3 {
        let path = dir.path().join(format!("pid-{index}"));
        let env = secret(&mut client, &[("OUT_FILE", path.to_str().expect("utf-8"))]).await;
        create(&mut client, create_request(&app_id, &image_id, &[&env]))
            .await
            .expect("created");
        pid_files.push(path);
    }
    for path in &pid_files {
        eventually("the entrypoint wrote its pid", || {
            read(path).trim().parse::<i32>().is_ok()
        })
        .await;
    }
    assert_eq!(fake.peak_running(), 3);

    // Act
    fake.shutdown().await;

    // Assert
    for path in &pid_files {
        let pid = Pid::from_raw(read(path).trim().parse().expect("pid"));
        assert_eq!(kill(pid, None), Err(Errno::ESRCH), "process {pid} is gone");
    }
}
