//! Issue 13: volumes, mounts and the VM runtime.

use tonic::Code;

use super::*;
use modal_proto::{GpuConfig, Resources, VolumeFsVersion, VolumeGetOrCreateRequest, VolumeMount};

async fn world() -> (FakeModal, Client, String, String) {
    let fake = FakeModal::start(config(&[])).await.expect("fake starts");
    let mut client = client(&fake).await;
    let app_id = app(&mut client, "runners").await;
    let image_id = built_image(&mut client, &app_id).await;
    (fake, client, app_id, image_id)
}

fn volume_request(
    name: &str,
    kind: ObjectCreationType,
    version: VolumeFsVersion,
) -> VolumeGetOrCreateRequest {
    VolumeGetOrCreateRequest {
        deployment_name: name.to_owned(),
        environment_name: String::new(),
        object_creation_type: kind as i32,
        version: version as i32,
    }
}

fn mounted(mut request: SandboxCreateRequest, volume_id: &str, path: &str) -> SandboxCreateRequest {
    if let Some(d) = request.definition.as_mut() {
        d.volume_mounts.push(VolumeMount {
            volume_id: volume_id.to_owned(),
            mount_path: path.to_owned(),
            allow_background_commits: true,
            read_only: false,
        });
    }
    request
}

#[tokio::test]
async fn a_volume_is_created_once_then_found_with_its_version() {
    let (fake, mut client, _, _) = world().await;
    let get = |kind| volume_request("ci-cache", kind, VolumeFsVersion::V2);

    let missing = client
        .volume_get_or_create(get(ObjectCreationType::Unspecified))
        .await
        .expect_err("a lookup does not create");
    let first = client
        .volume_get_or_create(get(ObjectCreationType::CreateIfMissing))
        .await
        .expect("created")
        .into_inner();
    let again = client
        .volume_get_or_create(get(ObjectCreationType::CreateIfMissing))
        .await
        .expect("found")
        .into_inner();
    let v1 = client
        .volume_get_or_create(volume_request(
            "ci-cache",
            ObjectCreationType::CreateIfMissing,
            VolumeFsVersion::V1,
        ))
        .await
        .expect_err("another version");

    assert_eq!(missing.code(), Code::NotFound);
    assert!(first.volume_id.starts_with("vo-"), "{}", first.volume_id);
    assert_eq!(again.volume_id, first.volume_id);
    let metadata = again.metadata.expect("metadata");
    assert_eq!(
        (metadata.name.as_str(), metadata.version),
        ("ci-cache", VolumeFsVersion::V2 as i32)
    );
    assert_eq!(v1.code(), Code::FailedPrecondition);
    assert_eq!(fake.volume_creations(), 1);
    assert_eq!(fake.volumes().len(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn mounts_need_an_existing_volume_once_at_an_allowed_path() {
    let (fake, mut client, app_id, image_id) = world().await;
    let volume = client
        .volume_get_or_create(volume_request(
            "cache",
            ObjectCreationType::CreateIfMissing,
            VolumeFsVersion::V2,
        ))
        .await
        .expect("created")
        .into_inner()
        .volume_id;
    let base = || create_request(&app_id, &image_id, &[]);

    for path in ["/", "/tmp", "/root", "cache", "/cache/", "/a/../b", "/a//b"] {
        let err = create(&mut client, mounted(base(), &volume, path))
            .await
            .expect_err(path);
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err}");
    }
    let unknown = create(&mut client, mounted(base(), "vo-missing", "/cache"))
        .await
        .expect_err("no such volume");
    assert_eq!(unknown.code(), Code::NotFound);
    let twice = mounted(mounted(base(), &volume, "/cache"), &volume, "/cache2");
    assert_eq!(
        create(&mut client, twice).await.expect_err("twice").code(),
        Code::InvalidArgument
    );

    let id = create(&mut client, mounted(base(), &volume, "/cache"))
        .await
        .expect("a valid mount");
    let view = fake.sandbox(&id).expect("recorded");
    assert_eq!(view.definition.volume_mounts[0].mount_path, "/cache");
    fake.shutdown().await;
}

#[tokio::test]
async fn the_vm_runtime_is_recorded_and_refused_with_a_gpu() {
    let (fake, mut client, app_id, image_id) = world().await;
    let with_runtime = |runtime: &str, gpu: bool| {
        let mut request = create_request(&app_id, &image_id, &[]);
        if let Some(d) = request.definition.as_mut() {
            d.runtime = Some(runtime.to_owned());
            d.resources = Some(Resources {
                milli_cpu: 1000,
                memory_mb: 8192,
                gpu_config: gpu.then(|| GpuConfig {
                    r#type: 0,
                    count: 1,
                    gpu_type: "T4".to_owned(),
                }),
            });
        }
        request
    };

    let gpu = create(&mut client, with_runtime("vm", true))
        .await
        .expect_err("no GPU in a VM");
    let odd = create(&mut client, with_runtime("runc", false))
        .await
        .expect_err("unknown runtime");
    let id = create(&mut client, with_runtime("vm", false))
        .await
        .expect("a VM");

    assert_eq!(gpu.code(), Code::InvalidArgument);
    assert!(gpu.message().contains("VM"), "{}", gpu.message());
    assert_eq!(odd.code(), Code::InvalidArgument);
    let view = fake.sandbox(&id).expect("recorded");
    assert_eq!(view.definition.runtime.as_deref(), Some("vm"));
    assert_eq!(view.resources.memory_mb, 8192);
    fake.shutdown().await;
}
