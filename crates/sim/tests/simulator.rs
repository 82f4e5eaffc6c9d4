//! The demo a newcomer runs after the quick start.

use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sim");

#[tokio::test]
async fn the_simulator_runs_the_whole_loop_without_credentials() {
    let run = tokio::process::Command::new(BIN)
        .args([
            "simulate",
            "--jobs",
            "8",
            "--job-secs",
            "0.5",
            "--label-sets",
            "1",
            // 8 sandboxes at once against 2 creates a second: unpaced, they would be refused.
            "--modal-rate",
            "2",
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("finishes")
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("jobs completed          8/8"), "{text}");
    assert!(
        text.contains("rate-limit errors       GitHub 0 / Modal 0"),
        "{text}"
    );
    assert!(
        text.contains("Modal allows 2 creates a second, the load asks 8 (it would hit the limit unpaced)"),
        "zero errors must come from a load that could hit the limit: {text}"
    );
    assert!(text.contains("left behind             nothing"), "{text}");
}
