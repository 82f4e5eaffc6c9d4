//! The `fake-runner` binary as sandboxes and runner directories run it. (Having an
//! integration test also makes `cargo test --workspace` build the binary before any test
//! runs, which the end-to-end tests rely on.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fake-runner");

#[test]
fn a_malformed_jit_config_exits_1_without_echoing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = "bm90IGEganNvbiBtYXA-secret-looking";
    let out = Command::new(BIN)
        .args(["--jitconfig", blob])
        .current_dir(dir.path())
        .env_remove("ACTIONS_RUNNER_INPUT_JITCONFIG")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fake runner:"), "{stderr}");
    assert!(!stderr.contains(blob), "the config must not be echoed: {stderr}");
}

#[test]
fn without_a_jit_config_it_says_where_one_comes_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .env_remove("ACTIONS_RUNNER_INPUT_JITCONFIG")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ACTIONS_RUNNER_INPUT_JITCONFIG"), "{stderr}");
}
