//! The store's API: containers, VVols, metadata, limits, space, bindings, persistence.

use super::*;
use crate::vvol::catalog::{CatalogError, Container, ContainerBackend, IoLimits, VvolType};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

pub(super) const GIB: u64 = 1 << 30;

pub(super) fn container(name: &str, backend: ContainerBackend, capacity: u64) -> Container {
    Container {
        name: name.into(),
        backend,
        capacity,
        overcommit_ratio: 1.0,
        default_limits: IoLimits {
            upper: Some(5000),
            lower: None,
            weight: Some(1),
        },
    }
}

/// A store in a fresh directory with a 10 GiB file container `lab`.
pub(super) fn lab() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store
        .ensure_container(&container("lab", ContainerBackend::File, 10 * GIB))
        .unwrap());
    (dir, store)
}

pub(super) fn data(store: &Store, size: u64) -> Result<crate::vvol::catalog::Vvol, StoreError> {
    store.create_vvol("lab", VvolType::Data, size, 512, None, BTreeMap::new())
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
}

#[test]
fn the_configuration_manages_containers() {
    let (_dir, store) = lab();
    let mut c = container("lab", ContainerBackend::File, 20 * GIB);
    c.overcommit_ratio = 2.0;
    c.default_limits.upper = Some(8000);
    let old = store.configure_container(&c).unwrap().expect("changed");
    assert_eq!(old.capacity, 10 * GIB);
    assert_eq!(store.container("lab").unwrap(), c);
    assert_eq!(
        store.configure_container(&c).unwrap(),
        None,
        "nothing to change"
    );
    // A new one is created; a container holding VVols keeps its backend.
    let mem = container("mem", ContainerBackend::Ram, GIB);
    assert_eq!(store.configure_container(&mem).unwrap(), None);
    data(&store, GIB).unwrap();
    let ram = Container {
        backend: ContainerBackend::Ram,
        ..c.clone()
    };
    let e = store.configure_container(&ram).unwrap_err();
    assert!(e.to_string().contains("holds 1 VVols"), "{e}");
    assert_eq!(store.container("lab").unwrap(), c);
}

#[test]
fn containers_are_ensured_once() {
    let (_dir, store) = lab();
    let mut changed = container("lab", ContainerBackend::File, GIB);
    changed.overcommit_ratio = 2.0;
    assert!(!store.ensure_container(&changed).unwrap());
    assert_eq!(store.container("lab").unwrap().capacity, 10 * GIB);
    assert!(matches!(
        store.create_container(&changed),
        Err(StoreError::Exists { .. })
    ));
    store
        .create_container(&container("mem", ContainerBackend::Ram, GIB))
        .unwrap();
    let names: Vec<_> = store
        .containers()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["lab", "mem"]);
    assert!(matches!(
        store.container("nope"),
        Err(StoreError::NotFound {
            what: "container",
            ..
        })
    ));
    for bad in ["a/b", "..", ".", ".hidden", "luns"] {
        assert!(
            matches!(
                store.ensure_container(&container(bad, ContainerBackend::File, GIB)),
                Err(StoreError::Invalid(CatalogError::ContainerName(_)))
            ),
            "{bad}"
        );
    }
    let mut nan = container("x", ContainerBackend::File, GIB);
    nan.overcommit_ratio = f64::NAN;
    assert!(matches!(
        store.ensure_container(&nan),
        Err(StoreError::InvalidValue(_))
    ));
}

#[test]
fn create_list_show_delete() {
    let (dir, store) = lab();
    let mut md = BTreeMap::new();
    md.insert("VMW_VmID".to_string(), "vm-1".to_string());
    md.insert("skipped".to_string(), String::new());
    let v = store
        .create_vvol("lab", VvolType::Config, 4 * GIB, 4096, None, md)
        .unwrap();
    assert_eq!(v.limits, store.container("lab").unwrap().default_limits);
    assert_eq!(v.metadata.len(), 1);
    assert_eq!(store.vvol(v.id).unwrap(), v);
    let path = store.vvol_path("lab", v.id);
    assert_eq!(
        path,
        dir.path().join(format!("containers/lab/{}.img", v.id))
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * GIB);

    let w = data(&store, GIB).unwrap();
    assert_eq!(store.vvols(None).unwrap().len(), 2);
    assert_eq!(store.vvols(Some("lab")).unwrap().len(), 2);
    assert!(matches!(
        store.vvols(Some("nope")),
        Err(StoreError::NotFound { .. })
    ));

    store.delete_vvol(v.id).unwrap();
    assert!(!path.exists());
    assert!(matches!(
        store.vvol(v.id),
        Err(StoreError::NotFound { what: "vvol", .. })
    ));
    assert!(matches!(
        store.delete_vvol(v.id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.vvols(None).unwrap(), vec![w]);
    assert!(store.problems().is_empty());
}

#[test]
fn bad_input_is_refused_without_leftovers() {
    let (dir, store) = lab();
    assert!(matches!(
        data(&store, 1000),
        Err(StoreError::Invalid(CatalogError::Size { .. }))
    ));
    assert!(matches!(
        store.create_vvol("lab", VvolType::Data, GIB, 1024, None, BTreeMap::new()),
        Err(StoreError::Invalid(CatalogError::BlockSize))
    ));
    assert!(matches!(
        store.create_vvol("nope", VvolType::Data, GIB, 512, None, BTreeMap::new()),
        Err(StoreError::NotFound {
            what: "container",
            ..
        })
    ));
    let bad = IoLimits {
        upper: Some(100),
        lower: Some(200),
        weight: None,
    };
    assert!(matches!(
        store.create_vvol("lab", VvolType::Data, GIB, 512, Some(bad), BTreeMap::new()),
        Err(StoreError::Invalid(CatalogError::LowerNotBelowUpper { .. }))
    ));
    let mut md = BTreeMap::new();
    md.insert("a=b".to_string(), "x".to_string());
    assert!(matches!(
        store.create_vvol("lab", VvolType::Data, GIB, 512, None, md),
        Err(StoreError::Invalid(CatalogError::MetadataKey(_)))
    ));
    assert!(store.vvols(None).unwrap().is_empty());
    assert!(files::images_in(&dir.path().join("containers/lab"))
        .unwrap()
        .is_empty());
}

fn kv(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn metadata_set_update_delete() {
    let (_dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    store.set_metadata(v.id, &kv(&[("k", "1")])).unwrap();
    let v2 = store.set_metadata(v.id, &kv(&[("k", "2")])).unwrap();
    assert_eq!(v2.metadata.get("k").map(String::as_str), Some("2"));
    store.set_metadata(v.id, &kv(&[("other", "x")])).unwrap();
    let v3 = store.set_metadata(v.id, &kv(&[("k", "")])).unwrap();
    assert_eq!(v3.metadata.keys().collect::<Vec<_>>(), ["other"]);
    assert_eq!(store.vvols(None).unwrap()[0].metadata, v3.metadata);
    assert!(matches!(
        store.set_metadata(v.id, &kv(&[("", "x")])),
        Err(StoreError::Invalid(CatalogError::MetadataKey(_)))
    ));
    assert!(matches!(
        store.set_metadata(v.id, &kv(&[("k", &"x".repeat(4097))])),
        Err(StoreError::Invalid(CatalogError::MetadataValue(_)))
    ));
    assert!(matches!(
        store.set_metadata(uuid::Uuid::new_v4(), &kv(&[("k", "v")])),
        Err(StoreError::NotFound { .. })
    ));
    // All or nothing: a bad key anywhere in the request leaves every key as it was.
    assert!(matches!(
        store.set_metadata(
            v.id,
            &kv(&[("a-good-one", "1"), ("other", "y"), ("bad=key", "2")])
        ),
        Err(StoreError::Invalid(CatalogError::MetadataKey(_)))
    ));
    assert_eq!(store.vvol(v.id).unwrap().metadata, v3.metadata);
    let both = store
        .set_metadata(v.id, &kv(&[("a", "1"), ("other", "")]))
        .unwrap();
    assert_eq!(both.metadata, kv(&[("a", "1")]));
}

#[test]
fn limits_are_validated_and_stored() {
    let (_dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    let l = IoLimits {
        upper: Some(2000),
        lower: Some(100),
        weight: Some(5),
    };
    assert_eq!(store.set_limits(v.id, l).unwrap().limits, l);
    assert_eq!(store.vvol(v.id).unwrap().limits, l);
    let err = store
        .set_limits(
            v.id,
            IoLimits {
                upper: Some(5),
                ..l
            },
        )
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Invalid(CatalogError::IopsRange { field: "upper", .. })
    ));
    assert_eq!(err.http_status(), 400);
    assert!(matches!(
        store.set_limits(
            v.id,
            IoLimits {
                weight: Some(0),
                ..l
            }
        ),
        Err(StoreError::Invalid(CatalogError::Weight))
    ));
    assert_eq!(store.vvol(v.id).unwrap().limits, l);
}

#[test]
fn overcommit_is_refused_with_numbers() {
    let (_dir, store) = lab();
    data(&store, 6 * GIB).unwrap();
    match data(&store, 5 * GIB) {
        Err(e @ StoreError::NoSpace { .. }) => {
            assert_eq!(e.http_status(), 507);
            assert!(matches!(
                e,
                StoreError::NoSpace {
                    requested,
                    available
                } if requested == 5 * GIB && available == 4 * GIB
            ));
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    data(&store, 4 * GIB).unwrap();
    assert!(matches!(data(&store, 512), Err(StoreError::NoSpace { .. })));

    // With a ratio of 3, a 10 GiB container takes 30 GiB of thin VVols.
    let mut thin = container("thin", ContainerBackend::Ram, 10 * GIB);
    thin.overcommit_ratio = 3.0;
    store.ensure_container(&thin).unwrap();
    let big = |size| store.create_vvol("thin", VvolType::Data, size, 512, None, BTreeMap::new());
    big(25 * GIB).unwrap();
    assert!(matches!(big(6 * GIB), Err(StoreError::NoSpace { .. })));
    let u = store.usage("thin").unwrap();
    assert_eq!((u.provisioned, u.allocated, u.free), (25 * GIB, 0, 5 * GIB));
    // Sizes beyond what SQLite can hold are NoSpace, not a wrapped number.
    assert!(matches!(
        big(u64::MAX - 511),
        Err(StoreError::NoSpace { .. })
    ));
}

#[test]
fn resize_grows_and_refuses_to_shrink() {
    let (_dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    let path = store.vvol_path("lab", v.id);
    assert_eq!(store.resize_vvol(v.id, 3 * GIB).unwrap().size, 3 * GIB);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * GIB);
    // Same size again: a retry, not an error.
    assert_eq!(store.resize_vvol(v.id, 3 * GIB).unwrap().size, 3 * GIB);
    let err = store.resize_vvol(v.id, 2 * GIB).unwrap_err();
    assert!(matches!(err, StoreError::Shrink { .. }));
    assert!(err.is_client_error());
    assert!(matches!(
        store.resize_vvol(v.id, 3 * GIB + 1),
        Err(StoreError::Invalid(CatalogError::Size { .. }))
    ));
    assert!(matches!(
        store.resize_vvol(v.id, 11 * GIB),
        Err(StoreError::NoSpace { available, .. }) if available == 10 * GIB
    ));
    assert_eq!(store.vvol(v.id).unwrap().size, 3 * GIB);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * GIB);
    assert_eq!(store.resize_vvol(v.id, 10 * GIB).unwrap().size, 10 * GIB);
}

#[test]
fn delete_is_refused_while_bound() {
    let (_dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    store.save_binding(v.id, "esx1", 1, 7, false).unwrap();
    let err = store.delete_vvol(v.id).unwrap_err();
    assert!(matches!(err, StoreError::Bound(id) if id == v.id));
    assert_eq!(err.http_status(), 409);
    assert!(store.vvol_path("lab", v.id).exists());
    store.remove_binding(v.id, "esx1", 1).unwrap();
    store.delete_vvol(v.id).unwrap();
    assert!(!store.vvol_path("lab", v.id).exists());
}

#[test]
fn bindings_and_counters() {
    let (_dir, store) = lab();
    let a = data(&store, GIB).unwrap();
    let b = data(&store, GIB).unwrap();
    store.save_binding(a.id, "esx1", 1, 1, false).unwrap();
    store.save_binding(a.id, "esx2", 2, 1, false).unwrap();
    // vMotion: a second host bound to the same VVol through the same PE shares its id.
    store.save_binding(a.id, "esx3", 1, 1, false).unwrap();
    store.remove_binding(a.id, "esx3", 1).unwrap();
    assert!(matches!(
        store.save_binding(b.id, "esx1", 1, 1, false),
        Err(StoreError::Exists {
            what: "binding",
            ..
        })
    ));
    // The same binding again updates its state in place.
    store.save_binding(a.id, "esx1", 1, 1, true).unwrap();
    let all = store.bindings().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0],
        BindingRecord {
            vvol: a.id,
            host: "esx1".into(),
            pe: 1,
            secondary: 1,
            draining: true
        }
    );
    assert!(matches!(
        store.save_binding(uuid::Uuid::new_v4(), "esx1", 1, 9, false),
        Err(StoreError::NotFound { what: "vvol", .. })
    ));
    assert!(matches!(
        store.remove_binding(b.id, "esx1", 1),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.save_binding(a.id, "esx1", 3, u64::MAX, false),
        Err(StoreError::InvalidValue(_))
    ));
    store.set_next_id(1, 2).unwrap();
    store.set_next_id(2, 5).unwrap();
    store.set_next_id(1, 3).unwrap();
    assert_eq!(
        store.next_ids().unwrap(),
        BTreeMap::from([(1u16, 3u64), (2, 5)])
    );
}

#[test]
fn reopen_restores_everything() {
    let (dir, store) = lab();
    store
        .ensure_container(&container("mem", ContainerBackend::Ram, GIB))
        .unwrap();
    let a = data(&store, GIB).unwrap();
    store
        .set_metadata(a.id, &kv(&[("VMW_VmID", "vm-9")]))
        .unwrap();
    let r = store
        .create_vvol("mem", VvolType::Swap, GIB, 4096, None, BTreeMap::new())
        .unwrap();
    store.save_binding(a.id, "esx1", 1, 4, false).unwrap();
    store.save_binding(r.id, "esx1", 1, 5, true).unwrap();
    store.set_next_id(1, 6).unwrap();
    let before = (
        store.containers().unwrap(),
        store.vvols(None).unwrap(),
        store.bindings().unwrap(),
        store.next_ids().unwrap(),
        store.usage("lab").unwrap(),
    );
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let after = (
        store.containers().unwrap(),
        store.vvols(None).unwrap(),
        store.bindings().unwrap(),
        store.next_ids().unwrap(),
        store.usage("lab").unwrap(),
    );
    assert_eq!(before, after);
    assert!(store.problems().is_empty());
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let (dir, _store) = lab();
    let err = Store::open(dir.path()).err().expect("must be refused");
    assert!(matches!(err, StoreError::Locked(_)));
}

#[test]
fn schema_version_is_recorded_and_newer_is_refused() {
    let (dir, store) = lab();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let v: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Schema { found: 99, .. })
    ));
}

#[test]
fn files_are_sparse() {
    let (_dir, store) = lab();
    let v = data(&store, 8 * GIB).unwrap();
    let meta = std::fs::metadata(store.vvol_path("lab", v.id)).unwrap();
    assert_eq!(meta.len(), 8 * GIB);
    assert!(meta.blocks() * 512 < (1 << 20), "{} blocks", meta.blocks());
    let u = store.usage("lab").unwrap();
    assert_eq!(u.provisioned, 8 * GIB);
    assert!(u.allocated < 1 << 20);
    assert_eq!((u.capacity, u.free), (10 * GIB, 2 * GIB));
}
