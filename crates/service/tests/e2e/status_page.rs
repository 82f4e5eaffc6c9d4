//! The status page as an operator sees it: loaded in a real headless Chromium against a
//! service with jobs in several states; the test reads the rendered text, not the HTML.

use std::path::PathBuf;
use std::time::Duration;

use fakes::github::{JobSpec, RunSpec};
use testkit::Browser;

use crate::helpers::{BIN, Kind, Options, REPO, SECRET, World, wait};

/// `target/` of this build, where CI keeps the screenshot.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-… → target/
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

#[tokio::test]
async fn the_status_page_shows_running_waiting_refused_and_finished_jobs_in_a_real_browser() {
    // Arrange: one job running, one GitHub holds back (its runner idles), one done, and one
    // whose labels GitHub would refuse.
    let env = World::start(Options::default()).await;
    let running = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("long build", ["self-hosted", "modal"]).duration(Duration::from_secs(60))],
    ));
    let held = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("held", ["self-hosted", "modal", "held"]).dispatch_group("held", 0)],
    ));
    let done = env.github.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("quick", ["self-hosted", "modal"]).duration(Duration::from_millis(100))],
    ));
    let many: Vec<String> = (0..101)
        .map(|i| format!("l{i}"))
        .chain(["modal".into()])
        .collect();
    let refused = env
        .github
        .queue_run(RunSpec::new(REPO, vec![JobSpec::new("odd", many)]));
    let settled = wait(Duration::from_secs(30), || {
        let jobs = env.github.jobs();
        let status = |id: u64| {
            jobs.iter()
                .find(|j| j.id == id)
                .map(|j| j.status.as_str().to_string())
        };
        status(running.job_ids[0]).as_deref() == Some("in_progress")
            && status(done.job_ids[0]).as_deref() == Some("completed")
            && env.github.registrations_ever().len() >= 3
    })
    .await;
    assert!(settled, "{}", env.tail_logs(30));

    // Act: a phone-sized window, as an operator on call would open it.
    let mut browser = Browser::open(&env.url("/status"), 412, 915).await;
    let text = browser.text().await;
    browser.screenshot(&target_dir().join("status-page.png")).await;

    // Assert: what the page shows, line by line as rendered.
    assert!(text.contains("Open jobs (3)"), "{text}");
    // The first row of a job: in "Open jobs" while it is open, else in "Recent jobs".
    let line_of = |id: u64| {
        text.lines()
            .find(|l| l.starts_with(&format!("{REPO}\t{id}\t")))
            .unwrap_or_else(|| panic!("job {id} is not shown:\n{text}"))
            .to_string()
    };
    assert!(
        line_of(running.job_ids[0]).contains("running on modal-"),
        "{text}"
    );
    assert!(line_of(held.job_ids[0]).contains("is running"), "{text}");
    assert!(
        line_of(refused.job_ids[0]).contains("refused: the job asks for 102 labels"),
        "{text}"
    );
    assert!(text.contains("Live runners (2)"), "{text}");
    assert!(text.contains("Recent jobs"), "{text}");
    assert!(line_of(done.job_ids[0]).contains("success"), "{text}");
    assert!(
        text.contains("GitHub headroom (token): ") && text.contains("calls left"),
        "{text}"
    );
    // One replica on SQLite: it leads, named by its default REPLICA_ID (hostname-pid; the
    // service runs in this process).
    let this_replica = format!("-{}", std::process::id());
    assert!(
        text.lines()
            .any(|l| l.starts_with("Leader: ") && l.trim_end().ends_with(&this_replica)),
        "{text}"
    );
    assert!(!text.contains(SECRET), "the webhook secret is not shown");
    assert!(
        target_dir()
            .join("status-page.png")
            .metadata()
            .expect("screenshot")
            .len()
            > 1000
    );
}

/// The open jobs' `why` by id, from a status JSON document.
fn whys(json: &serde_json::Value) -> Vec<(u64, String)> {
    json["open_jobs"]
        .as_array()
        .expect("open jobs")
        .iter()
        .filter_map(|j| Some((j["id"].as_u64()?, j["why"].as_str()?.to_string())))
        .collect()
}

/// `status --json` run as an operator runs it beside the service: with its environment.
async fn status_command(env: &World) -> serde_json::Value {
    let (vars, url) = (env.env_vars(), env.database_url());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["status", "--json", "--database-url", &url])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .envs(vars)
            .output()
            .expect("status runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

#[tokio::test]
async fn jobs_the_machine_policy_refuses_show_the_planners_reason_on_the_page_its_json_and_status() {
    // Arrange: the Modal backend without Docker and with two images; one job each that
    // asks for Docker and for an image nobody defined.
    let env = World::start(Options::backend(Kind::Modal).with(
        "SANDBOX_IMAGES",
        "node=node:22-bookworm,cuda=nvidia/cuda:12.4.1-runtime-ubuntu22.04",
    ))
    .await;
    let labels = |extra: &'static str| ["self-hosted", "modal", extra];
    let run = env.github.queue_run(RunSpec::new(
        REPO,
        vec![
            JobSpec::new("compose", labels("docker")),
            JobSpec::new("odd image", labels("image=unknown")),
        ],
    ));
    let (docker, image) = (run.job_ids[0], run.job_ids[1]);
    let docker_why = "refused: label docker: Docker is not enabled in this deployment's runner image; \
                      the operator enables it with SANDBOX_DOCKER=true";
    let image_why = "refused: image=unknown is not in SANDBOX_IMAGES (node,cuda)";
    let refused = wait(Duration::from_secs(20), || {
        env.logs()
            .iter()
            .filter(|l| l.contains("job gets no runner"))
            .count()
            >= 2
    })
    .await;
    assert!(refused, "{}", env.tail_logs(30));

    // Act: the JSON twin, `status --json` and the page in a browser.
    let page: serde_json::Value = testkit::reqwest_client()
        .get(env.url("/status.json"))
        .send()
        .await
        .expect("status.json answers")
        .json()
        .await
        .expect("JSON");
    let command = status_command(&env).await;
    let mut browser = Browser::open(&env.url("/status"), 1280, 900).await;
    let text = browser.text().await;

    // Assert: each says what the planner decided, in the planner's words.
    for json in [&page, &command] {
        let whys = whys(json);
        assert!(whys.contains(&(docker, docker_why.to_string())), "{json}");
        assert!(whys.contains(&(image, image_why.to_string())), "{json}");
    }
    for (id, why) in [(docker, docker_why), (image, image_why)] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{REPO}\t{id}\t")) && l.trim_end().ends_with(why)),
            "job {id} does not say {why:?}:\n{text}"
        );
    }
    assert_eq!(
        env.fake_modal().sandboxes().len(),
        0,
        "refused jobs get no sandbox"
    );
    env.github.cancel_job(docker);
    env.github.cancel_job(image);
    env.assert_nothing_left(Duration::from_secs(20)).await;
}
