//! The local backend against real processes in temporary directories.

use std::time::Duration;

use secrecy::SecretString;

use super::adopt::Meta;
use super::*;

fn runner_dir(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run.sh");
    std::fs::write(&run, format!("#!/bin/sh\n{script}\n")).expect("write run.sh");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn spec(name: &str, timeout: Duration) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        jit_config: SecretString::from("c2VjcmV0"),
        tags: vec![],
        timeout,
        machine: Default::default(),
    }
}

async fn wait_gone(b: &LocalBackend, name: &str) {
    for _ in 0..200 {
        if b.list().await.expect("list").iter().all(|s| s.name != name) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sandbox {name} still listed");
}

#[tokio::test]
async fn a_runner_gets_the_jit_config_in_its_environment_and_its_directory_is_removed() {
    // Arrange: run.sh records what it was given in a file outside its own directory.
    let out = tempfile::tempdir().expect("tempdir");
    let seen = out.path().join("seen");
    let rd = runner_dir(&format!(
        "echo \"args=$# root=$RUNNER_ALLOW_RUNASROOT jit=$ACTIONS_RUNNER_INPUT_JITCONFIG token=${{GITHUB_TOKEN:-none}}\" > {}",
        seen.display()
    ));
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(LocalConfig {
        runner_dir: rd.path().into(),
        work_dir: work.path().into(),
        deployment: "test".into(),
    });
    b.prepare().await.expect("prepare");

    // Act
    let id = b
        .create(spec("r-1-1", Duration::from_secs(30)))
        .await
        .expect("create");
    wait_gone(&b, &id).await;

    // Assert
    let text = std::fs::read_to_string(&seen).expect("run.sh ran");
    assert_eq!(text.trim(), "args=0 root=1 jit=c2VjcmV0 token=none");
    assert!(!work.path().join("r-1-1").exists(), "the copy is removed");
    assert!(!work.path().join("r-1-1.json").exists());
}

#[tokio::test]
async fn create_is_idempotent_on_the_name_and_terminate_kills_the_process_group() {
    let rd = runner_dir("sleep 30 & sleep 30");
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(LocalConfig {
        runner_dir: rd.path().into(),
        work_dir: work.path().into(),
        deployment: "test".into(),
    });
    b.prepare().await.expect("prepare");
    let first = b
        .create(spec("r-2-1", Duration::from_secs(30)))
        .await
        .expect("create");
    let second = b
        .create(spec("r-2-1", Duration::from_secs(30)))
        .await
        .expect("create again");
    assert_eq!(first, second);
    assert_eq!(b.list().await.expect("list").len(), 1);
    let meta: Meta =
        serde_json::from_slice(&std::fs::read(work.path().join("r-2-1.json")).expect("meta")).expect("json");

    b.terminate(&first).await.expect("terminate");

    assert!(b.list().await.expect("list").is_empty());
    assert!(
        !group_has_live_process(meta.pid),
        "no process of the group is left"
    );
    assert!(!work.path().join("r-2-1").exists());
    b.terminate(&first)
        .await
        .expect("terminating a gone sandbox is fine");
}

#[tokio::test]
async fn a_sandbox_is_stopped_at_its_timeout() {
    let rd = runner_dir("exec sleep 30");
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(LocalConfig {
        runner_dir: rd.path().into(),
        work_dir: work.path().into(),
        deployment: "test".into(),
    });
    b.prepare().await.expect("prepare");
    b.create(spec("r-3-1", Duration::from_millis(300)))
        .await
        .expect("create");
    wait_gone(&b, "r-3-1").await;
    assert!(!work.path().join("r-3-1").exists());
}

#[tokio::test]
async fn a_new_backend_adopts_running_sandboxes_and_clears_dead_ones() {
    let rd = runner_dir("exec sleep 30");
    let work = tempfile::tempdir().expect("tempdir");
    let config = LocalConfig {
        runner_dir: rd.path().into(),
        work_dir: work.path().into(),
        deployment: "test".into(),
    };
    let first = LocalBackend::new(config.clone());
    first.prepare().await.expect("prepare");
    first
        .create(spec("r-4-1", Duration::from_secs(30)))
        .await
        .expect("create");
    // A dead sandbox's leftovers and a half-made copy.
    std::fs::create_dir(work.path().join("r-5-1")).expect("dir");
    std::fs::write(
        work.path().join("r-5-1.json"),
        br#"{"name":"r-5-1","pid":999999,"start_ticks":1,"created_at":0,"deadline":0}"#,
    )
    .expect("meta");
    std::fs::create_dir(work.path().join("r-6-1")).expect("dir");

    // Act: a second backend over the same directory, as after a restart.
    let second = LocalBackend::new(config);
    second.prepare().await.expect("prepare");

    // Assert
    let names: Vec<String> = second
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["r-4-1"]);
    assert!(!work.path().join("r-5-1").exists());
    assert!(!work.path().join("r-6-1").exists());
    second.terminate("r-4-1").await.expect("terminate adopted");
    assert!(!work.path().join("r-4-1").exists());
}

#[tokio::test]
async fn a_backend_adopts_only_its_own_deployments_sandboxes_from_a_shared_work_directory() {
    let rd = runner_dir("exec sleep 30");
    let work = tempfile::tempdir().expect("tempdir");
    let config = |deployment: &str| LocalConfig {
        runner_dir: rd.path().into(),
        work_dir: work.path().into(),
        deployment: deployment.into(),
    };
    let theirs = LocalBackend::new(config("a"));
    theirs.prepare().await.expect("prepare");
    theirs
        .create(spec("a-1-1", Duration::from_secs(30)))
        .await
        .expect("create");
    let meta: Meta = serde_json::from_slice(&std::fs::read(work.path().join("a-1-1.json")).expect("meta"))
        .expect("parses");
    assert_eq!(meta.deployment.as_deref(), Some("a"));

    // Act: another deployment starts over the same directory.
    let ours = LocalBackend::new(config("b"));
    ours.prepare().await.expect("prepare");

    // Assert: it neither lists, stops nor removes the other's sandbox.
    assert!(ours.list().await.expect("list").is_empty());
    assert!(work.path().join("a-1-1").exists() && work.path().join("a-1-1.json").exists());
    assert_eq!(
        theirs.list().await.expect("list").len(),
        1,
        "still running for its own deployment"
    );
    theirs.terminate("a-1-1").await.expect("terminate");
}

#[tokio::test]
async fn a_runner_directory_without_run_sh_is_a_permanent_error() {
    let empty = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(LocalConfig {
        runner_dir: empty.path().into(),
        work_dir: work.path().into(),
        deployment: "test".into(),
    });
    let err = b.prepare().await.expect_err("no run.sh");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("run.sh"));
}
