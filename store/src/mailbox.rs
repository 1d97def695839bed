//! Mailboxes (DESIGN.md "Backup server"): on a backup server, the signed transactions other
//! servers could not deliver to a subscriber, held until it takes them; on every node, the
//! signed records saying where each server takes its mail.

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::outbox::{OutboxEntry, OutboxKind};
use crate::{Store, now_ms};

/// One sending server may fill at most this fraction of a subscriber's quota with mail, so a
/// hostile one cannot crowd out everyone else's mail and the subscriber's replica.
const MAX_SHARE_PER_ORIGIN: i64 = 4;

/// What became of a transaction left in a subscriber's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    Stored,
    /// The same transaction from the same server is already there (a retry).
    Duplicate,
    /// Holding it would exceed the subscriber's quota, or the share of it one sender may take.
    OverQuota,
    /// The destination is not subscribed here.
    NotSubscribed,
}

/// Where a server says it takes mail, as the record it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRecord {
    pub server: String,
    /// The mailbox's server name; `None` when the server withdrew it.
    pub mailbox: Option<String>,
    pub addresses: Vec<String>,
    /// When the server made the record (its clock, milliseconds): the newest wins.
    pub ts: i64,
    /// The signed record as JSON, to pass on as it is.
    pub record: String,
}

impl Store {
    /// Leaves `origin`'s transaction `txn_id` (signed, JSON) in `subscriber`'s mailbox.
    pub async fn backup_take_mail(
        &self,
        subscriber: String,
        origin: String,
        txn_id: String,
        txn: String,
    ) -> Result<MailOutcome> {
        self.write(move |conn| {
            let quota: Option<(i64, i64)> = conn
                .query_row(
                    "SELECT quota_bytes, bytes_used FROM backup_subscribers WHERE server = ?1",
                    [&subscriber],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((quota, used)) = quota else {
                return Ok(MailOutcome::NotSubscribed);
            };
            let exists = conn
                .prepare_cached(
                    "SELECT 1 FROM backup_mailbox
                     WHERE subscriber = ?1 AND origin = ?2 AND txn_id = ?3",
                )?
                .exists(params![subscriber, origin, txn_id])?;
            if exists {
                return Ok(MailOutcome::Duplicate);
            }
            let size = txn.len() as i64;
            let from_origin: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(length(txn)), 0) FROM backup_mailbox
                     WHERE subscriber = ?1 AND origin = ?2",
                )?
                .query_row(params![subscriber, origin], |row| row.get(0))?;
            if used + size > quota || from_origin + size > quota / MAX_SHARE_PER_ORIGIN {
                return Ok(MailOutcome::OverQuota);
            }
            conn.prepare_cached(
                "INSERT INTO backup_mailbox (subscriber, origin, txn_id, txn, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![subscriber, origin, txn_id, txn, now_ms()])?;
            conn.prepare_cached(
                "UPDATE backup_subscribers SET bytes_used = bytes_used + ?2 WHERE server = ?1",
            )?
            .execute(params![subscriber, size])?;
            Ok(MailOutcome::Stored)
        })
        .await
    }

    /// The oldest `limit` transactions waiting for `subscriber`, as outbox entries of kind
    /// [`OutboxKind::Mail`] (the payload is the signed transaction).
    pub async fn backup_mail_batch(
        &self,
        subscriber: String,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, txn FROM backup_mailbox WHERE subscriber = ?1 ORDER BY id LIMIT ?2",
            )?;
            let entries = statement
                .query_map(params![subscriber, limit], |row| {
                    Ok(OutboxEntry {
                        id: row.get(0)?,
                        kind: OutboxKind::Mail,
                        payload: row.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(entries)
        })
        .await
    }

    /// Drops the transactions `subscriber` took delivery of, freeing their quota.
    pub async fn backup_mail_delivered(&self, subscriber: String, ids: Vec<i64>) -> Result<()> {
        self.write(move |conn| {
            let mut size = conn.prepare_cached(
                "SELECT length(txn) FROM backup_mailbox WHERE subscriber = ?1 AND id = ?2",
            )?;
            let mut delete = conn
                .prepare_cached("DELETE FROM backup_mailbox WHERE subscriber = ?1 AND id = ?2")?;
            let mut freed = 0i64;
            for id in ids {
                if let Some(bytes) = size
                    .query_row(params![subscriber, id], |row| row.get::<_, i64>(0))
                    .optional()?
                {
                    delete.execute(params![subscriber, id])?;
                    freed += bytes;
                }
            }
            conn.prepare_cached(
                "UPDATE backup_subscribers SET bytes_used = max(0, bytes_used - ?2)
                 WHERE server = ?1",
            )?
            .execute(params![subscriber, freed])?;
            Ok(())
        })
        .await
    }

    /// How many transactions wait in `subscriber`'s mailbox.
    pub async fn backup_mail_waiting(&self, subscriber: String) -> Result<i64> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM backup_mailbox WHERE subscriber = ?1",
                [&subscriber],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// Keeps `record` if it is newer than the one held for its server; says whether it was.
    /// The caller has checked its signature.
    pub async fn put_mailbox_record(&self, record: MailboxRecord) -> Result<bool> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "INSERT INTO mailbox_records (server, mailbox, addresses, ts, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (server) DO UPDATE SET mailbox = ?2, addresses = ?3, ts = ?4,
                         record = ?5
                     WHERE ?4 > mailbox_records.ts",
                )?
                .execute(params![
                    record.server,
                    record.mailbox,
                    record.addresses.join("\n"),
                    record.ts,
                    record.record
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    /// The newest record `server` signed about its mailbox, if any reached this node.
    pub async fn mailbox_record(&self, server: String) -> Result<Option<MailboxRecord>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT server, mailbox, addresses, ts, record FROM mailbox_records
                     WHERE server = ?1",
                    [&server],
                    |row| {
                        let addresses: String = row.get(2)?;
                        Ok(MailboxRecord {
                            server: row.get(0)?,
                            mailbox: row.get(1)?,
                            addresses: addresses.lines().map(str::to_owned).collect(),
                            ts: row.get(3)?,
                            record: row.get(4)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn subscribed(store: &Store, quota: i64) {
        store
            .backup_add_token("t".into(), quota)
            .await
            .expect("token");
        store
            .backup_subscribe("dev".into(), "t".into())
            .await
            .expect("subscribe")
            .expect("subscribed");
    }

    #[tokio::test]
    async fn mail_is_held_once_within_quota_and_freed_on_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let take = |txn: &str, id: &str| {
            store.backup_take_mail("dev".into(), "bob".into(), id.into(), txn.into())
        };
        assert_eq!(
            take("{}", "1").await.expect("take"),
            MailOutcome::NotSubscribed
        );
        subscribed(&store, 40).await;
        assert_eq!(
            take("{\"a\":1}", "1").await.expect("take"),
            MailOutcome::Stored
        );
        assert_eq!(
            take("{\"a\":1}", "1").await.expect("take"),
            MailOutcome::Duplicate
        );
        // 7 bytes held of the 10 one sender may use: another 7 is too much from Bob...
        assert_eq!(
            take("{\"b\":2}", "2").await.expect("take"),
            MailOutcome::OverQuota
        );
        // ...but not from Carol.
        let carol = store
            .backup_take_mail("dev".into(), "carol".into(), "1".into(), "{\"c\":3}".into())
            .await
            .expect("take");
        assert_eq!(carol, MailOutcome::Stored);
        let batch = store
            .backup_mail_batch("dev".into(), 1)
            .await
            .expect("batch");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].kind, OutboxKind::Mail);
        assert_eq!(batch[0].payload, "{\"a\":1}");
        // The mailbox counts as something to send when the node starts.
        assert_eq!(
            store.outbox_destinations().await.expect("destinations"),
            ["dev"]
        );
        store
            .backup_mail_delivered("dev".into(), vec![batch[0].id])
            .await
            .expect("delivered");
        assert_eq!(
            store
                .backup_mail_waiting("dev".into())
                .await
                .expect("count"),
            1
        );
        let subscriber = store.backup_subscriber("dev".into()).await.expect("read");
        assert_eq!(
            subscriber.expect("subscribed").bytes_used,
            7,
            "Carol's mail alone"
        );
        assert_eq!(
            take("{\"b\":2}", "2").await.expect("take"),
            MailOutcome::Stored
        );
        // Unsubscribing deletes the mail with everything else.
        store
            .backup_unsubscribe("dev".into())
            .await
            .expect("unsubscribe");
        assert_eq!(
            store
                .backup_mail_waiting("dev".into())
                .await
                .expect("count"),
            0
        );
    }

    #[tokio::test]
    async fn only_a_newer_mailbox_record_replaces_the_one_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let record = |ts: i64, mailbox: Option<&str>| MailboxRecord {
            server: "dev".into(),
            mailbox: mailbox.map(str::to_owned),
            addresses: vec!["/ip4/127.0.0.1/udp/1/quic-v1".into()],
            ts,
            record: format!("{{\"ts\":{ts}}}"),
        };
        assert!(
            store
                .put_mailbox_record(record(5, Some("box")))
                .await
                .expect("put")
        );
        assert!(
            !store
                .put_mailbox_record(record(4, Some("old")))
                .await
                .expect("put")
        );
        assert_eq!(
            store.mailbox_record("dev".into()).await.expect("read"),
            Some(record(5, Some("box")))
        );
        assert!(
            store
                .put_mailbox_record(record(6, None))
                .await
                .expect("put")
        );
        let held = store.mailbox_record("dev".into()).await.expect("read");
        assert_eq!(held.expect("held").mailbox, None);
    }
}
