//! `SandboxGetStats` and `SandboxGetLogs` (costs and failure logs, issue 13 items 4, 5).

use super::*;
use modal_proto::{Resources, SandboxGetLogsRequest, SandboxGetStatsRequest, SandboxGetStatsResponse};

async fn stats(client: &mut Client, sandbox_id: &str) -> SandboxGetStatsResponse {
    let request = SandboxGetStatsRequest {
        sandbox_id: sandbox_id.to_owned(),
        since: None,
        until: None,
    };
    client
        .sandbox_get_stats(request)
        .await
        .expect("stats answer")
        .into_inner()
}

/// A finished sandbox of 1 core and 2 GiB that printed `output`.
async fn finished(fake: &FakeModal, client: &mut Client, output: &str) -> String {
    let app_id = app(client, "runners").await;
    let image_id = built_image(client, &app_id).await;
    let mut request = create_request(&app_id, &image_id, &[]);
    if let Some(d) = request.definition.as_mut() {
        d.resources = Some(Resources {
            milli_cpu: 1000,
            memory_mb: 2048,
            gpu_config: None,
        });
    }
    let id = create(client, request).await.expect("created");
    assert!(wait(client, &id, 10.0).await.is_some(), "{output} ran");
    eventually("its output is recorded", || {
        fake.sandbox(&id)
            .and_then(|s| s.finished)
            .is_some_and(|f| f.log_tail.is_some())
    })
    .await;
    id
}

#[tokio::test]
async fn stats_arrive_after_the_configured_delay_and_then_cover_the_sandboxs_life() {
    let fake = FakeModal::start(config(&["/bin/sh", "-c", "sleep 0.3"]))
        .await
        .expect("fake");
    let mut client = client(&fake).await;
    fake.set_stats_delay(Duration::from_secs(3600));
    let id = finished(&fake, &mut client, "sleep").await;
    let early = stats(&mut client, &id).await;
    assert_eq!(
        (early.cost.as_deref(), early.num_datapoints),
        (None, 0),
        "{early:?}"
    );

    fake.set_stats_delay(Duration::ZERO);
    let late = stats(&mut client, &id).await;
    let view = fake.sandbox(&id).expect("sandbox");
    let secs = late.duration_hours * 3600.0;
    assert!((0.3..5.0).contains(&secs), "{late:?}");
    assert!((late.billed_cpu_core_seconds - secs).abs() < 1e-6);
    assert!((late.billed_memory_gib_seconds - 2.0 * secs).abs() < 1e-6);
    let cost: f64 = late.cost.as_deref().expect("cost").parse().expect("decimal");
    let expected = secs * (0.000_039_42 + 2.0 * 0.000_006_72);
    assert!((cost - expected).abs() < 1e-8, "{cost} vs {expected}");
    assert!(late.cost_by_resource.contains_key("CPU") && late.cost_by_resource.contains_key("Memory"));
    let until = late.until.expect("until");
    assert!(until.seconds as f64 + 1.0 >= view.created_at_unix + secs);
}

#[tokio::test]
async fn logs_stream_the_recorded_output_then_eof() {
    let fake = FakeModal::start(config(&[
        "/bin/sh",
        "-c",
        "echo out-line; echo err-line >&2; exit 2",
    ]))
    .await
    .expect("fake");
    let mut client = client(&fake).await;
    let id = finished(&fake, &mut client, "echo").await;
    let request = SandboxGetLogsRequest {
        sandbox_id: id.clone(),
        file_descriptor: 1,
        timeout: 5.0,
        last_entry_id: String::new(),
    };
    let mut stream = client.sandbox_get_logs(request).await.expect("logs").into_inner();
    let mut text = String::new();
    let mut eof = false;
    let mut last = String::new();
    while let Some(batch) = stream.message().await.expect("batch") {
        text.extend(batch.items.iter().map(|i| i.data.clone()));
        last = batch.entry_id.clone();
        eof |= batch.eof;
    }
    assert!(eof, "the stream ends with eof");
    assert!(text.contains("out-line") && text.contains("err-line"), "{text}");
    // Resuming from the last entry gives nothing new, and eof again.
    let again = SandboxGetLogsRequest {
        sandbox_id: id,
        file_descriptor: 1,
        timeout: 5.0,
        last_entry_id: last,
    };
    let mut stream = client.sandbox_get_logs(again).await.expect("logs").into_inner();
    let batch = stream.message().await.expect("batch").expect("one");
    assert!(batch.items.is_empty() && batch.eof, "{batch:?}");
}
