//! Where the `fake-runner` binary is: sandboxes of the fake Modal and runner copies of the
//! local backend exec it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The `fakes` crate's sources: the binary is stale when any of them is newer.
const FAKES_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fakes");

/// The command that plays the Actions runner: `FAKE_RUNNER` if set, else the `fake-runner`
/// binary of the `fakes` crate beside this binary's directory. `cargo test --workspace`
/// builds it (the `fakes` crate has an integration test); when it is missing or older than
/// the fakes' sources it is built now, once per process.
pub fn fake_runner_command() -> Vec<String> {
    static COMMAND: OnceLock<Vec<String>> = OnceLock::new();
    COMMAND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("FAKE_RUNNER") {
                return vec![path.to_string_lossy().into_owned()];
            }
            let path = sibling_binary();
            if !is_fresh(&path) {
                build(&path);
            }
            vec![path.to_string_lossy().into_owned()]
        })
        .clone()
}

/// Whether `binary` exists and is newer than every source of the fakes.
fn is_fresh(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    newest_in(Path::new(FAKES_DIR)).is_none_or(|newest| newest <= built)
}

fn newest_in(dir: &Path) -> Option<SystemTime> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                newest_in(&path)
            } else {
                entry.metadata().and_then(|m| m.modified()).ok()
            }
        })
        .max()
}

/// `cargo build -p fakes --bin fake-runner` in this binary's profile, in an environment
/// cleared of what cargo sets for tests (so that no build script sees a change and
/// rebuilds its crate).
fn build(expected: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "fakes", "--bin", "fake-runner"])
        .current_dir(FAKES_DIR)
        .env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        if let Some(value) = std::env::var_os(var) {
            command.env(var, value);
        }
    }
    if profile_dir().is_some_and(|d| d.ends_with("release")) {
        command.arg("--release");
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build fake-runner: {e}"));
    assert!(
        output.status.success() && expected.exists(),
        "building fake-runner failed (expected at {}):\n{}",
        expected.display(),
        String::from_utf8_lossy(&output.stderr)
    );
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
