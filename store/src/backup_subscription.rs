//! The device's side of a backup server (ARCHITECTURE.md "Backup server and mailbox"): the one
//! server it is subscribed to, queueing the backlog when it subscribes, what each replica entry
//! says of its event, and what that server acknowledged. New accepted PDUs are queued for it by a
//! trigger on `events` (migrations 0010 and 0019), in the same commit.

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::events::StoredPdu;
use crate::{Store, now_ms};

/// An event of this device's replica as the device holds it now, with what a restore needs to
/// authorise it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSource {
    pub pdu: StoredPdu,
    /// Whether all its prev events are in this device's timeline (at positive positions), so a
    /// restore can work out the state before it from theirs.
    pub prevs_in_timeline: bool,
    /// The state before it as this device kept it (event ids), when its prev events are not
    /// all in the timeline and the state was kept.
    pub state_before: Option<Vec<String>>,
}

/// This device's subscription, as `Node::backup_status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSubscription {
    pub server: String,
    /// Where to dial it (multiaddrs, as given when subscribing).
    pub addresses: Vec<String>,
    /// The bytes of this device's PDUs the server says it stores.
    pub bytes_acked: i64,
    pub pdus_acked: i64,
    /// PDUs the server refused (over quota, bad signature): not sent again.
    pub pdus_refused: i64,
    pub last_error: Option<String>,
    /// Replica entries still in the outbox.
    pub pending: i64,
}

impl Store {
    pub async fn backup_subscription(&self) -> Result<Option<BackupSubscription>> {
        self.read(|conn| {
            let row = conn
                .query_row(
                    "SELECT server, addresses, bytes_acked, pdus_acked, pdus_refused, last_error,
                            (SELECT count(*) FROM outbox o
                             WHERE o.destination = b.server AND o.kind = 'replica')
                     FROM backup_subscription b WHERE id = 1",
                    [],
                    |row| {
                        let addresses: String = row.get(1)?;
                        Ok(BackupSubscription {
                            server: row.get(0)?,
                            addresses: addresses.lines().map(str::to_owned).collect(),
                            bytes_acked: row.get(2)?,
                            pdus_acked: row.get(3)?,
                            pdus_refused: row.get(4)?,
                            last_error: row.get(5)?,
                            pending: row.get(6)?,
                        })
                    },
                )
                .optional()?;
            Ok(row)
        })
        .await
    }

    /// Records the subscription to `server` and, in the same commit, queues every PDU this
    /// device holds for it (timeline in stream order, then the rest as stored); from then on the
    /// trigger queues each new one. Returns how many were queued.
    pub async fn subscribe_backup(&self, server: String, addresses: Vec<String>) -> Result<usize> {
        // Multiaddrs hold no line breaks: one a line.
        let addresses = addresses.join("\n");
        self.write(move |conn| {
            let now = now_ms();
            // A previous subscription's queue would go to the wrong server.
            conn.execute("DELETE FROM outbox WHERE kind = 'replica'", [])?;
            conn.execute(
                "INSERT OR REPLACE INTO backup_subscription (id, server, addresses, subscribed_ms)
                 VALUES (1, ?1, ?2, ?3)",
                params![server, addresses, now],
            )?;
            let queued = conn.execute(
                "INSERT INTO outbox (destination, kind, payload, created_ms)
                 SELECT ?1, 'replica', event_id, ?2 FROM events WHERE rejection_reason IS NULL
                 ORDER BY stream_pos IS NULL, stream_pos, rowid",
                params![server, now],
            )?;
            Ok(queued)
        })
        .await
    }

    /// Records the subscription of a device restored from `server`, without queueing a backlog:
    /// the server holds every PDU this device has (they came from it), and the trigger queues
    /// each new one from now on.
    pub async fn resume_backup_subscription(
        &self,
        server: String,
        addresses: Vec<String>,
    ) -> Result<()> {
        let addresses = addresses.join("\n");
        self.write(move |conn| {
            conn.execute("DELETE FROM outbox WHERE kind = 'replica'", [])?;
            conn.execute(
                "INSERT OR REPLACE INTO backup_subscription (id, server, addresses, subscribed_ms)
                 VALUES (1, ?1, ?2, ?3)",
                params![server, addresses, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// The events of a replica batch as they are now, each with what a restore needs (see
    /// [`ReplicaSource`]); events that are gone or were rejected since they were queued are
    /// left out.
    pub async fn replica_sources(&self, event_ids: Vec<String>) -> Result<Vec<ReplicaSource>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM events WHERE event_id = ?1 AND rejection_reason IS NULL",
                StoredPdu::COLUMNS
            );
            let mut event = conn.prepare_cached(&sql)?;
            let mut gaps = conn.prepare_cached(
                "SELECT count(*) FROM event_edges g
                 LEFT JOIN events p ON p.event_id = g.prev_event_id
                 WHERE g.event_id = ?1
                   AND (p.stream_pos IS NULL OR p.stream_pos <= 0 OR p.rejection_reason IS NOT NULL)",
            )?;
            let mut state = conn.prepare_cached(
                "SELECT s.event_id FROM event_state e
                 JOIN state_snapshot_entries s ON s.snapshot_id = e.snapshot_id
                 WHERE e.event_id = ?1 ORDER BY s.event_type, s.state_key",
            )?;
            let mut sources = Vec::with_capacity(event_ids.len());
            for id in event_ids {
                let Some(pdu) = event.query_row([&id], StoredPdu::from_row).optional()? else {
                    continue;
                };
                let gaps: i64 = gaps.query_row([&id], |row| row.get(0))?;
                let state_before = if gaps > 0 {
                    let ids = state
                        .query_map([&id], |row| row.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    let kept: bool = conn
                        .prepare_cached("SELECT 1 FROM event_state WHERE event_id = ?1")?
                        .exists([&id])?;
                    kept.then_some(ids)
                } else {
                    None
                };
                sources.push(ReplicaSource {
                    pdu,
                    prevs_in_timeline: gaps == 0,
                    state_before,
                });
            }
            Ok(sources)
        })
        .await
    }

    /// Counts one more sealing of this device's identity; returns its number.
    pub async fn next_identity_seal(&self) -> Result<i64> {
        self.write(|conn| {
            Ok(conn.query_row(
                "UPDATE counters SET value = value + 1 WHERE name = 'identity_seal'
                 RETURNING value",
                [],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// Counts on from `version` (a restored identity's seal): the next seal is newer.
    pub async fn identity_sealed(&self, version: i64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE counters SET value = max(value, ?1) WHERE name = 'identity_seal'",
                [version],
            )?;
            Ok(())
        })
        .await
    }

    /// Notes rooms restored from the backup, whose state a member's server is to confirm.
    pub async fn rooms_to_confirm_add(&self, room_ids: Vec<String>) -> Result<()> {
        self.write(move |conn| {
            let mut insert = conn
                .prepare_cached("INSERT OR IGNORE INTO rooms_to_confirm (room_id) VALUES (?1)")?;
            for room_id in room_ids {
                insert.execute([room_id])?;
            }
            Ok(())
        })
        .await
    }

    /// The restored rooms whose state no member's server confirmed yet.
    pub async fn rooms_to_confirm(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT room_id FROM rooms_to_confirm ORDER BY room_id")?;
            let rooms = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rooms)
        })
        .await
    }

    /// Whether `room_id` was restored and is still to be confirmed.
    pub async fn room_to_confirm(&self, room_id: String) -> Result<bool> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM rooms_to_confirm WHERE room_id = ?1")?
                .exists([room_id])?)
        })
        .await
    }

    pub async fn room_confirmed(&self, room_id: String) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM rooms_to_confirm WHERE room_id = ?1")?
                .execute([room_id])?;
            Ok(())
        })
        .await
    }

    /// Forgets the subscription and its queue.
    pub async fn unsubscribe_backup(&self) -> Result<()> {
        self.write(|conn| {
            conn.execute("DELETE FROM outbox WHERE kind = 'replica'", [])?;
            conn.execute("DELETE FROM backup_subscription", [])?;
            Ok(())
        })
        .await
    }

    /// What the server said of a batch: its byte count now, how many PDUs it took or refused,
    /// and the last refusal (kept until a batch goes through cleanly).
    pub async fn backup_acknowledged(
        &self,
        server: String,
        bytes_used: Option<i64>,
        stored: i64,
        refused: i64,
        error: Option<String>,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE backup_subscription SET
                     bytes_acked = coalesce(?2, bytes_acked),
                     pdus_acked = pdus_acked + ?3,
                     pdus_refused = pdus_refused + ?4,
                     last_error = ?5
                 WHERE server = ?1",
                params![server, bytes_used, stored, refused, error],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewPdu;

    fn pdu(id: &str) -> NewPdu {
        NewPdu {
            event_id: id.into(),
            room_id: "!room:example".into(),
            depth: 1,
            sender: "@alice:example".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 1,
            json: "{}".into(),
            prev_events: vec![],
            auth_events: vec![],
            rejection_reason: None,
            outlier: false,
        }
    }

    #[tokio::test]
    async fn backlog_then_every_new_pdu_is_queued_in_the_same_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut rejected = pdu("$rejected");
        rejected.rejection_reason = Some("not a member".into());
        store
            .append_pdus(vec![pdu("$a"), rejected.clone(), pdu("$b")])
            .await
            .unwrap();
        assert_eq!(store.backup_subscription().await.unwrap(), None);
        let queued = store
            .subscribe_backup("srv".into(), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .await
            .unwrap();
        assert_eq!(queued, 2, "the rejected event is not queued");
        let mut rejected_later = pdu("$rejected later");
        rejected_later.rejection_reason = Some("not a member".into());
        store
            .append_pdus(vec![rejected_later, pdu("$c")])
            .await
            .unwrap();
        let batch = store.outbox_replica_batch("srv".into(), 10).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(ids, ["$a", "$b", "$c"]);
        // Replica entries are not federation traffic.
        assert!(
            store
                .outbox_batch("srv".into(), 50, 100)
                .await
                .unwrap()
                .is_empty()
        );

        store
            .backup_acknowledged("srv".into(), Some(42), 3, 0, None)
            .await
            .unwrap();
        let status = store.backup_subscription().await.unwrap().unwrap();
        assert_eq!(status.addresses, ["/ip4/127.0.0.1/tcp/1"]);
        assert_eq!(
            (status.bytes_acked, status.pdus_acked, status.pending),
            (42, 3, 3)
        );

        store.unsubscribe_backup().await.unwrap();
        store.append_pdus(vec![pdu("$d")]).await.unwrap();
        assert!(
            store
                .outbox_replica_batch("srv".into(), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.backup_subscription().await.unwrap(), None);
    }

    #[tokio::test]
    async fn each_replica_entry_says_what_a_restore_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store
            .subscribe_backup("srv".into(), Vec::new())
            .await
            .unwrap();
        let with_prev = |id: &str, prev: &str| NewPdu {
            prev_events: vec![prev.into()],
            ..pdu(id)
        };
        let mut outlier = pdu("$outlier");
        outlier.outlier = true;
        store
            .append_pdus(vec![pdu("$a"), with_prev("$b", "$a"), outlier])
            .await
            .unwrap();
        // An event on a prev event this device does not have, with the state it was given.
        let snapshot = std::sync::Arc::new(crate::StateSnapshot::new(
            "!room:example",
            vec![("m.room.create".into(), String::new(), "$a".into())],
        ));
        store
            .append_accepted(vec![crate::AcceptedPdu {
                pdu: with_prev("$gap", "$unknown"),
                membership: None,
                transaction: None,
                destinations: Vec::new(),
                state_before: Some(snapshot),
                state_after: None,
                resolved_state: None,
                prev_may_be_missing: true,
            }])
            .await
            .unwrap();
        let ids = ["$a", "$b", "$outlier", "$gap", "$nothing"];
        let sources = store
            .replica_sources(ids.iter().map(|s| s.to_string()).collect())
            .await
            .unwrap();
        let seen: Vec<(&str, bool, Option<Vec<String>>, bool)> = sources
            .iter()
            .map(|s| {
                (
                    s.pdu.event_id.as_str(),
                    s.prevs_in_timeline,
                    s.state_before.clone(),
                    s.pdu.stream_pos.is_some(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("$a", true, None, true),
                ("$b", true, None, true),
                ("$outlier", true, None, false),
                ("$gap", false, Some(vec!["$a".to_owned()]), true),
            ]
        );
        // An outlier that takes its place in the timeline is queued again.
        let before = store.outbox_replica_batch("srv".into(), 100).await.unwrap();
        store.append_pdus(vec![pdu("$outlier")]).await.unwrap();
        let after = store.outbox_replica_batch("srv".into(), 100).await.unwrap();
        assert_eq!(after.len(), before.len() + 1);
        assert_eq!(after.last().unwrap().payload, "$outlier");
    }
}
