//! Authentication, Apps, environments and secrets.

use tonic::Code;

use super::*;
use modal_proto::EnvironmentGetOrCreateRequest;

fn lookup_app(name: &str) -> AppGetOrCreateRequest {
    AppGetOrCreateRequest {
        app_name: name.to_owned(),
        environment_name: "main".to_owned(),
        object_creation_type: ObjectCreationType::Unspecified as i32,
    }
}

#[tokio::test]
async fn calls_without_or_with_a_wrong_token_are_unauthenticated() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let (token_id, token_secret) = fake.credentials();
    let mut anonymous = ModalClientClient::new(channel(&fake).await);
    let mut wrong = client_with(
        &fake,
        Auth {
            token_id: token_id.clone(),
            token_secret: "as-wrong".to_owned(),
        },
    )
    .await;
    let mut right = client(&fake).await;

    // Act
    let missing = anonymous.app_get_or_create(lookup_app("x")).await;
    let mismatched = wrong.app_get_or_create(lookup_app("x")).await;
    let authenticated = right.app_get_or_create(lookup_app("x")).await;

    // Assert
    for outcome in [&missing, &mismatched] {
        let status = outcome.as_ref().expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "Invalid token");
    }
    let status = authenticated.expect_err("the app does not exist");
    assert_eq!(status.code(), Code::NotFound, "auth passed: {status:?}");

    let calls = fake.requests();
    assert_eq!(calls.len(), 3);
    let matched: Vec<_> = calls.iter().map(|c| c.token_secret_matched).collect();
    assert_eq!(matched, [None, Some(false), Some(true)]);
    assert_eq!(calls[2].header("x-modal-token-id"), Some(token_id.as_str()));
    assert_eq!(calls[2].header("x-modal-client-version"), Some("1.0.0"));
    assert!(calls[2].request.contains("app_name: \"x\""));
    for call in &calls {
        assert_eq!(call.rpc, "AppGetOrCreate");
        assert!(call.header("x-modal-token-secret").is_none());
        assert!(!format!("{call:?}").contains(&token_secret), "secret leaked");
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn calls_without_the_client_headers_are_unauthenticated() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let (token_id, token_secret) = fake.credentials();
    let mut bare = ModalClientClient::with_interceptor(channel(&fake).await, move |mut r: Request<()>| {
        let metadata = r.metadata_mut();
        metadata.insert(
            "x-modal-token-id",
            token_id.parse().map_err(|_| Status::internal("id"))?,
        );
        metadata.insert(
            "x-modal-token-secret",
            token_secret.parse().map_err(|_| Status::internal("secret"))?,
        );
        Ok(r)
    });

    // Act
    let status = bare
        .app_get_or_create(lookup_app("x"))
        .await
        .expect_err("refused");

    // Assert
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("x-modal-client-type"), "{status:?}");
    fake.shutdown().await;
}

#[tokio::test]
async fn app_get_or_create_is_idempotent_by_name() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;

    // Act
    let first = app(&mut client, "gha-runners").await;
    let second = app(&mut client, "gha-runners").await;
    let other = app(&mut client, "other").await;
    let looked_up = client.app_get_or_create(lookup_app("gha-runners")).await;
    let invalid = client.app_get_or_create(lookup_app("bad name!")).await;
    let too_long = client.app_get_or_create(lookup_app(&"a".repeat(65))).await;

    // Assert
    assert_eq!(first, second);
    assert_ne!(first, other);
    assert!(first.starts_with("ap-") && first.len() == 25, "{first}");
    assert_eq!(looked_up.expect("found").into_inner().app_id, first);
    assert_eq!(invalid.expect_err("bad name").code(), Code::InvalidArgument);
    assert_eq!(too_long.expect_err("too long").code(), Code::InvalidArgument);
    assert_eq!(fake.apps().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn the_default_environment_reports_the_image_builder_version() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;

    // Act
    let default = client
        .environment_get_or_create(EnvironmentGetOrCreateRequest::default())
        .await
        .expect("default environment")
        .into_inner();
    let unknown = client
        .environment_get_or_create(EnvironmentGetOrCreateRequest {
            deployment_name: "staging".to_owned(),
            object_creation_type: ObjectCreationType::Unspecified as i32,
        })
        .await;

    // Assert
    assert!(default.environment_id.starts_with("en-"));
    let metadata = default.metadata.expect("metadata");
    assert_eq!(metadata.name, "main");
    let settings = metadata.settings.expect("settings");
    assert_eq!(settings.image_builder_version, "2025.06");
    assert_eq!(unknown.expect_err("no such environment").code(), Code::NotFound);
    fake.shutdown().await;
}

#[tokio::test]
async fn secrets_are_ephemeral_or_named_and_keys_are_checked() {
    // Arrange
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let named = |kind: ObjectCreationType| SecretGetOrCreateRequest {
        deployment_name: "gha-modal".to_owned(),
        object_creation_type: kind as i32,
        env_dict: [("TOKEN".to_owned(), "t".to_owned())].into(),
        ..SecretGetOrCreateRequest::default()
    };

    // Act
    let first = secret(&mut client, &[("A", "1")]).await;
    let second = secret(&mut client, &[("A", "1")]).await;
    let bad_key = client
        .secret_get_or_create(SecretGetOrCreateRequest {
            object_creation_type: ObjectCreationType::Ephemeral as i32,
            env_dict: [("1BAD".to_owned(), "x".to_owned())].into(),
            ..SecretGetOrCreateRequest::default()
        })
        .await;
    let missing = client
        .secret_get_or_create(named(ObjectCreationType::Unspecified))
        .await;
    let created = client
        .secret_get_or_create(named(ObjectCreationType::CreateIfMissing))
        .await;
    let found = client
        .secret_get_or_create(named(ObjectCreationType::Unspecified))
        .await;

    // Assert
    assert!(
        first.starts_with("st-") && first != second,
        "ephemeral secrets are fresh"
    );
    assert_eq!(bad_key.expect_err("bad key").code(), Code::InvalidArgument);
    assert_eq!(missing.expect_err("not created yet").code(), Code::NotFound);
    let created = created.expect("created").into_inner().secret_id;
    assert_eq!(found.expect("found").into_inner().secret_id, created);
    fake.shutdown().await;
}
