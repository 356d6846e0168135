//! Crashes between every step of create, delete and resize, simulated by running the steps
//! by hand and dropping the store (a drop does no cleanup, so to the next open it looks like
//! a kill: only committed rows and fsynced files remain). After each, reopening must leave
//! no orphan file, no missing file and no half-made row.

use super::tests::{container, data, lab, GIB};
use super::*;
use crate::vvol::catalog::{ContainerBackend, VvolType};
use std::collections::BTreeMap;
use std::fs;
use tempfile::TempDir;

/// Every row in the vvols table, any state: (id, state).
fn rows(store: &Store) -> Vec<(String, String)> {
    let conn = store.conn();
    let mut stmt = conn
        .prepare("SELECT id, state FROM vvols ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Every .img under containers/ and orphans/.
fn images(dir: &TempDir) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in [CONTAINERS_DIR, ORPHANS_DIR] {
        for sub in files::subdirs(&dir.path().join(top)).unwrap() {
            out.extend(files::images_in(&sub).unwrap());
        }
    }
    out
}

fn begin(store: &Store) -> crate::vvol::catalog::Vvol {
    store
        .create_begin("lab", VvolType::Data, GIB, 512, None, BTreeMap::new())
        .unwrap()
        .0
}

/// "Kills" the daemon and starts it again.
fn restart(dir: &TempDir, store: Store) -> Store {
    drop(store);
    Store::open(dir.path()).unwrap()
}

/// After a restart: no VVols, no files, nothing to report.
fn assert_clean(dir: &TempDir, store: &Store) {
    assert_eq!(rows(store), vec![]);
    assert_eq!(images(dir), Vec::<PathBuf>::new());
    assert_eq!(store.problems(), vec![]);
    assert_eq!(store.usage("lab").unwrap().provisioned, 0);
}

#[test]
fn create_killed_after_the_row() {
    let (dir, store) = lab();
    let v = begin(&store);
    assert_eq!(rows(&store), vec![(v.id.to_string(), "creating".into())]);
    // Not visible before it is finished.
    assert!(matches!(store.vvol(v.id), Err(StoreError::NotFound { .. })));
    let store = restart(&dir, store);
    assert_clean(&dir, &store);
}

#[test]
fn create_killed_after_the_file() {
    let (dir, store) = lab();
    let v = begin(&store);
    store.create_file(&v).unwrap();
    assert!(store.vvol_path("lab", v.id).exists());
    let store = restart(&dir, store);
    assert_clean(&dir, &store);
}

#[test]
fn create_killed_after_the_last_step() {
    let (dir, store) = lab();
    let v = begin(&store);
    store.create_file(&v).unwrap();
    store.create_finish(v.id).unwrap();
    let store = restart(&dir, store);
    assert_eq!(store.vvol(v.id).unwrap(), v);
    assert_eq!(images(&dir), vec![store.vvol_path("lab", v.id)]);
    assert_eq!(store.problems(), vec![]);
}

#[test]
fn create_killed_in_a_ram_container() {
    let (dir, store) = lab();
    store
        .ensure_container(&container("mem", ContainerBackend::Ram, GIB))
        .unwrap();
    store
        .create_begin("mem", VvolType::Swap, GIB, 512, None, BTreeMap::new())
        .unwrap();
    let store = restart(&dir, store);
    assert_clean(&dir, &store);
}

#[test]
fn a_failing_file_step_rolls_the_create_back() {
    let (dir, store) = lab();
    // The container's directory cannot be created: a regular file is in the way.
    fs::create_dir_all(dir.path().join(CONTAINERS_DIR)).unwrap();
    fs::write(dir.path().join("containers/lab"), b"in the way").unwrap();
    let err = data(&store, GIB).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert_eq!(err.http_status(), 500);
    assert_eq!(rows(&store), vec![]);
    fs::remove_file(dir.path().join("containers/lab")).unwrap();
    data(&store, GIB).unwrap();
}

#[test]
fn delete_killed_after_marking() {
    let (dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    store
        .set_metadata(v.id, &[("k".to_string(), "v".to_string())].into())
        .unwrap();
    store.delete_begin(v.id).unwrap();
    assert!(store.vvol_path("lab", v.id).exists());
    assert!(matches!(store.vvol(v.id), Err(StoreError::NotFound { .. })));
    let store = restart(&dir, store);
    assert_clean(&dir, &store);
    let leftover: i64 = store
        .conn()
        .query_row("SELECT count(*) FROM vvol_metadata", [], |r| r.get(0))
        .unwrap();
    assert_eq!(leftover, 0);
}

#[test]
fn delete_killed_after_removing_the_file() {
    let (dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    store.delete_begin(v.id).unwrap();
    files::remove(&store.vvol_path("lab", v.id)).unwrap();
    let store = restart(&dir, store);
    assert_clean(&dir, &store);
}

#[test]
fn resize_killed_before_the_file_grew() {
    let (dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    store.resize_begin(v.id, 3 * GIB).unwrap();
    let path = store.vvol_path("lab", v.id);
    assert_eq!(fs::metadata(&path).unwrap().len(), GIB);
    let store = restart(&dir, store);
    assert_eq!(store.vvol(v.id).unwrap().size, 3 * GIB);
    assert_eq!(fs::metadata(&path).unwrap().len(), 3 * GIB);
    assert_eq!(store.problems(), vec![]);
}

#[test]
fn a_missing_file_is_reported_and_the_row_kept() {
    let (dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    let path = store.vvol_path("lab", v.id);
    fs::remove_file(&path).unwrap();
    let store = restart(&dir, store);
    assert_eq!(store.vvol(v.id).unwrap(), v);
    assert_eq!(
        store.problems(),
        vec![Problem::MissingFile { vvol: v.id, path }]
    );
}

#[test]
fn a_file_larger_than_its_vvol_is_reported_and_left_alone() {
    let (dir, store) = lab();
    let v = data(&store, GIB).unwrap();
    let path = store.vvol_path("lab", v.id);
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 * GIB)
        .unwrap();
    let store = restart(&dir, store);
    assert_eq!(fs::metadata(&path).unwrap().len(), 2 * GIB);
    assert_eq!(
        store.problems(),
        vec![Problem::FileLarger {
            vvol: v.id,
            path,
            file_len: 2 * GIB,
            size: GIB
        }]
    );
}

#[test]
fn orphan_files_are_moved_aside_not_deleted() {
    let (dir, store) = lab();
    let kept = data(&store, GIB).unwrap();
    let stray = store.vvol_path("lab", uuid::Uuid::new_v4());
    fs::write(&stray, b"someone's data").unwrap();
    // An orphan of the same name is already in orphans/: the new one must not replace it.
    let name = stray.file_name().unwrap();
    let dest_dir = dir.path().join("orphans/lab");
    fs::create_dir_all(&dest_dir).unwrap();
    fs::write(dest_dir.join(name), b"older").unwrap();
    // Files in an undeclared container and non-images: only the image is an orphan.
    fs::create_dir_all(dir.path().join("containers/gone")).unwrap();
    fs::write(dir.path().join("containers/gone/x.img"), b"x").unwrap();
    fs::write(dir.path().join("containers/lab/notes.txt"), b"n").unwrap();

    let store = restart(&dir, store);
    assert!(!stray.exists());
    let moved = dest_dir.join(format!("{}.1", name.to_string_lossy()));
    assert_eq!(fs::read(&moved).unwrap(), b"someone's data");
    assert_eq!(fs::read(dest_dir.join(name)).unwrap(), b"older");
    assert_eq!(
        fs::read(dir.path().join("orphans/gone/x.img")).unwrap(),
        b"x"
    );
    assert!(dir.path().join("containers/lab/notes.txt").exists());
    assert_eq!(
        store.problems(),
        vec![
            Problem::OrphanMoved {
                from: dir.path().join("containers/gone/x.img"),
                to: dir.path().join("orphans/gone/x.img"),
            },
            Problem::OrphanMoved {
                from: stray,
                to: moved
            },
        ]
    );
    assert_eq!(store.vvol(kept.id).unwrap(), kept);
    assert!(store.vvol_path("lab", kept.id).exists());
}
