use std::time::Duration;

use super::*;
use crate::store::testdb::TestDb;

#[tokio::test]
async fn on_postgres_the_status_shows_the_lease_holder_with_its_token_and_expiry() {
    let Some(db) = TestDb::postgres("status_lease").await else {
        return;
    };
    let s = db.open().await;
    let (first, since) = s
        .acquire_lease("a", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("a leads");

    let st = gather(&s, 10, Live::default()).await.expect("gather");

    let leader = st.leader.clone().expect("a leader");
    assert_eq!((leader.replica.as_str(), leader.since), ("a", since));
    assert_eq!(leader.token, Some(first));
    let expires = leader.expires.expect("an expiry");
    assert!(
        expires > since + 50_000 && expires <= since + 61_000,
        "a 60 s lease taken at {since} expires at {expires}"
    );
    let json = serde_json::to_value(&st).expect("json");
    assert_eq!(json["leader"]["token"], serde_json::json!(first));
    assert_eq!(json["leader"]["expires"], serde_json::json!(expires));
    assert!(
        render_text(&st).contains(&format!("lease token {first} until {expires}")),
        "{}",
        render_text(&st)
    );

    // Given up and taken by another replica: the new term's token is shown.
    s.release_lease("a", first).await.expect("release");
    let none = gather(&s, 10, Live::default()).await.expect("gather");
    assert!(none.leader.is_none(), "nobody holds a live lease");
    let (second, _) = s
        .acquire_lease("b", Duration::from_secs(60))
        .await
        .expect("acquire")
        .expect("b leads");
    let st = gather(&s, 10, Live::default()).await.expect("gather");
    let leader = st.leader.expect("b leads");
    assert_eq!((leader.replica.as_str(), leader.token), ("b", Some(second)));
    assert!(second > first);
}

#[tokio::test]
async fn on_sqlite_the_status_shows_the_running_replica_without_a_lease() {
    let db = TestDb::sqlite();
    let s = db.open().await;
    let live = Live {
        leader: Some(Leader {
            replica: "only".into(),
            since: 1_764_460_800_000,
            token: None,
            expires: None,
        }),
        ..Live::default()
    };

    let st = gather(&s, 10, live).await.expect("gather");

    let leader = st.leader.clone().expect("this replica");
    assert_eq!(
        (leader.replica.as_str(), leader.token, leader.expires),
        ("only", None, None)
    );
    assert!(!render_text(&st).contains("lease token"), "{}", render_text(&st));
}
