//! Where the `fake-runner` binary is: sandboxes of the fake Modal and runner copies of the
//! local backend exec it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The command that plays the Actions runner: `FAKE_RUNNER` if set, else the `fake-runner`
/// binary of the `fakes` crate, built now (once per process) by the cargo that runs these
/// tests, so that it is never stale. Outside cargo, the binary beside this one's directory.
pub fn fake_runner_command() -> Vec<String> {
    static COMMAND: OnceLock<Vec<String>> = OnceLock::new();
    COMMAND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("FAKE_RUNNER") {
                return vec![path.to_string_lossy().into_owned()];
            }
            let path = build_with_cargo().unwrap_or_else(sibling_binary);
            assert!(
                path.exists(),
                "no fake-runner binary at {}: run `cargo build -p fakes --bin fake-runner` or set FAKE_RUNNER",
                path.display()
            );
            vec![path.to_string_lossy().into_owned()]
        })
        .clone()
}

/// `cargo build -p fakes --bin fake-runner` in this binary's profile; the path it built.
fn build_with_cargo() -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO")?;
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--quiet",
        "-p",
        "fakes",
        "--bin",
        "fake-runner",
        "--message-format=json",
    ]);
    if profile_dir().is_some_and(|d| d.ends_with("release")) {
        command.arg("--release");
    }
    let output = command.output().ok()?;
    assert!(
        output.status.success(),
        "building fake-runner failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        (message["target"]["name"] == "fake-runner")
            .then(|| message["executable"].as_str().map(PathBuf::from))
            .flatten()
    })
}

/// `target/<profile>/fake-runner`, next to the directory of this test binary.
fn sibling_binary() -> PathBuf {
    profile_dir().unwrap_or_default().join("fake-runner")
}

/// `target/<profile>`: test binaries live in its `deps/`, other binaries in it.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.ends_with("deps") {
        dir.parent()?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}
