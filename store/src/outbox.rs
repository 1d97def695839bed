//! The federation outbox: every PDU and EDU for a destination is written here before it is sent,
//! and leaves only when the destination has acknowledged it, so a restart loses nothing.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    Pdu,
    Edu,
    /// A PDU (by event id) for this device's backup server's replica, not for `/send`.
    Replica,
    /// On a backup server: a signed transaction held in a subscriber's mailbox (the id is the
    /// mailbox row's, the payload the transaction). Never stored in the outbox table itself.
    Mail,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Pdu => "pdu",
            OutboxKind::Edu => "edu",
            OutboxKind::Replica => "replica",
            OutboxKind::Mail => "mail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub kind: OutboxKind,
    pub payload: String,
}

impl Store {
    /// Queues one payload for each destination, in one commit.
    pub async fn enqueue_outbox(
        &self,
        destinations: Vec<String>,
        kind: OutboxKind,
        payload: String,
    ) -> Result<()> {
        self.write(move |conn| {
            let now = now_ms();
            let mut insert = conn.prepare_cached(
                "INSERT INTO outbox (destination, kind, payload, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for destination in destinations {
                insert.execute(params![destination, kind.as_str(), payload, now])?;
            }
            Ok(())
        })
        .await
    }

    /// The next transaction's worth for `destination`, oldest first: at most `max_pdus` PDUs and
    /// `max_edus` EDUs.
    pub async fn outbox_batch(
        &self,
        destination: String,
        max_pdus: u32,
        max_edus: u32,
    ) -> Result<Vec<OutboxEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, payload FROM outbox WHERE destination = ?1 AND kind = ?2
                 ORDER BY id LIMIT ?3",
            )?;
            let mut entries = Vec::new();
            for (kind, limit) in [(OutboxKind::Pdu, max_pdus), (OutboxKind::Edu, max_edus)] {
                let rows =
                    statement.query_map(params![destination, kind.as_str(), limit], |row| {
                        Ok(OutboxEntry {
                            id: row.get(0)?,
                            kind,
                            payload: row.get(1)?,
                        })
                    })?;
                entries.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(entries)
        })
        .await
    }

    /// The next `limit` replica entries (event ids) for the backup server `destination`, oldest
    /// first.
    pub async fn outbox_replica_batch(
        &self,
        destination: String,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, payload FROM outbox WHERE destination = ?1 AND kind = 'replica'
                 ORDER BY id LIMIT ?2",
            )?;
            let entries = statement
                .query_map(params![destination, limit], |row| {
                    Ok(OutboxEntry {
                        id: row.get(0)?,
                        kind: OutboxKind::Replica,
                        payload: row.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    /// Removes what `destination` acknowledged.
    pub async fn outbox_ack(&self, destination: String, ids: Vec<i64>) -> Result<()> {
        self.write(move |conn| {
            let mut delete =
                conn.prepare_cached("DELETE FROM outbox WHERE destination = ?1 AND id = ?2")?;
            for id in ids {
                delete.execute(params![destination, id])?;
            }
            Ok(())
        })
        .await
    }

    /// Keeps what waits for `destination` (PDUs and EDUs; a backup server's replica is never
    /// dropped) to its newest `keep` entries, none older than `created_before` (ms since the
    /// epoch): a server that stays unreachable, or a name made up to be a destination, does not
    /// grow the outbox without bound. Returns how many entries were dropped.
    pub async fn outbox_trim(
        &self,
        destination: String,
        keep: u32,
        created_before: i64,
    ) -> Result<usize> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM outbox WHERE destination = ?1 AND kind IN ('pdu', 'edu')
                       AND (created_ms < ?3 OR id < coalesce((
                           SELECT min(id) FROM (
                               SELECT id FROM outbox
                               WHERE destination = ?1 AND kind IN ('pdu', 'edu')
                               ORDER BY id DESC LIMIT ?2)), 0))",
                )?
                .execute(params![destination, keep, created_before])?)
        })
        .await
    }

    /// Drops everything waiting for `destination` (a server this node gives up on); how many
    /// entries.
    pub async fn outbox_drop_destination(&self, destination: String) -> Result<usize> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM outbox WHERE destination = ?1")?
                .execute([destination])?)
        })
        .await
    }

    /// For each of these events, how many destinations have not acknowledged it yet.
    pub async fn outbox_pending(
        &self,
        event_ids: Vec<String>,
    ) -> Result<std::collections::HashMap<String, usize>> {
        self.read(move |conn| {
            // Unlisted events have no destination left: 0.
            let mut pending: std::collections::HashMap<String, usize> =
                event_ids.iter().map(|id| (id.clone(), 0)).collect();
            // One scan of the outbox per chunk, not one per event (SQLite binds at most 32766
            // parameters).
            for chunk in event_ids.chunks(500) {
                let sql = format!(
                    "SELECT payload, count(DISTINCT destination) FROM outbox
                     WHERE kind = 'pdu' AND payload IN ({}) GROUP BY payload",
                    vec!["?"; chunk.len()].join(",")
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(rusqlite::params_from_iter(chunk), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (event_id, count) = row?;
                    pending.insert(event_id, usize::try_from(count).unwrap_or(0));
                }
            }
            Ok(pending)
        })
        .await
    }

    /// Destinations with something waiting (in the outbox, or mail held for a subscriber): a
    /// starting node starts a sender for each.
    pub async fn outbox_destinations(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT destination FROM outbox UNION SELECT subscriber FROM backup_mailbox
                 ORDER BY 1",
            )?;
            let destinations = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(destinations)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_keeps_until_acknowledged_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let (bob, carol) = ("bob".to_string(), "carol".to_string());
        for n in 0..3 {
            store
                .enqueue_outbox(
                    vec![bob.clone(), carol.clone()],
                    OutboxKind::Pdu,
                    format!("pdu{n}"),
                )
                .await
                .unwrap();
        }
        store
            .enqueue_outbox(vec![bob.clone()], OutboxKind::Edu, "typing".into())
            .await
            .unwrap();

        let batch = store.outbox_batch(bob.clone(), 2, 10).await.unwrap();
        let payloads: Vec<_> = batch.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(payloads, ["pdu0", "pdu1", "typing"]);
        store
            .outbox_ack(bob.clone(), batch.iter().map(|e| e.id).collect())
            .await
            .unwrap();

        store.close().await;
        drop(store);
        let store = Store::open(dir.path()).await.unwrap();
        let left = store.outbox_batch(bob.clone(), 50, 100).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload, "pdu2");
        assert_eq!(store.outbox_batch(carol, 50, 100).await.unwrap().len(), 3);
        assert_eq!(
            store.outbox_destinations().await.unwrap(),
            vec!["bob".to_string(), "carol".to_string()]
        );
    }

    #[tokio::test]
    async fn an_unreachable_destination_keeps_only_its_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let to = |who: &str| vec![who.to_string()];
        for n in 0..5 {
            store
                .enqueue_outbox(to("sybil"), OutboxKind::Pdu, format!("pdu{n}"))
                .await
                .unwrap();
        }
        store
            .enqueue_outbox(to("sybil"), OutboxKind::Replica, "kept".into())
            .await
            .unwrap();
        store
            .enqueue_outbox(to("bob"), OutboxKind::Pdu, "bob's".into())
            .await
            .unwrap();
        assert_eq!(store.outbox_trim("sybil".into(), 2, 0).await.unwrap(), 3);
        let left = store.outbox_batch("sybil".into(), 50, 100).await.unwrap();
        let payloads: Vec<_> = left.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(payloads, ["pdu3", "pdu4"], "the newest stay");
        assert_eq!(
            store
                .outbox_replica_batch("sybil".into(), 10)
                .await
                .unwrap()
                .len(),
            1,
            "a replica entry is never dropped"
        );
        assert_eq!(
            store
                .outbox_batch("bob".into(), 50, 100)
                .await
                .unwrap()
                .len(),
            1
        );
        // Past their time, all go.
        let later = crate::now_ms() + 1;
        assert_eq!(
            store.outbox_trim("sybil".into(), 2, later).await.unwrap(),
            2
        );
        assert!(
            store
                .outbox_batch("sybil".into(), 50, 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
