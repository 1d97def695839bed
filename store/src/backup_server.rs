//! The backup server's side (ARCHITECTURE.md "Backup server and mailbox"): one-time subscription
//! tokens, the devices subscribed with them and their quotas, and the replica of each subscriber's
//! PDUs. (The client's room-keys backup is `backup.rs`, a different thing.)

use rusqlite::{OptionalExtension, params};

use crate::backup::{BackupKey, key_from_row};
use crate::error::Result;
use crate::{Store, now_ms};

/// A device subscribed to this backup server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSubscriber {
    pub server: String,
    pub quota_bytes: i64,
    pub bytes_used: i64,
    pub pdus: i64,
}

/// A checked PDU a subscriber sent for its replica.
#[derive(Debug, Clone)]
pub struct ReplicaPdu {
    pub event_id: String,
    pub room_id: String,
    /// The PDU as canonical JSON; its length (with the tag's) is what the quota counts.
    pub json: String,
    /// The device's tag on the entry, kept as it came (this server cannot check it: only the
    /// device's restore can). A new tag for an entry held already replaces the old one.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaOutcome {
    Stored,
    /// Already in the replica (a retried batch); costs nothing.
    Duplicate,
    /// Storing it would exceed the subscriber's quota: not stored.
    OverQuota,
}

/// A PDU of a replica, with its position (the order received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub id: i64,
    pub event_id: String,
    pub room_id: String,
    pub json: String,
    pub tag: Option<String>,
}

fn subscriber(conn: &rusqlite::Connection, server: &str) -> Result<Option<BackupSubscriber>> {
    Ok(conn
        .query_row(
            "SELECT server, quota_bytes, bytes_used,
                    (SELECT count(*) FROM backup_replica WHERE subscriber = s.server)
             FROM backup_subscribers s WHERE server = ?1",
            [server],
            |row| {
                Ok(BackupSubscriber {
                    server: row.get(0)?,
                    quota_bytes: row.get(1)?,
                    bytes_used: row.get(2)?,
                    pdus: row.get(3)?,
                })
            },
        )
        .optional()?)
}

impl Store {
    /// Records an invitation (the token's SHA-256, hex) with the quota it grants. Recording the
    /// same token again changes nothing, so a used token cannot be revived.
    pub async fn backup_add_token(&self, token_sha256: String, quota_bytes: i64) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO backup_tokens (token_sha256, quota_bytes, created_ms)
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![token_sha256, quota_bytes, now_ms()])?;
            Ok(())
        })
        .await
    }

    /// Subscribes `server` with the token of this hash, using the token up. `None` when there is
    /// no such token or another server used it. The same server presenting its own used token
    /// again (its answer was lost) gets its subscription back; a new token adds its quota.
    pub async fn backup_subscribe(
        &self,
        server: String,
        token_sha256: String,
    ) -> Result<Option<BackupSubscriber>> {
        self.write(move |conn| {
            let token: Option<(i64, Option<String>)> = conn
                .query_row(
                    "SELECT quota_bytes, used_by FROM backup_tokens WHERE token_sha256 = ?1",
                    [&token_sha256],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            match token {
                None => return Ok(None),
                Some((_, Some(used_by))) if used_by != server => return Ok(None),
                Some((_, Some(_))) => {
                    // Used by this very server: a repeat, but only while it is subscribed (a
                    // token does not outlive an unsubscribe).
                    return subscriber(conn, &server);
                }
                Some((quota, None)) => {
                    let now = now_ms();
                    conn.prepare_cached(
                        "UPDATE backup_tokens SET used_by = ?2, used_ms = ?3
                         WHERE token_sha256 = ?1",
                    )?
                    .execute(params![token_sha256, server, now])?;
                    conn.prepare_cached(
                        "INSERT INTO backup_subscribers (server, quota_bytes, subscribed_ms)
                         VALUES (?1, ?2, ?3)
                         ON CONFLICT (server) DO UPDATE SET quota_bytes = quota_bytes + ?2",
                    )?
                    .execute(params![server, quota, now])?;
                }
            }
            subscriber(conn, &server)
        })
        .await
    }

    pub async fn backup_subscriber(&self, server: String) -> Result<Option<BackupSubscriber>> {
        self.read(move |conn| subscriber(conn, &server)).await
    }

    /// Adds PDUs to `server`'s replica in order, as far as its quota allows, and notes their
    /// senders' servers as its correspondents (see `backup_take_mail`); a PDU held already
    /// takes the new tag it came with. `None` when `server` is not subscribed.
    pub async fn backup_store_replica(
        &self,
        server: String,
        pdus: Vec<ReplicaPdu>,
    ) -> Result<Option<Vec<ReplicaOutcome>>> {
        self.write(move |conn| {
            let Some(subscriber) = subscriber(conn, &server)? else {
                return Ok(None);
            };
            let mut used = subscriber.bytes_used;
            let now = now_ms();
            let mut held = conn.prepare_cached(
                "SELECT coalesce(length(tag), 0) FROM backup_replica
                 WHERE subscriber = ?1 AND event_id = ?2",
            )?;
            let mut retag = conn.prepare_cached(
                "UPDATE backup_replica SET tag = ?3 WHERE subscriber = ?1 AND event_id = ?2",
            )?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO backup_replica (subscriber, event_id, room_id, pdu, received_ms, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut correspondent = conn.prepare_cached(
                "INSERT OR IGNORE INTO backup_correspondents (subscriber, server)
                 SELECT ?1, substr(sender, instr(sender, ':') + 1)
                 FROM (SELECT CASE WHEN json_valid(?2) THEN json_extract(?2, '$.sender') END AS sender)
                 WHERE sender LIKE '@%:%'",
            )?;
            let mut outcomes = Vec::with_capacity(pdus.len());
            for pdu in pdus {
                let tag_size = pdu.tag.as_ref().map_or(0, String::len) as i64;
                let old_tag: Option<i64> = held
                    .query_row(params![server, pdu.event_id], |row| row.get(0))
                    .optional()?;
                let outcome = match old_tag {
                    Some(old) => {
                        if pdu.tag.is_some() && used - old + tag_size <= subscriber.quota_bytes {
                            retag.execute(params![server, pdu.event_id, pdu.tag])?;
                            used += tag_size - old;
                        }
                        ReplicaOutcome::Duplicate
                    }
                    None if used + pdu.json.len() as i64 + tag_size > subscriber.quota_bytes => {
                        ReplicaOutcome::OverQuota
                    }
                    None => {
                        insert.execute(params![
                            server,
                            pdu.event_id,
                            pdu.room_id,
                            pdu.json,
                            now,
                            pdu.tag
                        ])?;
                        used += pdu.json.len() as i64 + tag_size;
                        ReplicaOutcome::Stored
                    }
                };
                if outcome != ReplicaOutcome::OverQuota {
                    correspondent.execute(params![server, pdu.json])?;
                }
                outcomes.push(outcome);
            }
            conn.prepare_cached("UPDATE backup_subscribers SET bytes_used = ?2 WHERE server = ?1")?
                .execute(params![server, used])?;
            Ok(Some(outcomes))
        })
        .await
    }

    /// Up to `limit` PDUs of `server`'s replica after position `from`, in the order received,
    /// optionally of one room only.
    pub async fn backup_replica_page(
        &self,
        server: String,
        room_id: Option<String>,
        from: i64,
        limit: u32,
    ) -> Result<Vec<ReplicaEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, event_id, room_id, pdu, tag FROM backup_replica
                 WHERE subscriber = ?1 AND id > ?2 AND (?3 IS NULL OR room_id = ?3)
                 ORDER BY id LIMIT ?4",
            )?;
            let entries = statement
                .query_map(params![server, from, room_id, limit], |row| {
                    Ok(ReplicaEntry {
                        id: row.get(0)?,
                        event_id: row.get(1)?,
                        room_id: row.get(2)?,
                        json: row.get(3)?,
                        tag: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    /// Keeps room-key backup entries of `server`'s backup `version` (encrypted by the device;
    /// each replacing the same session's), dropping any of an older version, as far as the quota
    /// allows. `None` when it is not subscribed, `Some(false)` when over quota (nothing kept).
    pub async fn backup_put_room_keys(
        &self,
        server: String,
        version: String,
        keys: Vec<BackupKey>,
    ) -> Result<Option<bool>> {
        self.write(move |conn| {
            let Some(subscriber) = subscriber(conn, &server)? else {
                return Ok(None);
            };
            // Worked out first, written only if within the quota: an over-quota request
            // changes nothing.
            let stale: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(length(data)), 0) FROM backup_room_keys
                     WHERE subscriber = ?1 AND version != ?2",
                )?
                .query_row(params![server, version], |row| row.get(0))?;
            let mut used = subscriber.bytes_used - stale;
            let mut old_size = conn.prepare_cached(
                "SELECT length(data) FROM backup_room_keys
                 WHERE subscriber = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
            )?;
            for key in &keys {
                let old: i64 = old_size
                    .query_row(
                        params![server, version, key.room_id, key.session_id],
                        |row| row.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                used += key.data.len() as i64 - old;
            }
            if used > subscriber.quota_bytes {
                return Ok(Some(false));
            }
            conn.prepare_cached(
                "DELETE FROM backup_room_keys WHERE subscriber = ?1 AND version != ?2",
            )?
            .execute(params![server, version])?;
            let mut insert = conn.prepare_cached(
                "INSERT OR REPLACE INTO backup_room_keys
                     (subscriber, version, room_id, session_id, first_message_index,
                      forwarded_count, is_verified, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for key in keys {
                insert.execute(params![
                    server,
                    version,
                    key.room_id,
                    key.session_id,
                    key.first_message_index as i64,
                    key.forwarded_count as i64,
                    key.is_verified,
                    key.data
                ])?;
            }
            conn.prepare_cached("UPDATE backup_subscribers SET bytes_used = ?2 WHERE server = ?1")?
                .execute(params![server, used.max(0)])?;
            Ok(Some(true))
        })
        .await
    }

    /// Up to `limit` room-key entries of `server`'s backup `version` after position `from`, with
    /// their positions.
    pub async fn backup_room_keys_page(
        &self,
        server: String,
        version: String,
        from: i64,
        limit: u32,
    ) -> Result<Vec<(i64, BackupKey)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified,
                        data, id
                 FROM backup_room_keys
                 WHERE subscriber = ?1 AND version = ?2 AND id > ?3
                 ORDER BY id LIMIT ?4",
            )?;
            let keys = statement
                .query_map(params![server, version, from, limit], |row| {
                    Ok((row.get(6)?, key_from_row(row)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keys)
        })
        .await
    }

    /// One PDU of `server`'s replica, as kept.
    pub async fn backup_replica_pdu(
        &self,
        server: String,
        event_id: String,
    ) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT pdu FROM backup_replica WHERE subscriber = ?1 AND event_id = ?2",
                    params![server, event_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Replaces a PDU of `server`'s replica with its redacted form, which is never larger; the
    /// bytes it frees go back to the quota.
    pub async fn backup_redact_replica_pdu(
        &self,
        server: String,
        event_id: String,
        redacted: String,
    ) -> Result<()> {
        self.write(move |conn| {
            let old: Option<i64> = conn
                .query_row(
                    "SELECT length(pdu) FROM backup_replica WHERE subscriber = ?1 AND event_id = ?2",
                    params![server, event_id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(old) = old else {
                return Ok(());
            };
            conn.prepare_cached(
                "UPDATE backup_replica SET pdu = ?3 WHERE subscriber = ?1 AND event_id = ?2",
            )?
            .execute(params![server, event_id, redacted])?;
            conn.prepare_cached(
                "UPDATE backup_subscribers SET bytes_used = max(0, bytes_used - ?2 + ?3)
                 WHERE server = ?1",
            )?
            .execute(params![server, old, redacted.len() as i64])?;
            Ok(())
        })
        .await
    }

    /// Keeps `server`'s sealed identity blob under `lookup_id`, replacing its previous one.
    /// `None` when it is not subscribed; `Some(false)` when another subscriber holds that lookup
    /// id (the same recovery key: refused rather than letting one subscriber take another's).
    pub async fn backup_put_identity(
        &self,
        server: String,
        lookup_id: String,
        blob: String,
    ) -> Result<Option<bool>> {
        self.write(move |conn| {
            if subscriber(conn, &server)?.is_none() {
                return Ok(None);
            }
            let holder: Option<String> = conn
                .query_row(
                    "SELECT subscriber FROM backup_identity WHERE lookup_id = ?1",
                    [&lookup_id],
                    |row| row.get(0),
                )
                .optional()?;
            if holder.is_some_and(|holder| holder != server) {
                return Ok(Some(false));
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO backup_identity (subscriber, lookup_id, blob, updated_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![server, lookup_id, blob, now_ms()])?;
            Ok(Some(true))
        })
        .await
    }

    /// The sealed identity blob kept under `lookup_id`, and whose it is.
    pub async fn backup_identity(&self, lookup_id: String) -> Result<Option<(String, String)>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT subscriber, blob FROM backup_identity WHERE lookup_id = ?1",
                    [&lookup_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .await
    }

    /// Ends `server`'s subscription and deletes everything kept for it; returns how many PDUs
    /// were deleted.
    pub async fn backup_unsubscribe(&self, server: String) -> Result<i64> {
        self.write(move |conn| {
            let pdus: i64 = conn.query_row(
                "SELECT count(*) FROM backup_replica WHERE subscriber = ?1",
                [&server],
                |row| row.get(0),
            )?;
            // The replica, identity, mail and room keys go with it (ON DELETE CASCADE).
            conn.prepare_cached("DELETE FROM backup_subscribers WHERE server = ?1")?
                .execute([&server])?;
            Ok(pdus)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(id: &str, size: usize) -> ReplicaPdu {
        ReplicaPdu {
            event_id: id.into(),
            room_id: "!r:x".into(),
            json: "x".repeat(size),
            tag: None,
        }
    }

    fn key(session: &str, data_len: usize) -> BackupKey {
        BackupKey {
            room_id: "!r:x".into(),
            session_id: session.into(),
            first_message_index: 0,
            forwarded_count: 0,
            is_verified: false,
            data: "k".repeat(data_len),
        }
    }

    #[tokio::test]
    async fn room_keys_replace_their_session_drop_old_versions_and_count_against_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let put = |version: &str, keys: Vec<BackupKey>| {
            store.backup_put_room_keys("a".into(), version.into(), keys)
        };
        assert_eq!(
            put("1", vec![key("s1", 10)]).await.unwrap(),
            None,
            "not subscribed"
        );
        store.backup_add_token("t".into(), 100).await.unwrap();
        store
            .backup_subscribe("a".into(), "t".into())
            .await
            .unwrap()
            .unwrap();
        let used = || async {
            store
                .backup_subscriber("a".into())
                .await
                .unwrap()
                .unwrap()
                .bytes_used
        };
        assert_eq!(
            put("1", vec![key("s1", 40), key("s2", 40)]).await.unwrap(),
            Some(true)
        );
        assert_eq!(used().await, 80);
        // A better copy of s1 replaces it; over the quota, nothing of the request is kept.
        assert_eq!(put("1", vec![key("s1", 30)]).await.unwrap(), Some(true));
        assert_eq!(used().await, 70);
        assert_eq!(
            put("1", vec![key("s3", 20), key("s4", 20)]).await.unwrap(),
            Some(false)
        );
        assert_eq!(used().await, 70);
        let page = store
            .backup_room_keys_page("a".into(), "1".into(), 0, 10)
            .await
            .unwrap();
        let sessions: Vec<&str> = page.iter().map(|(_, k)| k.session_id.as_str()).collect();
        assert_eq!(sessions, ["s2", "s1"]);
        // A new backup version drops the old one's entries.
        assert_eq!(put("2", vec![key("s9", 5)]).await.unwrap(), Some(true));
        assert_eq!(used().await, 5);
        assert!(
            store
                .backup_room_keys_page("a".into(), "1".into(), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn tokens_are_one_time_and_quotas_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (alice, bob) = ("a".to_string(), "b".to_string());
        assert_eq!(
            store
                .backup_subscribe(alice.clone(), "nope".into())
                .await
                .unwrap(),
            None
        );
        store.backup_add_token("t1".into(), 100).await.unwrap();
        let sub = store
            .backup_subscribe(alice.clone(), "t1".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.quota_bytes, 100);
        // A repeat by the same server is fine; another server cannot reuse it.
        assert!(
            store
                .backup_subscribe(alice.clone(), "t1".into())
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            store
                .backup_subscribe(bob.clone(), "t1".into())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .backup_store_replica(bob.clone(), vec![pdu("$x", 1)])
                .await
                .unwrap(),
            None
        );

        let outcomes = store
            .backup_store_replica(
                alice.clone(),
                vec![pdu("$1", 60), pdu("$1", 60), pdu("$2", 50), pdu("$3", 40)],
            )
            .await
            .unwrap()
            .unwrap();
        use ReplicaOutcome::*;
        assert_eq!(outcomes, [Stored, Duplicate, OverQuota, Stored]);
        let sub = store
            .backup_subscriber(alice.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((sub.bytes_used, sub.pdus), (100, 2));

        let page = store
            .backup_replica_page(alice.clone(), None, 0, 1)
            .await
            .unwrap();
        assert_eq!(page[0].event_id, "$1");
        let rest = store
            .backup_replica_page(alice.clone(), Some("!r:x".into()), page[0].id, 10)
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event_id, "$3");

        // The sealed identity: only a subscriber keeps one, under a lookup id no other
        // subscriber holds; anyone with the id reads it.
        assert_eq!(
            store
                .backup_put_identity(bob.clone(), "l1".into(), "b".into())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .backup_put_identity(alice.clone(), "l1".into(), "sealed".into())
                .await
                .unwrap(),
            Some(true)
        );
        assert_eq!(
            store
                .backup_put_identity(alice.clone(), "l1".into(), "sealed 2".into())
                .await
                .unwrap(),
            Some(true)
        );
        assert_eq!(
            store.backup_identity("l1".into()).await.unwrap(),
            Some((alice.clone(), "sealed 2".to_owned()))
        );
        assert_eq!(store.backup_unsubscribe(alice.clone()).await.unwrap(), 2);
        assert_eq!(store.backup_subscriber(alice.clone()).await.unwrap(), None);
        assert!(
            store
                .backup_replica_page(alice.clone(), None, 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.backup_identity("l1".into()).await.unwrap(), None);
        // The token is spent for good, even for its first user.
        assert_eq!(
            store.backup_subscribe(alice, "t1".into()).await.unwrap(),
            None
        );
    }
}
