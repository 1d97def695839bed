//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys and the
//! signatures others upload for them. Keys are kept as the JSON the client uploaded; the node
//! parses and checks them, the store only orders and counts them.
//!
//! Every change to a user's device keys or cross-signing keys takes a stream position, which is
//! how `/sync` and `keys/changes` learn whose device list changed.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Result, StoreError};
use crate::{Store, next_stream_pos};

/// A one-time or fallback key: `algorithm:key_id` names it, `key` is its JSON (a string or a
/// signed object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneTimeKey {
    pub algorithm: String,
    pub key_id: String,
    pub key: String,
}

/// What a device uploads with `keys/upload`, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct KeyUpload {
    pub user_id: String,
    pub device_id: String,
    /// The device keys as canonical JSON.
    pub device_keys: Option<String>,
    pub one_time_keys: Vec<OneTimeKey>,
    /// At most one per algorithm; replaces the device's fallback key for that algorithm.
    pub fallback_keys: Vec<OneTimeKey>,
}

/// A key claimed for a device: a one-time key (now deleted) or its fallback key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKey {
    pub user_id: String,
    pub device_id: String,
    pub key: OneTimeKey,
    pub fallback: bool,
}

/// One of a user's cross-signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossSigningKey {
    /// `master`, `self_signing` or `user_signing`.
    pub usage: String,
    /// Unpadded base64; the key's id is `ed25519:<public_key>`.
    pub public_key: String,
    /// The key object as canonical JSON.
    pub json: String,
}

/// A signature on a device's keys (`target_key_id` = device id) or on a cross-signing key
/// (`target_key_id` = its public key), made by `signer_key_id` (`ed25519:...`) of
/// `signer_user_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySignature {
    pub target_user_id: String,
    pub target_key_id: String,
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub signature: String,
}

/// The users with a key change at a stream position in (`?1`, `?2`]: each device's and
/// cross-signing key's newest change, devices deleted with their keys, and other servers' users
/// whose server said their device list changed.
const KEY_CHANGES: &str = "
    SELECT user_id FROM device_keys WHERE stream_pos > ?1 AND stream_pos <= ?2
    UNION
    SELECT user_id FROM cross_signing_keys WHERE stream_pos > ?1 AND stream_pos <= ?2
    UNION
    SELECT user_id FROM device_keys_tombstones WHERE stream_pos > ?1 AND stream_pos <= ?2
    UNION
    SELECT user_id FROM remote_device_lists WHERE stream_pos > ?1 AND stream_pos <= ?2";

impl Store {
    /// Stores a device's upload: device keys (a new stream position only if they changed),
    /// one-time keys and fallback keys. A one-time key id already held with different content
    /// fails the whole upload with [`StoreError::KeyConflict`]; the same key again is ignored.
    /// Returns the device's one-time key counts after the upload.
    pub async fn upload_keys(&self, upload: KeyUpload) -> Result<BTreeMap<String, u64>> {
        self.write(move |conn| {
            let KeyUpload {
                user_id,
                device_id,
                device_keys,
                one_time_keys,
                fallback_keys,
            } = upload;
            if let Some(keys) = device_keys {
                let stored: Option<String> = conn
                    .query_row(
                        "SELECT keys FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
                        params![user_id, device_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if stored.as_ref() != Some(&keys) {
                    let position = next_stream_pos(conn)?;
                    conn.execute(
                        "INSERT INTO device_keys (user_id, device_id, keys, stream_pos)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (user_id, device_id) DO UPDATE
                         SET keys = excluded.keys, stream_pos = excluded.stream_pos",
                        params![user_id, device_id, keys, position],
                    )?;
                }
            }
            let mut existing = conn.prepare_cached(
                "SELECT key FROM one_time_keys
                 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
            )?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for key in one_time_keys {
                let stored: Option<String> = existing
                    .query_row(
                        params![user_id, device_id, key.algorithm, key.key_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                match stored {
                    Some(stored) if stored == key.key => {}
                    Some(old) => {
                        return Err(StoreError::KeyConflict {
                            key_id: format!("{}:{}", key.algorithm, key.key_id),
                            old,
                            new: key.key,
                        });
                    }
                    None => {
                        insert.execute(params![
                            user_id,
                            device_id,
                            key.algorithm,
                            key.key_id,
                            key.key
                        ])?;
                    }
                }
            }
            for key in fallback_keys {
                // The same key again keeps its `used` mark; a new one starts unused.
                conn.execute(
                    "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key, used)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)
                     ON CONFLICT (user_id, device_id, algorithm) DO UPDATE
                     SET key_id = excluded.key_id, key = excluded.key, used = 0
                     WHERE key_id IS NOT excluded.key_id OR key IS NOT excluded.key",
                    params![user_id, device_id, key.algorithm, key.key_id, key.key],
                )?;
            }
            counts(conn, &user_id, &device_id)
        })
        .await
    }

    /// How many unclaimed one-time keys the device has, per algorithm.
    pub async fn one_time_key_counts(
        &self,
        user_id: String,
        device_id: String,
    ) -> Result<BTreeMap<String, u64>> {
        self.read(move |conn| counts(conn, &user_id, &device_id))
            .await
    }

    /// The algorithms of the device's fallback keys that nobody has claimed yet.
    pub async fn unused_fallback_key_types(
        &self,
        user_id: String,
        device_id: String,
    ) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT algorithm FROM fallback_keys
                 WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
            )?;
            let algorithms = statement
                .query_map(params![user_id, device_id], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(algorithms)
        })
        .await
    }

    /// The stored device keys of `user_id` as (device id, JSON): those of `device_ids`, or all of
    /// them when `device_ids` is empty.
    pub async fn device_keys(
        &self,
        user_id: String,
        device_ids: Vec<String>,
    ) -> Result<Vec<(String, String)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT device_id, keys FROM device_keys WHERE user_id = ?1 ORDER BY device_id",
            )?;
            let keys = statement
                .query_map([user_id], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
            Ok(keys
                .into_iter()
                .filter(|(device_id, _)| device_ids.is_empty() || device_ids.contains(device_id))
                .collect())
        })
        .await
    }

    /// Claims one key per (user id, device id, algorithm): the oldest one-time key, which is
    /// deleted, or else the device's fallback key, which is marked used but stays. Devices with
    /// neither are left out of the result.
    pub async fn claim_keys(
        &self,
        claims: Vec<(String, String, String)>,
    ) -> Result<Vec<ClaimedKey>> {
        self.write(move |conn| {
            let mut claimed = Vec::new();
            for (user_id, device_id, algorithm) in claims {
                let one_time = conn
                    .prepare_cached(
                        "DELETE FROM one_time_keys WHERE rowid = (
                             SELECT rowid FROM one_time_keys
                             WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                             ORDER BY rowid LIMIT 1)
                         RETURNING key_id, key",
                    )?
                    .query_row(params![user_id, device_id, algorithm], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                let (found, fallback) = match one_time {
                    Some(found) => (Some(found), false),
                    None => {
                        let found = conn
                            .prepare_cached(
                                "UPDATE fallback_keys SET used = 1
                                 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
                                 RETURNING key_id, key",
                            )?
                            .query_row(params![user_id, device_id, algorithm], |row| {
                                Ok((row.get(0)?, row.get(1)?))
                            })
                            .optional()?;
                        (found, true)
                    }
                };
                if let Some((key_id, key)) = found {
                    claimed.push(ClaimedKey {
                        user_id,
                        device_id,
                        key: OneTimeKey {
                            algorithm,
                            key_id,
                            key,
                        },
                        fallback,
                    });
                }
            }
            Ok(claimed)
        })
        .await
    }

    /// Sets some of a user's cross-signing keys (one per usage), taking a stream position if any
    /// changed. Returns whether any changed.
    pub async fn set_cross_signing_keys(
        &self,
        user_id: String,
        keys: Vec<CrossSigningKey>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let mut position = None;
            for key in keys {
                let stored: Option<String> = conn
                    .query_row(
                        "SELECT keys FROM cross_signing_keys WHERE user_id = ?1 AND usage = ?2",
                        params![user_id, key.usage],
                        |row| row.get(0),
                    )
                    .optional()?;
                if stored.as_ref() == Some(&key.json) {
                    continue;
                }
                let pos = match position {
                    Some(pos) => pos,
                    None => *position.insert(next_stream_pos(conn)?),
                };
                conn.execute(
                    "INSERT INTO cross_signing_keys (user_id, usage, public_key, keys, stream_pos)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (user_id, usage) DO UPDATE
                     SET public_key = excluded.public_key, keys = excluded.keys,
                         stream_pos = excluded.stream_pos",
                    params![user_id, key.usage, key.public_key, key.json, pos],
                )?;
            }
            Ok(position.is_some())
        })
        .await
    }

    /// A user's cross-signing keys, by usage.
    pub async fn cross_signing_keys(&self, user_id: String) -> Result<Vec<CrossSigningKey>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT usage, public_key, keys FROM cross_signing_keys
                 WHERE user_id = ?1 ORDER BY usage",
            )?;
            let keys = statement
                .query_map([user_id], |row| {
                    Ok(CrossSigningKey {
                        usage: row.get(0)?,
                        public_key: row.get(1)?,
                        json: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(keys)
        })
        .await
    }

    /// Stores signatures (replacing one by the same signing key), and gives each signed device or
    /// cross-signing key a new stream position so its user's device list counts as changed.
    pub async fn add_key_signatures(&self, signatures: Vec<KeySignature>) -> Result<()> {
        self.write(move |conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO key_signatures
                     (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
                 DO UPDATE SET signature = excluded.signature",
            )?;
            let mut targets = std::collections::BTreeSet::new();
            for s in &signatures {
                insert.execute(params![
                    s.target_user_id,
                    s.target_key_id,
                    s.signer_user_id,
                    s.signer_key_id,
                    s.signature
                ])?;
                targets.insert((&s.target_user_id, &s.target_key_id));
            }
            if targets.is_empty() {
                return Ok(());
            }
            let position = next_stream_pos(conn)?;
            for (user_id, key_id) in targets {
                conn.execute(
                    "UPDATE device_keys SET stream_pos = ?3 WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, key_id, position],
                )?;
                conn.execute(
                    "UPDATE cross_signing_keys SET stream_pos = ?3
                     WHERE user_id = ?1 AND public_key = ?2",
                    params![user_id, key_id, position],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The uploaded signatures on `target_user_id`'s keys made by any of `signers`.
    pub async fn key_signatures(
        &self,
        target_user_id: String,
        signers: Vec<String>,
    ) -> Result<Vec<KeySignature>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT target_key_id, signer_user_id, signer_key_id, signature
                 FROM key_signatures WHERE target_user_id = ?1
                 ORDER BY target_key_id, signer_user_id, signer_key_id",
            )?;
            let signatures = statement
                .query_map([&target_user_id], |row| {
                    Ok(KeySignature {
                        target_user_id: target_user_id.clone(),
                        target_key_id: row.get(0)?,
                        signer_user_id: row.get(1)?,
                        signer_key_id: row.get(2)?,
                        signature: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(signatures
                .into_iter()
                .filter(|s| signers.contains(&s.signer_user_id))
                .collect())
        })
        .await
    }

    /// Records that another server's user changed their device list, as their server's update
    /// numbered `stream_id` says (`None`: an update without a number, such as a cross-signing
    /// change): the change takes a stream position, so `/sync` and `keys/changes` report it like
    /// a local user's. A repeat of the last numbered update changes nothing. Returns whether it
    /// was new.
    pub async fn note_remote_device_list_change(
        &self,
        user_id: String,
        stream_id: Option<i64>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let seen: Option<Option<i64>> = conn
                .query_row(
                    "SELECT stream_id FROM remote_device_lists WHERE user_id = ?1",
                    [&user_id],
                    |row| row.get(0),
                )
                .optional()?;
            // Only a repeat of the last update is skipped: ids from a server restored from a
            // backup may start lower, and a spurious change costs a client one key query.
            if stream_id.is_some() && seen == Some(stream_id) {
                return Ok(false);
            }
            let position = next_stream_pos(conn)?;
            conn.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, stream_pos)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id) DO UPDATE
                 SET stream_id = coalesce(excluded.stream_id, stream_id),
                     stream_pos = excluded.stream_pos",
                params![user_id, stream_id, position],
            )?;
            Ok(true)
        })
        .await
    }

    /// The users whose device keys or cross-signing keys changed, or who lost a device with
    /// keys, at a stream position in (`after`, `upto`]. Only each key's newest change is kept,
    /// so a key changed again after `upto` is reported by the next range instead.
    pub async fn users_with_key_changes(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!("{KEY_CHANGES} ORDER BY user_id"))?;
            let users = statement
                .query_map(params![after, upto], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(users)
        })
        .await
    }

    /// Like [`Store::users_with_key_changes`], only `viewer` and the users who share a joined
    /// room with them: what `keys/changes` tells `viewer`.
    pub async fn users_with_key_changes_seen_by(
        &self,
        viewer: String,
        after: i64,
        upto: i64,
    ) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT user_id FROM ({KEY_CHANGES})
                 WHERE user_id = ?3 OR user_id IN (
                     SELECT other.user_id FROM memberships mine
                     JOIN memberships other ON other.room_id = mine.room_id
                     WHERE mine.user_id = ?3 AND mine.membership = 'join'
                       AND other.membership = 'join')
                 ORDER BY user_id"
            ))?;
            let users = statement
                .query_map(params![after, upto, viewer], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(users)
        })
        .await
    }
}

fn counts(conn: &Connection, user_id: &str, device_id: &str) -> Result<BTreeMap<String, u64>> {
    let mut statement = conn.prepare_cached(
        "SELECT algorithm, count(*) FROM one_time_keys
         WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
    )?;
    let counts = statement
        .query_map(params![user_id, device_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
    Ok(counts)
}

/// Removes the end-to-end keys of `user_id`'s devices matched by `device_filter` (an SQL condition
/// on `device_id` using `?2`), leaving a tombstone with a new stream position for each device
/// that had device keys. Call it only from a write job.
pub(crate) fn delete_device_keys(
    conn: &Connection,
    user_id: &str,
    device_filter: &str,
    device: Option<&str>,
) -> Result<()> {
    let had_keys: i64 = conn.query_row(
        &format!("SELECT count(*) FROM device_keys WHERE user_id = ?1 AND {device_filter}"),
        params![user_id, device],
        |row| row.get(0),
    )?;
    if had_keys > 0 {
        let position = next_stream_pos(conn)?;
        conn.execute(
            &format!(
                "INSERT INTO device_keys_tombstones (user_id, device_id, stream_pos)
                 SELECT user_id, device_id, ?3 FROM device_keys
                 WHERE user_id = ?1 AND {device_filter}
                 ON CONFLICT (user_id, device_id) DO UPDATE SET stream_pos = excluded.stream_pos"
            ),
            params![user_id, device, position],
        )?;
    }
    conn.execute(
        &format!(
            "DELETE FROM key_signatures WHERE target_user_id = ?1 AND target_key_id IN
                 (SELECT device_id FROM device_keys WHERE user_id = ?1 AND {device_filter})"
        ),
        params![user_id, device],
    )?;
    for table in ["device_keys", "one_time_keys", "fallback_keys"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE user_id = ?1 AND {device_filter}"),
            params![user_id, device],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::current_stream_pos;

    const ALICE: &str = "@alice:example";
    const BOB: &str = "@bob:example";

    fn otk(id: &str, key: &str) -> OneTimeKey {
        OneTimeKey {
            algorithm: "signed_curve25519".into(),
            key_id: id.into(),
            key: key.into(),
        }
    }

    async fn position(store: &Store) -> i64 {
        store.read(current_stream_pos).await.unwrap()
    }

    #[tokio::test]
    async fn uploads_count_and_conflicting_one_time_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let counts = store
            .upload_keys(KeyUpload {
                user_id: ALICE.into(),
                device_id: "A".into(),
                device_keys: Some(r#"{"device_id":"A"}"#.into()),
                one_time_keys: vec![otk("1", r#"{"key":"one"}"#), otk("2", r#"{"key":"two"}"#)],
                fallback_keys: vec![otk("f", r#"{"key":"fallback"}"#)],
            })
            .await
            .unwrap();
        assert_eq!(counts, BTreeMap::from([("signed_curve25519".into(), 2)]));
        let after_first = position(&store).await;

        // The same upload again changes nothing, not even the stream.
        let same = KeyUpload {
            user_id: ALICE.into(),
            device_id: "A".into(),
            device_keys: Some(r#"{"device_id":"A"}"#.into()),
            one_time_keys: vec![otk("1", r#"{"key":"one"}"#)],
            fallback_keys: vec![otk("f", r#"{"key":"fallback"}"#)],
        };
        store.upload_keys(same).await.unwrap();
        assert_eq!(position(&store).await, after_first);

        // A key id reused with other content fails the whole upload.
        let conflicting = KeyUpload {
            user_id: ALICE.into(),
            device_id: "A".into(),
            device_keys: None,
            one_time_keys: vec![
                otk("3", r#"{"key":"three"}"#),
                otk("1", r#"{"key":"other"}"#),
            ],
            fallback_keys: vec![],
        };
        match store.upload_keys(conflicting).await {
            Err(StoreError::KeyConflict { key_id, old, new }) => {
                assert_eq!(key_id, "signed_curve25519:1");
                assert_eq!(
                    (old.as_str(), new.as_str()),
                    (r#"{"key":"one"}"#, r#"{"key":"other"}"#)
                );
            }
            other => panic!("not refused: {other:?}"),
        }
        let counts = store
            .one_time_key_counts(ALICE.into(), "A".into())
            .await
            .unwrap();
        assert_eq!(counts["signed_curve25519"], 2, "key 3 was not kept either");

        // Changed device keys take a new position.
        let changed = KeyUpload {
            user_id: ALICE.into(),
            device_id: "A".into(),
            device_keys: Some(r#"{"device_id":"A","new":true}"#.into()),
            ..KeyUpload::default()
        };
        store.upload_keys(changed).await.unwrap();
        let after_change = position(&store).await;
        assert!(after_change > after_first);
        assert_eq!(
            store
                .users_with_key_changes(after_first, after_change)
                .await
                .unwrap(),
            [ALICE]
        );
        assert!(
            store
                .users_with_key_changes(after_change, after_change + 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn claims_take_one_time_keys_oldest_first_then_the_fallback_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store
            .upload_keys(KeyUpload {
                user_id: ALICE.into(),
                device_id: "A".into(),
                device_keys: None,
                one_time_keys: vec![otk("b", "\"first\""), otk("a", "\"second\"")],
                fallback_keys: vec![otk("f", "\"fallback\"")],
            })
            .await
            .unwrap();
        let claim =
            || store.claim_keys(vec![(ALICE.into(), "A".into(), "signed_curve25519".into())]);
        let first = claim().await.unwrap();
        assert_eq!(
            (first[0].key.key_id.as_str(), first[0].fallback),
            ("b", false)
        );
        assert_eq!(claim().await.unwrap()[0].key.key_id, "a");
        assert_eq!(
            store
                .unused_fallback_key_types(ALICE.into(), "A".into())
                .await
                .unwrap(),
            ["signed_curve25519"]
        );
        for _ in 0..2 {
            let fallback = claim().await.unwrap();
            assert_eq!(
                (fallback[0].key.key_id.as_str(), fallback[0].fallback),
                ("f", true)
            );
        }
        assert!(
            store
                .unused_fallback_key_types(ALICE.into(), "A".into())
                .await
                .unwrap()
                .is_empty()
        );
        // Uploading the same fallback key keeps it used; a new one is unused.
        let upload = |id: &str| KeyUpload {
            user_id: ALICE.into(),
            device_id: "A".into(),
            fallback_keys: vec![otk(id, "\"fallback\"")],
            ..KeyUpload::default()
        };
        store.upload_keys(upload("f")).await.unwrap();
        let unused = store.unused_fallback_key_types(ALICE.into(), "A".into());
        assert!(unused.await.unwrap().is_empty());
        store.upload_keys(upload("g")).await.unwrap();
        let unused = store.unused_fallback_key_types(ALICE.into(), "A".into());
        assert_eq!(unused.await.unwrap(), ["signed_curve25519"]);

        let nothing = store
            .claim_keys(vec![(BOB.into(), "B".into(), "signed_curve25519".into())])
            .await
            .unwrap();
        assert!(nothing.is_empty());
    }

    #[tokio::test]
    async fn other_servers_device_list_changes_count_once_per_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        const CAROL: &str = "@carol:remote.example";
        let start = position(&store).await;
        let note = |id| store.note_remote_device_list_change(CAROL.into(), id);
        assert!(note(Some(7)).await.unwrap());
        assert!(!note(Some(7)).await.unwrap(), "a repeated EDU");
        let after_first = position(&store).await;
        assert_eq!(after_first, start + 1);
        assert_eq!(
            store
                .users_with_key_changes(start, after_first)
                .await
                .unwrap(),
            [CAROL]
        );
        // Unnumbered updates always count, and keep the last number.
        assert!(note(None).await.unwrap());
        assert!(!note(Some(7)).await.unwrap());
        assert!(note(Some(8)).await.unwrap());
        let now = position(&store).await;
        assert_eq!(now, after_first + 2);
        assert_eq!(
            store
                .users_with_key_changes(after_first, now)
                .await
                .unwrap(),
            [CAROL]
        );
        assert!(
            store
                .users_with_key_changes(now, now + 5)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn cross_signing_keys_signatures_and_deleted_devices_count_as_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("alice".into(), None).await.unwrap();
        store
            .login_device(crate::NewDevice {
                localpart: "alice".into(),
                device_id: "A".into(),
                display_name: None,
                token_hash: b"a".to_vec(),
            })
            .await
            .unwrap();
        store
            .upload_keys(KeyUpload {
                user_id: ALICE.into(),
                device_id: "A".into(),
                device_keys: Some("{}".into()),
                ..KeyUpload::default()
            })
            .await
            .unwrap();

        let start = position(&store).await;
        let master = CrossSigningKey {
            usage: "master".into(),
            public_key: "MASTER".into(),
            json: "{}".into(),
        };
        assert!(
            store
                .set_cross_signing_keys(BOB.into(), vec![master.clone()])
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_cross_signing_keys(BOB.into(), vec![master])
                .await
                .unwrap(),
            "unchanged"
        );
        let after_cross_signing = position(&store).await;
        assert_eq!(after_cross_signing, start + 1);
        assert_eq!(
            store
                .users_with_key_changes(start, after_cross_signing)
                .await
                .unwrap(),
            [BOB]
        );

        let signature = |target: &str, key: &str, signer: &str| KeySignature {
            target_user_id: target.into(),
            target_key_id: key.into(),
            signer_user_id: signer.into(),
            signer_key_id: "ed25519:S".into(),
            signature: "sig".into(),
        };
        store
            .add_key_signatures(vec![
                signature(ALICE, "A", ALICE),
                signature(BOB, "MASTER", ALICE),
            ])
            .await
            .unwrap();
        let after_signatures = position(&store).await;
        assert_eq!(
            store
                .users_with_key_changes(after_cross_signing, after_signatures)
                .await
                .unwrap(),
            [ALICE, BOB]
        );
        let seen_by_bob = store.key_signatures(BOB.into(), vec![BOB.into()]);
        assert!(seen_by_bob.await.unwrap().is_empty());
        let seen_by_alice = store.key_signatures(BOB.into(), vec![BOB.into(), ALICE.into()]);
        assert_eq!(seen_by_alice.await.unwrap().len(), 1);

        assert!(store.delete_device(ALICE.into(), "A".into()).await.unwrap());
        let after_delete = position(&store).await;
        assert_eq!(
            store
                .users_with_key_changes(after_signatures, after_delete)
                .await
                .unwrap(),
            [ALICE]
        );
        let left = store.key_signatures(ALICE.into(), vec![ALICE.into()]);
        assert!(
            left.await.unwrap().is_empty(),
            "signatures went with the device"
        );
    }
}
