//! The local backend against real processes in temporary directories.

use std::time::Duration;

use secrecy::SecretString;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{User, geteuid};

use super::adopt::Meta;
use super::identity::runner_env;
use super::process::start_ticks;
use super::*;

fn runner_dir(script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run.sh");
    std::fs::write(&run, format!("#!/bin/sh\n{script}\n")).expect("write run.sh");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn spec(name: &str, timeout: Duration) -> SandboxSpec {
    SandboxSpec {
        name: name.into(),
        repo: "octo/local".into(),
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
    let b = LocalBackend::new(config(rd.path(), work.path()));
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
    let b = LocalBackend::new(config(rd.path(), work.path()));
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
    let b = LocalBackend::new(config(rd.path(), work.path()));
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
    let config = config(rd.path(), work.path());
    let first = LocalBackend::new(config.clone());
    first.prepare().await.expect("prepare");
    first
        .create(spec("r-4-1", Duration::from_secs(30)))
        .await
        .expect("create");
    // A dead sandbox's leftovers, and a copy whose process never started (its metadata
    // is written before the copy is made).
    std::fs::create_dir(work.path().join("r-5-1")).expect("dir");
    std::fs::write(
        work.path().join("r-5-1.json"),
        br#"{"name":"r-5-1","pid":999999,"start_ticks":1,"created_at":0,"deadline":0}"#,
    )
    .expect("meta");
    std::fs::create_dir(work.path().join("r-6-1")).expect("dir");
    std::fs::write(
        work.path().join("r-6-1.json"),
        br#"{"name":"r-6-1","pid":0,"start_ticks":null,"created_at":0,"deadline":0}"#,
    )
    .expect("meta");

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
        run_as: None,
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
    let b = LocalBackend::new(config(empty.path(), work.path()));
    let err = b.prepare().await.expect_err("no run.sh");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("run.sh"));
}

fn config(runner_dir: &Path, work_dir: &Path) -> LocalConfig {
    LocalConfig {
        runner_dir: runner_dir.into(),
        work_dir: work_dir.into(),
        run_as: None,
        deployment: "test".into(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").mode() & 0o7777
}

#[tokio::test]
async fn the_work_directory_is_created_private_to_the_services_user() {
    let rd = runner_dir("true");
    let parent = tempfile::tempdir().expect("tempdir");
    let work = parent.path().join("a").join("work");

    LocalBackend::new(config(rd.path(), &work))
        .prepare()
        .await
        .expect("prepare");

    assert_eq!(mode(&work), 0o700);
    assert_eq!(std::fs::metadata(&work).expect("stat").uid(), geteuid().as_raw());
}

#[tokio::test]
async fn a_work_directory_writable_by_others_is_refused_and_left_as_it_is() {
    let rd = runner_dir("true");
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(work.path().join("r-1-1.json"), b"{}").expect("planted file");

    let err = LocalBackend::new(config(rd.path(), work.path()))
        .prepare()
        .await
        .expect_err("a world-writable work directory");

    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains("LOCAL_WORK_DIR"), "{text}");
    assert!(text.contains("writable by group or others (mode 777)"), "{text}");
    assert_eq!(mode(work.path()), 0o777, "not changed");
    assert!(work.path().join("r-1-1.json").exists(), "nothing in it touched");
}

#[tokio::test]
async fn a_work_directory_owned_by_another_user_is_refused() {
    let rd = runner_dir("true");
    let scratch = tempfile::tempdir().expect("tempdir");
    // As root a fresh directory can be given to `nobody`; otherwise `/` is root's, which
    // is another user then.
    let work = if geteuid().is_root() {
        let nobody = User::from_name("nobody").expect("lookup").expect("a nobody user");
        std::os::unix::fs::chown(scratch.path(), Some(nobody.uid.as_raw()), None).expect("chown");
        scratch.path().to_path_buf()
    } else {
        Path::new("/").to_path_buf()
    };

    let err = LocalBackend::new(config(rd.path(), &work))
        .prepare()
        .await
        .expect_err("another user's work directory");

    let text = err.to_string();
    assert!(text.contains("is owned by uid"), "{text}");
    assert!(text.contains("not by the service's user"), "{text}");
}

#[tokio::test]
async fn a_metadata_file_naming_a_path_outside_is_ignored_and_nothing_outside_is_touched() {
    let rd = runner_dir("true");
    let parent = tempfile::tempdir().expect("tempdir");
    let work = parent.path().join("work");
    std::fs::create_dir(&work).expect("work");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let outside = parent.path().join("x");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("keep"), b"precious").expect("file");
    // `...json` names `..`, as its file name says: only the name check stops it.
    // `r-1-1.json` names `r-2-1`, a directory no metadata of its own says we made.
    std::fs::create_dir(work.join("r-2-1")).expect("dir");
    let planted = [
        ("evil.json", "../x"),
        ("x.json", "../x"),
        ("...json", ".."),
        ("r-1-1.json", "r-2-1"),
    ];
    for (file, name) in planted {
        let meta = format!(r#"{{"name":"{name}","pid":0,"start_ticks":null,"created_at":0,"deadline":0}}"#);
        std::fs::write(work.join(file), meta).expect("meta");
    }

    LocalBackend::new(config(rd.path(), &work))
        .prepare()
        .await
        .expect("prepare");

    assert_eq!(std::fs::read(outside.join("keep")).expect("kept"), b"precious");
    assert!(work.join("r-2-1").exists());
    for (file, _) in planted {
        assert!(work.join(file).exists(), "{file} is not ours and is left alone");
    }
}

#[tokio::test]
async fn an_unrelated_directory_in_the_work_directory_survives_start_up() {
    let rd = runner_dir("true");
    let work = tempfile::tempdir().expect("tempdir");
    // One looks like a runner's copy, but no metadata file says the service made it.
    for dir in ["r-6-1", "notes"] {
        std::fs::create_dir(work.path().join(dir)).expect("dir");
        std::fs::write(work.path().join(dir).join("file"), b"mine").expect("file");
    }

    LocalBackend::new(config(rd.path(), work.path()))
        .prepare()
        .await
        .expect("prepare");

    for dir in ["r-6-1", "notes"] {
        assert!(work.path().join(dir).join("file").exists(), "{dir} survives");
    }
}

/// A process of someone else's in its own process group, so signalling the group a
/// metadata file names would reach it.
fn stranger() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("spawn sleep")
}

/// Writes metadata naming `pid`, prepares a backend over it, and says whether the
/// process survived and whether the backend took it over.
async fn prepare_over(pid: u32, ticks: Option<u64>) -> (bool, usize) {
    let rd = runner_dir("true");
    let work = tempfile::tempdir().expect("tempdir");
    let meta = Meta {
        name: RunnerName::parse("r-8-1").expect("name"),
        pid: i32::try_from(pid).expect("pid"),
        start_ticks: ticks,
        created_at: 0,
        deadline: i64::MAX,
        deployment: None,
    };
    std::fs::write(
        work.path().join("r-8-1.json"),
        serde_json::to_vec(&meta).expect("json"),
    )
    .expect("meta");
    let b = LocalBackend::new(config(rd.path(), work.path()));

    b.prepare().await.expect("prepare");

    let listed = b.list().await.expect("list").len();
    // A signal sent by `prepare` (or a task it started) has landed by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alive = start_ticks(i32::try_from(pid).expect("pid")).is_some();
    (alive, listed)
}

#[tokio::test]
async fn a_pid_whose_start_time_differs_is_neither_adopted_nor_signalled() {
    let mut other = stranger();
    let ticks = start_ticks(i32::try_from(other.id()).expect("pid")).expect("running");

    let (alive, listed) = prepare_over(other.id(), Some(ticks + 1)).await;

    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(listed, 0, "not adopted");
    assert!(alive, "not signalled");
}

#[tokio::test]
async fn a_missing_start_time_means_the_process_is_not_ours() {
    let mut other = stranger();

    let (alive, listed) = prepare_over(other.id(), None).await;

    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(listed, 0, "not adopted");
    assert!(alive, "not signalled");
}

#[tokio::test]
async fn a_sandbox_name_that_is_not_a_runner_name_is_refused() {
    let rd = runner_dir("true");
    let parent = tempfile::tempdir().expect("tempdir");
    let work = parent.path().join("work");
    let b = LocalBackend::new(config(rd.path(), &work));
    b.prepare().await.expect("prepare");

    let err = b
        .create(spec("../escaped", Duration::from_secs(30)))
        .await
        .expect_err("a path for a name");

    assert!(!err.is_transient());
    assert!(err.to_string().contains("not a runner name"), "{err}");
    assert!(!parent.path().join("escaped").exists());
}

fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

/// A service environment with every secret the service may be given.
const SERVICE_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/bin:/bin"),
    ("HOME", "/root"),
    ("USER", "root"),
    ("TMPDIR", "/var/tmp"),
    ("GITHUB_TOKEN", "ghp_secret"),
    ("GITHUB_APP_PRIVATE_KEY", "-----BEGIN"),
    ("WEBHOOK_SECRET", "hook"),
    ("MODAL_TOKEN_ID", "ak-1"),
    ("MODAL_TOKEN_SECRET", "as-1"),
    ("DATABASE_URL", "sqlite:///var/lib/store.db"),
];

#[test]
fn the_services_secrets_never_reach_a_runners_environment() {
    let user = RunAs {
        name: "runner".into(),
        uid: 1001,
        gid: 1001,
        home: "/home/runner".into(),
    };
    for run_as in [None, Some(&user)] {
        let env = runner_env(vars(SERVICE_ENV), run_as, "jit");

        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        for secret in [
            "GITHUB_TOKEN",
            "GITHUB_APP_PRIVATE_KEY",
            "WEBHOOK_SECRET",
            "MODAL_TOKEN_ID",
            "MODAL_TOKEN_SECRET",
            "DATABASE_URL",
        ] {
            assert!(!keys.contains(&secret), "{secret} passed with run_as {run_as:?}");
        }
        assert!(env.contains(&("PATH".into(), "/usr/bin:/bin".into())));
        assert!(env.contains(&("ACTIONS_RUNNER_INPUT_JITCONFIG".into(), "jit".into())));
    }
}

#[test]
fn a_runner_run_as_another_user_gets_that_users_identity_not_the_services() {
    let user = RunAs {
        name: "runner".into(),
        uid: 1001,
        gid: 1001,
        home: "/home/runner".into(),
    };

    let env = runner_env(vars(SERVICE_ENV), Some(&user), "jit");

    let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("HOME"), Some("/home/runner"));
    assert_eq!(get("USER"), Some("runner"));
    assert_eq!(get("LOGNAME"), Some("runner"));
    assert_eq!(
        get("TMPDIR"),
        None,
        "the service's temporary directory is not the runner's"
    );
    assert_eq!(get("RUNNER_ALLOW_RUNASROOT"), None);
}

/// A runner that writes its uid and whether it can read the service's environment into
/// `out/seen`.
fn spy_runner(out: &Path) -> tempfile::TempDir {
    runner_dir(&format!(
        "echo \"uid=$(id -u) home=$HOME user=$USER environ=$(cat /proc/{}/environ >/dev/null 2>&1 && echo readable || echo denied)\" > {}",
        std::process::id(),
        out.join("seen").display()
    ))
}

async fn run_spy(b: &LocalBackend, out: &Path, name: &str) -> String {
    b.create(spec(name, Duration::from_secs(30)))
        .await
        .expect("create");
    wait_gone(b, name).await;
    std::fs::read_to_string(out.join("seen")).expect("run.sh ran")
}

#[tokio::test]
async fn without_local_run_as_a_runner_can_read_the_services_environment() {
    // What the README warns about: a job runs as the service's user.
    let out = tempfile::tempdir().expect("tempdir");
    let rd = spy_runner(out.path());
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(config(rd.path(), work.path()));
    b.prepare().await.expect("prepare");

    let seen = run_spy(&b, out.path(), "r-9-1").await;

    assert!(seen.contains(&format!("uid={} ", geteuid())), "{seen}");
    assert!(seen.contains("environ=readable"), "{seen}");
}

#[tokio::test]
async fn with_local_run_as_the_runner_runs_as_that_user_and_cannot_read_the_service() {
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let rd = spy_runner(out.path());
    let work = tempfile::tempdir().expect("tempdir");
    let b = LocalBackend::new(LocalConfig {
        run_as: Some("nobody".into()),
        ..config(rd.path(), work.path())
    });

    let prepared = b.prepare().await;

    if !geteuid().is_root() {
        // Switching users needs root: say so at start-up instead of running as the service.
        let err = prepared.expect_err("not root");
        assert!(
            err.to_string().contains("needs the service to run as root"),
            "{err}"
        );
        return;
    }
    prepared.expect("prepare");
    let nobody = User::from_name("nobody").expect("lookup").expect("a nobody user");
    let work_meta = std::fs::metadata(work.path()).expect("stat");
    assert_eq!(
        work_meta.mode() & 0o7777,
        0o710,
        "only the runners' group may pass"
    );
    assert_eq!(work_meta.gid(), nobody.gid.as_raw());
    let seen = run_spy(&b, out.path(), "r-9-2").await;
    assert_eq!(
        seen.trim(),
        format!(
            "uid={} home={} user=nobody environ=denied",
            nobody.uid,
            nobody.dir.display()
        )
    );
}

#[tokio::test]
async fn local_run_as_naming_an_unknown_user_or_the_services_own_is_refused_at_start() {
    let rd = runner_dir("true");
    let work = tempfile::tempdir().expect("tempdir");
    let me = User::from_uid(geteuid())
        .expect("lookup")
        .expect("the service's user");
    for (user, says) in [
        ("no-such-user-x", "there is no such user"),
        (me.name.as_str(), "the service's own user"),
    ] {
        let b = LocalBackend::new(LocalConfig {
            run_as: Some(user.into()),
            ..config(rd.path(), work.path())
        });

        let err = b.prepare().await.expect_err(user);

        assert!(!err.is_transient());
        assert!(err.to_string().contains(says), "{err}");
    }
}
