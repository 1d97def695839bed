//! Versioned schema migrations, embedded SQL files applied in order; `PRAGMA user_version` records
//! how far a database has come.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{Result, StoreError};

/// The migrations, in order: entry `i` takes a database from version `i` to `i + 1`.
/// Append only: a released file never changes, since databases in the field already ran it.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_accounts_rooms_keys.sql"),
    include_str!("../migrations/0002_federation.sql"),
    include_str!("../migrations/0003_rooms.sql"),
    include_str!("../migrations/0004_e2ee.sql"),
    include_str!("../migrations/0005_receipts.sql"),
    include_str!("../migrations/0006_profiles.sql"),
    include_str!("../migrations/0007_remote_devices.sql"),
    include_str!("../migrations/0008_invites_state_after.sql"),
    include_str!("../migrations/0009_app_crypto.sql"),
    include_str!("../migrations/0010_backup.sql"),
    include_str!("../migrations/0011_key_backup.sql"),
    include_str!("../migrations/0012_backup_identity.sql"),
    include_str!("../migrations/0013_mailbox.sql"),
    include_str!("../migrations/0014_policy.sql"),
    include_str!("../migrations/0015_relations.sql"),
    include_str!("../migrations/0016_directory_search.sql"),
    include_str!("../migrations/0017_people.sql"),
    include_str!("../migrations/0018_notifications.sql"),
    include_str!("../migrations/0019_honest_backup.sql"),
];

/// Marks a SQLite file as Hyphae's (`PRAGMA application_id`), so another program's database is
/// refused rather than migrated.
const APPLICATION_ID: i32 = 0x4879_7068; // "Hyph"

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Brings `conn` up to `target` (at most [`SCHEMA_VERSION`]); each step is one transaction, so a
/// crash leaves the database at a whole version.
pub(crate) fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<()> {
    let found = schema_version(conn).map_err(|source| StoreError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|source| StoreError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    let foreign = application_id != APPLICATION_ID && (found != 0 || application_id != 0);
    if foreign || found < 0 {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            source: rusqlite::Error::InvalidParameterName(format!(
                "application_id {application_id:#x}, schema version {found}"
            )),
        });
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for version in found..target {
        let sql = MIGRATIONS[version as usize];
        let step = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()
        };
        step(conn).map_err(|source| StoreError::Migration {
            version: version + 1,
            source,
        })?;
        tracing::info!(version = version + 1, "database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn schema(conn: &Connection) -> Vec<String> {
        let mut statement = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[tokio::test]
    async fn every_earlier_version_migrates_to_the_fresh_schema_keeping_data() {
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path()).await.unwrap();
        let fresh_schema = fresh.read(|c| Ok(schema(c))).await.unwrap();
        assert!(!fresh_schema.is_empty());

        for start in 0..=SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(crate::DATABASE_FILE);
            {
                let mut conn = Connection::open(&path).unwrap();
                migrate_to(&mut conn, &path, start).unwrap();
                assert_eq!(schema_version(&conn).unwrap(), start);
                if start >= 1 {
                    conn.execute(
                        "INSERT INTO accounts (localpart, created_ms) VALUES ('old', 1)",
                        [],
                    )
                    .unwrap();
                }
            }
            let store = Store::open(dir.path()).await.unwrap();
            let (version, migrated_schema) = store
                .read(|c| Ok((schema_version(c)?, schema(c))))
                .await
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION, "from version {start}");
            assert_eq!(migrated_schema, fresh_schema, "from version {start}");
            if start >= 1 {
                assert!(
                    store.account("old".into()).await.unwrap().is_some(),
                    "data written at version {start} survives the migration"
                );
            }
        }
    }

    #[tokio::test]
    async fn another_programs_database_is_refused_not_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::DATABASE_FILE);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); PRAGMA user_version = 1;")
            .unwrap();
        drop(conn);
        let error = Store::open(dir.path()).await.err().expect("opened");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
        let tables: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1, "the foreign database was left as it was");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).await.unwrap().close().await;
        let path = dir.path().join(crate::DATABASE_FILE);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        match Store::open(dir.path()).await {
            Err(e @ StoreError::TooNew { .. }) => {
                assert!(e.to_string().contains("newer than this build"), "{e}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer database was opened"),
        }
    }
}
