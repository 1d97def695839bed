//! Server-side room-key backup: a user's backup versions and the encrypted session keys in each.
//! Versions are numbered per user and never reused; keys go only into the newest version, and a
//! session's key is replaced only by a better one.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::error::Result;

/// A backup version as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    pub version: String,
    /// `{"algorithm": ..., "auth_data": ...}` as JSON.
    pub algorithm: String,
    pub count: u64,
    pub etag: String,
}

/// One session's key in a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKey {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    /// The whole KeyBackupData object as JSON.
    pub data: String,
}

impl BackupKey {
    /// Whether this key should replace `stored`: a verified key beats an unverified one, then
    /// the lower first message index wins, then the lower forwarded count.
    pub fn is_better_than(&self, stored: &BackupKey) -> bool {
        let rank = |k: &BackupKey| (!k.is_verified, k.first_message_index, k.forwarded_count);
        rank(self) < rank(stored)
    }
}

/// What became of keys sent to a backup version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupWrite {
    /// Done; the version now holds `count` keys and has this etag.
    Done { count: u64, etag: String },
    /// No such version (or it was deleted).
    UnknownVersion,
    /// The version exists but a newer one is current; keys go only into `current`.
    NotCurrent { current: String },
}

impl Store {
    /// Creates a backup version, which becomes the current one; returns its version string.
    pub async fn create_backup_version(
        &self,
        localpart: String,
        algorithm: String,
    ) -> Result<String> {
        self.write(move |conn| {
            let version: i64 = conn.query_row(
                "INSERT INTO backup_versions (localpart, version, algorithm)
                 VALUES (?1, (SELECT coalesce(max(version), 0) + 1 FROM backup_versions
                              WHERE localpart = ?1), ?2)
                 RETURNING version",
                params![localpart, algorithm],
                |row| row.get(0),
            )?;
            Ok(version.to_string())
        })
        .await
    }

    /// A backup version, or the current one when `version` is `None`.
    pub async fn backup_version(
        &self,
        localpart: String,
        version: Option<String>,
    ) -> Result<Option<BackupVersion>> {
        self.read(move |conn| {
            let number = match version {
                Some(version) => parse_version(&version),
                None => current_version(conn, &localpart)?,
            };
            let Some(number) = number else {
                return Ok(None);
            };
            Ok(conn
                .query_row(
                    "SELECT algorithm, etag,
                            (SELECT count(*) FROM backup_keys k
                             WHERE k.localpart = v.localpart AND k.version = v.version)
                     FROM backup_versions v
                     WHERE localpart = ?1 AND version = ?2 AND deleted = 0",
                    params![localpart, number],
                    |row| {
                        Ok(BackupVersion {
                            version: number.to_string(),
                            algorithm: row.get(0)?,
                            etag: row.get::<_, i64>(1)?.to_string(),
                            count: row.get::<_, i64>(2)? as u64,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Replaces a version's algorithm and auth data; returns whether the version exists.
    pub async fn update_backup_version(
        &self,
        localpart: String,
        version: String,
        algorithm: String,
    ) -> Result<bool> {
        self.write(move |conn| {
            let Some(number) = parse_version(&version) else {
                return Ok(false);
            };
            let changed = conn.execute(
                "UPDATE backup_versions SET algorithm = ?3
                 WHERE localpart = ?1 AND version = ?2 AND deleted = 0",
                params![localpart, number, algorithm],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Deletes a version with its keys (its number is not reused); returns whether it existed.
    pub async fn delete_backup_version(&self, localpart: String, version: String) -> Result<bool> {
        self.write(move |conn| {
            let Some(number) = parse_version(&version) else {
                return Ok(false);
            };
            conn.execute(
                "DELETE FROM backup_keys WHERE localpart = ?1 AND version = ?2",
                params![localpart, number],
            )?;
            let changed = conn.execute(
                "UPDATE backup_versions SET deleted = 1
                 WHERE localpart = ?1 AND version = ?2 AND deleted = 0",
                params![localpart, number],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Adds session keys to the current version, each replacing the stored key of its session
    /// only if it is better ([`BackupKey::is_better_than`]).
    pub async fn put_backup_keys(
        &self,
        localpart: String,
        version: String,
        keys: Vec<BackupKey>,
    ) -> Result<BackupWrite> {
        self.write(move |conn| {
            let current = current_version(conn, &localpart)?;
            let number = match (parse_version(&version), current) {
                (Some(number), Some(current)) if number == current => number,
                (Some(number), Some(current)) if version_exists(conn, &localpart, number)? => {
                    return Ok(BackupWrite::NotCurrent {
                        current: current.to_string(),
                    });
                }
                _ => return Ok(BackupWrite::UnknownVersion),
            };
            let mut changed = false;
            for key in keys {
                let stored = stored_key(conn, &localpart, number, &key.room_id, &key.session_id)?;
                if stored.is_some_and(|stored| !key.is_better_than(&stored)) {
                    continue;
                }
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO backup_keys
                         (localpart, version, room_id, session_id, first_message_index,
                          forwarded_count, is_verified, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    localpart,
                    number,
                    key.room_id,
                    key.session_id,
                    key.first_message_index as i64,
                    key.forwarded_count as i64,
                    key.is_verified,
                    key.data
                ])?;
                changed = true;
            }
            finish_write(conn, &localpart, number, changed)
        })
        .await
    }

    /// Up to `limit` keys of `localpart`'s current backup version that its backup server does
    /// not have yet, with that version.
    pub async fn backup_keys_not_on_server(
        &self,
        localpart: String,
        limit: u32,
    ) -> Result<Option<(String, Vec<BackupKey>)>> {
        self.read(move |conn| {
            let Some(number) = current_version(conn, &localpart)? else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                        data
                 FROM backup_keys
                 WHERE localpart = ?1 AND version = ?2 AND on_backup_server = 0
                 LIMIT ?3",
            )?;
            let keys = statement
                .query_map(params![localpart, number, limit], key_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((number.to_string(), keys)))
        })
        .await
    }

    /// Marks keys as held by the backup server, unless a better copy replaced the row since
    /// (its data differs: that one is still to send).
    pub async fn mark_backup_keys_on_server(
        &self,
        localpart: String,
        version: String,
        keys: Vec<BackupKey>,
    ) -> Result<()> {
        self.write(move |conn| {
            let Some(number) = parse_version(&version) else {
                return Ok(());
            };
            let mut mark = conn.prepare_cached(
                "UPDATE backup_keys SET on_backup_server = 1
                 WHERE localpart = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4
                   AND data = ?5",
            )?;
            for key in keys {
                mark.execute(params![
                    localpart,
                    number,
                    key.room_id,
                    key.session_id,
                    key.data
                ])?;
            }
            Ok(())
        })
        .await
    }

    /// Forgets which keys a backup server has: a new subscription starts with none.
    pub async fn reset_backup_keys_on_server(&self, localpart: String) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE backup_keys SET on_backup_server = 0 WHERE localpart = ?1",
            )?
            .execute([localpart])?;
            Ok(())
        })
        .await
    }

    /// The keys of a backup version: all, one room's (`room_id`), or one session's (`room_id`
    /// and `session_id`). `None` if there is no such version.
    pub async fn backup_keys(
        &self,
        localpart: String,
        version: String,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<Option<Vec<BackupKey>>> {
        self.read(move |conn| {
            let Some(number) = parse_version(&version) else {
                return Ok(None);
            };
            if !version_exists(conn, &localpart, number)? {
                return Ok(None);
            }
            let mut statement = conn.prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                        data
                 FROM backup_keys
                 WHERE localpart = ?1 AND version = ?2
                   AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)
                 ORDER BY room_id, session_id",
            )?;
            let keys = statement
                .query_map(
                    params![localpart, number, room_id, session_id],
                    key_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(keys))
        })
        .await
    }

    /// Deletes keys of a backup version (any version, not only the current one): all, one
    /// room's, or one session's.
    pub async fn delete_backup_keys(
        &self,
        localpart: String,
        version: String,
        room_id: Option<String>,
        session_id: Option<String>,
    ) -> Result<BackupWrite> {
        self.write(move |conn| {
            let Some(number) = parse_version(&version) else {
                return Ok(BackupWrite::UnknownVersion);
            };
            if !version_exists(conn, &localpart, number)? {
                return Ok(BackupWrite::UnknownVersion);
            }
            let deleted = conn
                .prepare_cached(
                    "DELETE FROM backup_keys
                     WHERE localpart = ?1 AND version = ?2
                       AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
                )?
                .execute(params![localpart, number, room_id, session_id])?;
            finish_write(conn, &localpart, number, deleted > 0)
        })
        .await
    }
}

fn parse_version(version: &str) -> Option<i64> {
    version
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && n.to_string() == version)
}

fn current_version(conn: &Connection, localpart: &str) -> Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT max(version) FROM backup_versions WHERE localpart = ?1 AND deleted = 0",
            [localpart],
            |row| row.get(0),
        )
        .optional()?
        .flatten())
}

fn version_exists(conn: &Connection, localpart: &str, version: i64) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM backup_versions WHERE localpart = ?1 AND version = ?2 AND deleted = 0",
            params![localpart, version],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// A `BackupKey` from a row's first six columns: room_id, session_id, first_message_index,
/// forwarded_count, is_verified, data.
pub(crate) fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BackupKey> {
    Ok(BackupKey {
        room_id: row.get(0)?,
        session_id: row.get(1)?,
        first_message_index: row.get::<_, i64>(2)? as u64,
        forwarded_count: row.get::<_, i64>(3)? as u64,
        is_verified: row.get(4)?,
        data: row.get(5)?,
    })
}

fn stored_key(
    conn: &Connection,
    localpart: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> Result<Option<BackupKey>> {
    Ok(conn
        .prepare_cached(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, data
             FROM backup_keys
             WHERE localpart = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
        )?
        .query_row(
            params![localpart, version, room_id, session_id],
            key_from_row,
        )
        .optional()?)
}

/// Bumps the version's etag if anything changed; returns its count and etag.
fn finish_write(
    conn: &Connection,
    localpart: &str,
    version: i64,
    changed: bool,
) -> Result<BackupWrite> {
    if changed {
        conn.execute(
            "UPDATE backup_versions SET etag = etag + 1 WHERE localpart = ?1 AND version = ?2",
            params![localpart, version],
        )?;
    }
    let (count, etag): (i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM backup_keys WHERE localpart = ?1 AND version = ?2), etag
         FROM backup_versions WHERE localpart = ?1 AND version = ?2",
        params![localpart, version],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(BackupWrite::Done {
        count: count as u64,
        etag: etag.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: &str, verified: bool, index: u64, forwarded: u64, data: &str) -> BackupKey {
        BackupKey {
            room_id: "!room:example".into(),
            session_id: session.into(),
            first_message_index: index,
            forwarded_count: forwarded,
            is_verified: verified,
            data: data.into(),
        }
    }

    #[test]
    fn better_keys_are_verified_then_earlier_then_less_forwarded() {
        let base = key("s", false, 5, 2, "");
        assert!(key("s", true, 9, 9, "").is_better_than(&base));
        assert!(!key("s", false, 0, 0, "").is_better_than(&key("s", true, 9, 9, "")));
        assert!(key("s", false, 4, 9, "").is_better_than(&base));
        assert!(!key("s", false, 6, 0, "").is_better_than(&base));
        assert!(key("s", false, 5, 1, "").is_better_than(&base));
        assert!(
            !key("s", false, 5, 2, "").is_better_than(&base),
            "equal is not better"
        );
    }

    #[tokio::test]
    async fn versions_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("alice".into(), None).await.unwrap();
        let alice = || "alice".to_owned();
        assert_eq!(store.backup_version(alice(), None).await.unwrap(), None);

        let v1 = store
            .create_backup_version(alice(), "{}".into())
            .await
            .unwrap();
        assert_eq!(v1, "1");
        let put = |version: &str, keys| store.put_backup_keys(alice(), version.into(), keys);
        let done = put("1", vec![key("s", false, 5, 2, "first")])
            .await
            .unwrap();
        assert_eq!(
            done,
            BackupWrite::Done {
                count: 1,
                etag: "1".into()
            }
        );
        // A worse key is ignored, a better one replaces.
        let worse = put("1", vec![key("s", false, 6, 0, "worse")])
            .await
            .unwrap();
        assert_eq!(
            worse,
            BackupWrite::Done {
                count: 1,
                etag: "1".into()
            }
        );
        put("1", vec![key("s", true, 9, 9, "verified")])
            .await
            .unwrap();
        let keys = store
            .backup_keys(alice(), "1".into(), None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].data, "verified");

        let v2 = store
            .create_backup_version(alice(), "{}".into())
            .await
            .unwrap();
        assert_eq!(v2, "2");
        assert_eq!(
            put("1", vec![]).await.unwrap(),
            BackupWrite::NotCurrent {
                current: "2".into()
            }
        );
        assert_eq!(put("7", vec![]).await.unwrap(), BackupWrite::UnknownVersion);
        assert_eq!(
            put("01", vec![]).await.unwrap(),
            BackupWrite::UnknownVersion
        );
        let current = store.backup_version(alice(), None).await.unwrap().unwrap();
        assert_eq!((current.version.as_str(), current.count), ("2", 0));
        let old = store
            .backup_version(alice(), Some("1".into()))
            .await
            .unwrap();
        assert_eq!(old.unwrap().count, 1);

        // Deleting the current version makes the older one current again; numbers are not
        // reused.
        assert!(
            store
                .delete_backup_version(alice(), "2".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_backup_version(alice(), "2".into())
                .await
                .unwrap()
        );
        let current = store.backup_version(alice(), None).await.unwrap().unwrap();
        assert_eq!(current.version, "1");
        let v3 = store
            .create_backup_version(alice(), "{}".into())
            .await
            .unwrap();
        assert_eq!(v3, "3");

        let deleted =
            store.delete_backup_keys(alice(), "1".into(), Some("!room:example".into()), None);
        assert_eq!(
            deleted.await.unwrap(),
            BackupWrite::Done {
                count: 0,
                etag: "3".into()
            }
        );
    }
}
