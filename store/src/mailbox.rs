//! Mailboxes (ARCHITECTURE.md "Backup server and mailbox"): on a backup server, the signed
//! transactions other servers could not deliver to a subscriber, held until it takes them; on every
//! node, the signed records saying where each server takes its mail.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::outbox::{OutboxEntry, OutboxKind};
use crate::{Store, now_ms};

/// Mail may take at most this fraction of a subscriber's quota, on top of the quota (so mail
/// never crowds out the replica)...
const MAIL_SHARE: i64 = 2;
/// ...and one sending server at most this fraction of it, so one sender cannot crowd out the
/// rest. (Server names are only keys, so this slows a flood rather than stopping it; the mail
/// share above is the hard bound.)
const MAIL_SHARE_PER_ORIGIN: i64 = 8;

/// What became of a transaction left in a subscriber's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    Stored,
    /// The same transaction from the same server is already there (a retry).
    Duplicate,
    /// Holding it would exceed the subscriber's allowance for mail, or one sender's share of it.
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
    /// Leaves `origin`'s transaction `txn_id` (signed, JSON) in `subscriber`'s mailbox. What
    /// mail may take is counted apart from the replica's quota: half of the quota in all, an
    /// eighth per sending server (the transaction id counts too).
    pub async fn backup_take_mail(
        &self,
        subscriber: String,
        origin: String,
        txn_id: String,
        txn: String,
    ) -> Result<MailOutcome> {
        let txn_sha256: String = Sha256::digest(txn.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.write(move |conn| {
            let quota: Option<i64> = conn
                .query_row(
                    "SELECT quota_bytes FROM backup_subscribers WHERE server = ?1",
                    [&subscriber],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(quota) = quota else {
                return Ok(MailOutcome::NotSubscribed);
            };
            let exists = conn
                .prepare_cached(
                    "SELECT 1 FROM backup_mailbox WHERE subscriber = ?1 AND origin = ?2
                     AND txn_id = ?3 AND txn_sha256 = ?4",
                )?
                .exists(params![subscriber, origin, txn_id, txn_sha256])?;
            if exists {
                return Ok(MailOutcome::Duplicate);
            }
            let (held, from_origin): (i64, i64) = conn
                .prepare_cached(
                    "SELECT coalesce(sum(length(txn) + length(txn_id)), 0),
                            coalesce(sum(CASE WHEN origin = ?2
                                         THEN length(txn) + length(txn_id) END), 0)
                     FROM backup_mailbox WHERE subscriber = ?1",
                )?
                .query_row(params![subscriber, origin], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            let size = (txn.len() + txn_id.len()) as i64;
            if held + size > quota / MAIL_SHARE
                || from_origin + size > quota / MAIL_SHARE_PER_ORIGIN
            {
                return Ok(MailOutcome::OverQuota);
            }
            conn.prepare_cached(
                "INSERT INTO backup_mailbox
                     (subscriber, origin, txn_id, txn, txn_sha256, received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                subscriber,
                origin,
                txn_id,
                txn,
                txn_sha256,
                now_ms()
            ])?;
            Ok(MailOutcome::Stored)
        })
        .await
    }

    /// The oldest transactions waiting for `subscriber`, as outbox entries of kind
    /// [`OutboxKind::Mail`] (the payload is the signed transaction): at most `limit`, and no more
    /// than `max_bytes` of them together unless the first alone is larger.
    pub async fn backup_mail_batch(
        &self,
        subscriber: String,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, txn FROM backup_mailbox WHERE subscriber = ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = statement.query(params![subscriber, limit])?;
            let mut entries = Vec::new();
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                let payload: String = row.get(1)?;
                bytes += payload.len();
                if !entries.is_empty() && bytes > max_bytes {
                    break;
                }
                entries.push(OutboxEntry {
                    id: row.get(0)?,
                    kind: OutboxKind::Mail,
                    payload,
                });
            }
            Ok(entries)
        })
        .await
    }

    /// Drops the transactions `subscriber` took delivery of.
    pub async fn backup_mail_delivered(&self, subscriber: String, ids: Vec<i64>) -> Result<()> {
        self.write(move |conn| {
            let mut delete = conn
                .prepare_cached("DELETE FROM backup_mailbox WHERE subscriber = ?1 AND id = ?2")?;
            for id in ids {
                delete.execute(params![subscriber, id])?;
            }
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

    /// The records held that name `mailbox` as the mailbox of their server.
    pub async fn mailbox_records_naming(&self, mailbox: String) -> Result<Vec<MailboxRecord>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT server, mailbox, addresses, ts, record FROM mailbox_records
                 WHERE mailbox = ?1 ORDER BY server",
            )?;
            let records = statement
                .query_map([&mailbox], record_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(records)
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
                    record_from_row,
                )
                .optional()?)
        })
        .await
    }
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MailboxRecord> {
    let addresses: String = row.get(2)?;
    Ok(MailboxRecord {
        server: row.get(0)?,
        mailbox: row.get(1)?,
        addresses: addresses.lines().map(str::to_owned).collect(),
        ts: row.get(3)?,
        record: row.get(4)?,
    })
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
    async fn mail_is_held_once_within_its_allowance_and_freed_on_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let take = |from: &str, id: &str, txn: &str| {
            store.backup_take_mail("dev".into(), from.into(), id.into(), txn.into())
        };
        assert_eq!(
            take("bob", "1", "{}").await.expect("take"),
            MailOutcome::NotSubscribed
        );
        // 160 bytes of quota: 80 for mail, 20 per sender.
        subscribed(&store, 160).await;
        assert_eq!(
            take("bob", "1", "{\"a\":1}").await.expect("take"),
            MailOutcome::Stored
        );
        assert_eq!(
            take("bob", "1", "{\"a\":1}").await.expect("take"),
            MailOutcome::Duplicate
        );
        // The same id with other content (a sender counting its ids again) is new mail.
        assert_eq!(
            take("bob", "1", "{\"a\":2}").await.expect("take"),
            MailOutcome::Stored
        );
        // 16 bytes from Bob: another 8 is more than his share...
        assert_eq!(
            take("bob", "2", "{\"b\":2}").await.expect("take"),
            MailOutcome::OverQuota
        );
        // ...but not from Carol, and a long transaction id counts against the sender.
        assert_eq!(
            take("carol", "1", "{\"c\":3}").await.expect("take"),
            MailOutcome::Stored
        );
        let long_id = "x".repeat(30);
        assert_eq!(
            take("dave", &long_id, "{}").await.expect("take"),
            MailOutcome::OverQuota
        );
        // Mail is not counted in the replica's quota.
        let subscriber = store.backup_subscriber("dev".into()).await.expect("read");
        assert_eq!(subscriber.expect("subscribed").bytes_used, 0);
        let batch = store
            .backup_mail_batch("dev".into(), 10, 10)
            .await
            .expect("batch");
        assert_eq!(batch.len(), 1, "10 bytes hold one transaction");
        assert_eq!(batch[0].kind, OutboxKind::Mail);
        assert_eq!(batch[0].payload, "{\"a\":1}");
        assert_eq!(
            store
                .backup_mail_batch("dev".into(), 10, 1)
                .await
                .expect("batch")
                .len(),
            1
        );
        assert_eq!(
            store
                .backup_mail_batch("dev".into(), 10, 1 << 20)
                .await
                .expect("batch")
                .len(),
            3
        );
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
            2
        );
        assert_eq!(
            take("bob", "2", "{\"b\":2}").await.expect("take"),
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
