//! The device's side of a backup server (ARCHITECTURE.md "Backup server and mailbox"): the one
//! server it is subscribed to, queueing the backlog when it subscribes, and what that server
//! acknowledged. New PDUs are queued for it by a trigger on `events` (migration 0010), in the same
//! commit.

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::{Store, now_ms};

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
                 SELECT ?1, 'replica', event_id, ?2 FROM events
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
        store.append_pdus(vec![pdu("$a"), pdu("$b")]).await.unwrap();
        assert_eq!(store.backup_subscription().await.unwrap(), None);
        let queued = store
            .subscribe_backup("srv".into(), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .await
            .unwrap();
        assert_eq!(queued, 2);
        store.append_pdus(vec![pdu("$c")]).await.unwrap();
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
}
