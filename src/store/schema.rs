//! Opening the database and bringing its schema up to date.
//!
//! Migrations are append-only: entry N of [`MIGRATIONS`] turns schema version N into N+1, and
//! all pending ones run in one transaction, so a crash mid-upgrade leaves the old version.

use super::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

const V1: &str = "
CREATE TABLE containers (
    name TEXT PRIMARY KEY,
    backend TEXT NOT NULL CHECK (backend IN ('file', 'ram')),
    capacity INTEGER NOT NULL CHECK (capacity >= 0),
    overcommit_ratio REAL NOT NULL CHECK (overcommit_ratio > 0),
    default_upper INTEGER,
    default_lower INTEGER,
    default_weight INTEGER
);
CREATE TABLE vvols (
    id TEXT PRIMARY KEY,
    container TEXT NOT NULL REFERENCES containers(name),
    type TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size > 0),
    block_size INTEGER NOT NULL,
    created INTEGER NOT NULL,
    upper INTEGER,
    lower INTEGER,
    weight INTEGER,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleting'))
);
CREATE INDEX vvols_by_container ON vvols(container);
CREATE TABLE vvol_metadata (
    vvol TEXT NOT NULL REFERENCES vvols(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (vvol, key)
) WITHOUT ROWID;
-- No ON DELETE CASCADE: deleting a bound VVol must fail, not silently unbind it.
CREATE TABLE bindings (
    vvol TEXT NOT NULL REFERENCES vvols(id),
    host TEXT NOT NULL,
    pe INTEGER NOT NULL CHECK (pe BETWEEN 0 AND 65535),
    secondary INTEGER NOT NULL CHECK (secondary >= 0),
    state TEXT NOT NULL CHECK (state IN ('active', 'draining')),
    PRIMARY KEY (vvol, host, pe),
    UNIQUE (pe, secondary)
);
CREATE TABLE pe_counters (
    pe INTEGER PRIMARY KEY CHECK (pe BETWEEN 0 AND 65535),
    next_id INTEGER NOT NULL CHECK (next_id >= 0)
);
";

/// A VVol bound on a PE has one secondary id there, shared by every host bound to it through
/// that PE (vMotion). V1's UNIQUE (pe, secondary) refused the second host; an id may only
/// not name two different VVols, which `save_binding` checks.
const V2: &str = "
CREATE TABLE bindings_v2 (
    vvol TEXT NOT NULL REFERENCES vvols(id),
    host TEXT NOT NULL,
    pe INTEGER NOT NULL CHECK (pe BETWEEN 0 AND 65535),
    secondary INTEGER NOT NULL CHECK (secondary >= 0),
    state TEXT NOT NULL CHECK (state IN ('active', 'draining')),
    PRIMARY KEY (vvol, host, pe),
    UNIQUE (pe, secondary, host)
);
INSERT INTO bindings_v2 (vvol, host, pe, secondary, state)
    SELECT vvol, host, pe, secondary, state FROM bindings;
DROP TABLE bindings;
ALTER TABLE bindings_v2 RENAME TO bindings;
";

/// Version 3: persistent reservation state of LUs with APTPL set (see `pr.rs`).
const V3: &str = "
CREATE TABLE pr_state (
    naa TEXT PRIMARY KEY,
    state BLOB NOT NULL
);
";

/// Version 4: containers of the `rated` backend (RAM behind an emulated disk, for QoS labs),
/// and the stored limits of normal LUNs.
/// SQLite cannot change a CHECK in place: the table is rebuilt (foreign keys are off while
/// migrations run, and checked before they commit).
const V4: &str = "
CREATE TABLE containers_v4 (
    name TEXT PRIMARY KEY,
    backend TEXT NOT NULL CHECK (backend IN ('file', 'ram', 'rated')),
    capacity INTEGER NOT NULL CHECK (capacity >= 0),
    overcommit_ratio REAL NOT NULL CHECK (overcommit_ratio > 0),
    default_upper INTEGER,
    default_lower INTEGER,
    default_weight INTEGER
);
INSERT INTO containers_v4 SELECT name, backend, capacity, overcommit_ratio, default_upper,
    default_lower, default_weight FROM containers;
DROP TABLE containers;
ALTER TABLE containers_v4 RENAME TO containers;
-- Limits of normal LUNs set through the API; they win over the configuration file's.
CREATE TABLE lun_limits (
    target TEXT NOT NULL,
    lun INTEGER NOT NULL CHECK (lun BETWEEN 0 AND 16383),
    upper INTEGER,
    lower INTEGER,
    weight INTEGER,
    PRIMARY KEY (target, lun)
) WITHOUT ROWID;
";

const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens `path` with the durability settings the store relies on and migrates it.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)?;
    // A single connection behind a mutex never waits on itself; the timeout only covers an
    // outside reader such as the sqlite3 shell.
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: readers never block the writer, and a commit is one sequential append.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("SQLite refused WAL mode (got {mode}); continuing with it");
    }
    // FULL: a commit survives power loss, not only a process kill. Metadata is rarely
    // written, so the extra fsync per commit costs nothing that matters.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Off while migrating, as SQLite prescribes for table rebuilds; `migrate` checks the
    // foreign keys itself before it commits.
    conn.pragma_update(None, "foreign_keys", false)?;
    migrate(&mut conn)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for sql in &MIGRATIONS[found.max(0) as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )?;
    let dangling: i64 = tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if dangling > 0 {
        return Err(StoreError::InvalidValue(format!(
            "migration left {dangling} rows with dangling references; nothing was changed"
        )));
    }
    tx.commit()?;
    if found > 0 {
        tracing::info!("migrated the metadata database from version {found} to {SCHEMA_VERSION}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_bindings_survive_the_v2_migration_and_ids_become_shareable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(V1).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (1);
                 INSERT INTO containers (name, backend, capacity, overcommit_ratio)
                     VALUES ('lab', 'file', 1024, 1.0);
                 INSERT INTO vvols (id, container, type, size, block_size, created, state)
                     VALUES ('v1', 'lab', 'data', 512, 512, 0, 'ready');
                 INSERT INTO bindings VALUES ('v1', 'esx1', 5, 7, 'active');",
            )
            .unwrap();
            // V1 refuses a second host on the same id.
            assert!(c
                .execute(
                    "INSERT INTO bindings VALUES ('v1', 'esx2', 5, 7, 'active')",
                    []
                )
                .is_err());
        }
        let c = open(&path).unwrap();
        let v: i64 = c
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let (host, secondary): (String, i64) = c
            .query_row(
                "SELECT host, secondary FROM bindings WHERE vvol = 'v1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((host.as_str(), secondary), ("esx1", 7));
        c.execute(
            "INSERT INTO bindings VALUES ('v1', 'esx2', 5, 7, 'active')",
            [],
        )
        .unwrap();
        // Still one row per (pe, secondary, host), and foreign keys still hold.
        assert!(c
            .execute(
                "INSERT INTO bindings VALUES ('v1', 'esx2', 5, 7, 'draining')",
                []
            )
            .is_err());
        assert!(c
            .execute(
                "INSERT INTO bindings VALUES ('nope', 'esx3', 5, 8, 'active')",
                []
            )
            .is_err());
    }

    #[test]
    fn v4_rebuilds_containers_keeping_their_vvols() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let c = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version VALUES (3);
                 INSERT INTO containers (name, backend, capacity, overcommit_ratio, default_upper)
                     VALUES ('lab', 'file', 1024, 1.0, 500);
                 INSERT INTO vvols (id, container, type, size, block_size, created, state)
                     VALUES ('v1', 'lab', 'data', 512, 512, 0, 'ready');",
            )
            .unwrap();
        }
        let c = open(&path).unwrap();
        let upper: i64 = c
            .query_row(
                "SELECT default_upper FROM containers WHERE name = 'lab'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(upper, 500);
        c.execute(
            "INSERT INTO containers (name, backend, capacity, overcommit_ratio) VALUES ('q', 'rated', 1, 1.0)",
            [],
        )
        .unwrap();
        // The VVol still names its container, and foreign keys are enforced again.
        assert!(c
            .execute("DELETE FROM containers WHERE name = 'lab'", [])
            .is_err());
        assert!(c
            .execute(
                "INSERT INTO vvols (id, container, type, size, block_size, created, state)
                     VALUES ('v2', 'nope', 'data', 512, 512, 0, 'ready')",
                []
            )
            .is_err());
    }
}
