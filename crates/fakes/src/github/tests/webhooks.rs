//! Webhook deliveries: drops, redelivery, waiting jobs, form encoding.

use super::*;

#[tokio::test]
async fn a_dropped_delivery_is_listed_as_failed_and_redelivered_with_the_same_guid() {
    let fake = start_fake().await;
    let receiver = Receiver::start().await;
    fake.set_webhook(WebhookTarget::json(&receiver.url, SECRET));
    fake.set_delivery_filter(|info| {
        if info.redelivery {
            DeliveryMode::Deliver
        } else {
            DeliveryMode::Drop
        }
    });
    let run = fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", ["self-hosted"])]));
    assert!(fake.wait_until(WAIT, |f| f.deliveries().len() == 1).await);
    assert!(receiver.seen().is_empty());

    let list = format!("/repos/{REPO}/hooks/{HOOK_ID}/deliveries");
    let failed = api(&fake, "GET", &format!("{list}?status=failure"), None)
        .await
        .json()
        .expect("json");
    let item = &failed[0];
    assert_eq!(
        (item["status_code"].as_u64(), item["redelivery"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(item["action"], "queued");
    let guid = item["guid"].as_str().expect("guid").to_owned();
    let id = item["id"].as_u64().expect("id");

    let retry = api(&fake, "POST", &format!("{list}/{id}/attempts"), None).await;
    assert_eq!(retry.status, 202);
    assert!(fake.wait_until(WAIT, |_| !receiver.seen().is_empty()).await);
    let seen = receiver.seen();
    assert_eq!(
        (seen[0].guid.as_str(), seen[0].signature_ok),
        (guid.as_str(), true)
    );
    assert_eq!(seen[0].body["workflow_job"]["id"], run.job_ids[0]);

    assert!(fake.wait_until(WAIT, |f| f.deliveries().len() == 2).await);
    let all = api(&fake, "GET", &list, None).await.json().expect("json");
    assert_eq!(
        (all[0]["redelivery"].as_bool(), all[0]["status_code"].as_u64()),
        (Some(true), Some(200))
    );
    assert_eq!(all[0]["guid"], guid.as_str());
    fake.shutdown().await;
}

#[tokio::test]
async fn a_waiting_job_is_announced_as_queued_with_status_waiting_and_requeued_on_approval() {
    let fake = start_fake().await;
    let receiver = Receiver::start().await;
    fake.set_webhook(WebhookTarget::form(&receiver.url, SECRET));
    let run = fake.queue_run(RunSpec::new(
        REPO,
        vec![JobSpec::new("deploy", ["self-hosted"]).waiting(true)],
    ));
    let job_id = run.job_ids[0];
    assert!(fake.wait_until(WAIT, |_| receiver.seen().len() == 2).await);
    assert!(fake.approve_job(job_id));
    assert!(!fake.approve_job(job_id), "only a waiting job can be approved");
    assert!(fake.wait_until(WAIT, |_| receiver.seen().len() == 3).await);
    let mut events = receiver.job_events(job_id);
    events.sort();
    let expected = [
        ("queued", "queued"),
        ("queued", "waiting"),
        ("waiting", "waiting"),
    ];
    assert_eq!(events, expected.map(|(a, s)| (a.to_owned(), s.to_owned())));
    fake.shutdown().await;
}

#[tokio::test]
async fn a_duplicated_delivery_arrives_twice_with_one_guid_and_pings_are_signed() {
    let fake = start_fake().await;
    let receiver = Receiver::start().await;
    fake.set_webhook(WebhookTarget::json(&receiver.url, SECRET));
    fake.set_delivery_filter(|info| {
        if info.event == "workflow_job" {
            DeliveryMode::Duplicate
        } else {
            DeliveryMode::Deliver
        }
    });
    fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", ["self-hosted"])]));
    let ping = fake.send_ping(REPO).expect("known repo");
    assert!(fake.wait_until(WAIT, |_| receiver.seen().len() == 3).await);
    let seen = receiver.seen();
    let jobs: Vec<&Received> = seen.iter().filter(|r| r.event == "workflow_job").collect();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].guid, jobs[1].guid);
    let pinged = seen.iter().find(|r| r.event == "ping").expect("ping");
    assert_eq!(pinged.guid, ping.to_string());
    assert!(seen.iter().all(|r| r.signature_ok));
    assert!(
        fake.wait_until(WAIT, |f| f.deliveries().iter().filter(|d| d.is_success()).count()
            == 3)
            .await
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_receiver_is_recorded_as_a_failed_delivery_and_never_retried() {
    let fake = start_fake().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    fake.set_webhook(WebhookTarget::json(url, SECRET));
    fake.queue_run(RunSpec::new(REPO, vec![JobSpec::new("build", ["self-hosted"])]));
    assert!(fake.wait_until(WAIT, |f| f.deliveries().len() == 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let deliveries = fake.deliveries();
    assert_eq!(deliveries.len(), 1, "GitHub does not retry");
    assert_eq!(deliveries[0].status_code, None);
    assert!(!deliveries[0].is_success());
    fake.shutdown().await;
}
