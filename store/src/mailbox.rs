//! Mailboxes (ARCHITECTURE.md "Backup server and mailbox"): on a backup server, the signed transactions other
//! servers could not deliver to a subscriber, held until it takes them (or they expire); on
//! every node, the signed records saying where each server takes its mail, capped and expiring;
//! on a subscribed device, the mail it took, so none is taken twice.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::outbox::{OutboxEntry, OutboxKind};
use crate::{Store, now_ms};

/// Mail may take at most this fraction of a subscriber's quota, on top of the quota (so mail
/// never crowds out the replica)...
const MAIL_SHARE: i64 = 2;
/// ...one server the subscriber shares rooms with at most this fraction of the quota, so one
/// sender cannot crowd out the rest...
const MAIL_SHARE_PER_ORIGIN: i64 = 8;
/// ...and the servers it shares no room with (strangers: server names are only keys, anyone
/// can make thousands) this fraction all together, each at most `STRANGER_SHARE`: enough for
/// invites from people it has not met, never enough to crowd out the others' mail.
const STRANGERS_SHARE: i64 = 64;
const STRANGER_SHARE: i64 = 512;

/// How old mail may be (by the time its sender signed it) and still be taken: a device away for
/// longer than this gets its rooms' events from their members instead (events are fetched when
/// a later one names them); older EDUs (typing, receipts, to-device) are dropped. Held mail
/// expires as old, and a device remembers the mail it took this long (see `mail_taken`).
pub const MAIL_MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;
/// How far ahead of this node's clock a signed timestamp may be (clocks drift): a mailbox record
/// signed further ahead counts as made this far ahead, and mail from further ahead is refused.
pub const CLOCK_AHEAD_MS: i64 = 10 * 60 * 1000;

/// How many mailbox records a node keeps, from one teller and in all, and how long one it has
/// not heard again is kept.
#[derive(Debug, Clone, Copy)]
pub struct RecordLimits {
    /// Records one peer told this node about (a peer sends its own; other servers' records come
    /// from the DHT): past this, the ones heard longest ago go.
    pub per_teller: i64,
    /// Records in all (this node's own and its subscribers' are never dropped).
    pub total: i64,
    pub ttl_ms: i64,
}

pub const RECORD_LIMITS: RecordLimits = RecordLimits {
    per_teller: 16,
    total: 4096,
    ttl_ms: 30 * 24 * 3600 * 1000,
};

/// Where a mailbox record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSource {
    /// This node's own record.
    Own,
    /// Looked up in the DHT for a destination this node sends to.
    Dht,
    /// Sent by this server (the authenticated peer), in an EDU.
    Peer(String),
}

impl RecordSource {
    fn column(&self) -> &str {
        match self {
            RecordSource::Own => "self",
            RecordSource::Dht => "dht",
            RecordSource::Peer(server) => server,
        }
    }
}

/// Whether a device took a transaction from its mailbox before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailSeen {
    New,
    /// Taken before: a replay.
    Repeat,
    /// Too old to tell from a replay (older than [`MAIL_MAX_AGE_MS`], or than mail forgotten to
    /// keep the list bounded): refused.
    Stale,
}

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
    /// eighth per server the subscriber shares rooms with, and a 64th for all other servers
    /// together, a 512th each (the transaction id counts too). Held mail past
    /// [`MAIL_MAX_AGE_MS`] goes first.
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
            conn.prepare_cached("DELETE FROM backup_mailbox WHERE received_ms < ?1")?
                .execute([now_ms() - MAIL_MAX_AGE_MS])?;
            let exists = conn
                .prepare_cached(
                    "SELECT 1 FROM backup_mailbox WHERE subscriber = ?1 AND origin = ?2
                     AND txn_id = ?3 AND txn_sha256 = ?4",
                )?
                .exists(params![subscriber, origin, txn_id, txn_sha256])?;
            if exists {
                return Ok(MailOutcome::Duplicate);
            }
            let (held, from_origin, from_strangers): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT coalesce(sum(length(txn) + length(txn_id)), 0),
                            coalesce(sum(CASE WHEN origin = ?2
                                         THEN length(txn) + length(txn_id) END), 0),
                            coalesce(sum(CASE WHEN NOT EXISTS (
                                             SELECT 1 FROM backup_correspondents c
                                             WHERE c.subscriber = m.subscriber
                                               AND c.server = m.origin)
                                         THEN length(txn) + length(txn_id) END), 0)
                     FROM backup_mailbox m WHERE subscriber = ?1",
                )?
                .query_row(params![subscriber, origin], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
            let correspondent = conn
                .prepare_cached(
                    "SELECT 1 FROM backup_correspondents WHERE subscriber = ?1 AND server = ?2",
                )?
                .exists(params![subscriber, origin])?;
            let size = (txn.len() + txn_id.len()) as i64;
            let within = if correspondent {
                from_origin + size <= quota / MAIL_SHARE_PER_ORIGIN
            } else {
                from_origin + size <= quota / STRANGER_SHARE
                    && from_strangers + size <= quota / STRANGERS_SHARE
            };
            if !within || held + size > quota / MAIL_SHARE {
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

    /// Keeps `record` (told by `from`) if it is newer than the one held for its server; says
    /// whether it was. The caller has checked its signature. See [`RECORD_LIMITS`].
    pub async fn put_mailbox_record(
        &self,
        record: MailboxRecord,
        from: RecordSource,
    ) -> Result<bool> {
        self.put_mailbox_record_within(record, from, RECORD_LIMITS)
            .await
    }

    /// [`Store::put_mailbox_record`] within other limits (tests use small ones). A record's
    /// `ts` is kept as at most [`CLOCK_AHEAD_MS`] ahead of now, so a record signed by a clock
    /// far ahead is replaced by the next one signed once that much time has passed. A record
    /// heard again (the same `ts`) counts as heard now.
    pub async fn put_mailbox_record_within(
        &self,
        record: MailboxRecord,
        from: RecordSource,
        limits: RecordLimits,
    ) -> Result<bool> {
        self.write(move |conn| {
            let now = now_ms();
            let ts = record.ts.min(now + CLOCK_AHEAD_MS);
            let teller = from.column().to_owned();
            let changed = conn
                .prepare_cached(
                    "INSERT INTO mailbox_records
                         (server, mailbox, addresses, ts, record, learnt_from, learnt_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (server) DO UPDATE SET mailbox = ?2, addresses = ?3, ts = ?4,
                         record = ?5, learnt_from = ?6, learnt_ms = ?7
                     WHERE ?4 > mailbox_records.ts",
                )?
                .execute(params![
                    record.server,
                    record.mailbox,
                    record.addresses.join("\n"),
                    ts,
                    record.record,
                    teller,
                    now
                ])?;
            if changed == 0 {
                conn.prepare_cached(
                    "UPDATE mailbox_records SET learnt_ms = ?3
                     WHERE server = ?1 AND ts = ?2 AND learnt_from = ?4",
                )?
                .execute(params![record.server, ts, now, teller])?;
            }
            // Never dropped: this node's own record, and its subscribers' (it puts them in the
            // DHT while they are away).
            const KEPT: &str = "learnt_from != 'self'
                AND server NOT IN (SELECT server FROM backup_subscribers)";
            conn.prepare_cached(&format!(
                "DELETE FROM mailbox_records WHERE learnt_ms < ?1 AND {KEPT}"
            ))?
            .execute([now - limits.ttl_ms])?;
            if matches!(from, RecordSource::Peer(_)) {
                conn.prepare_cached(&format!(
                    "DELETE FROM mailbox_records WHERE server IN (
                         SELECT server FROM mailbox_records WHERE learnt_from = ?1 AND {KEPT}
                         ORDER BY learnt_ms DESC, rowid DESC LIMIT -1 OFFSET ?2)"
                ))?
                .execute(params![teller, limits.per_teller])?;
            }
            conn.prepare_cached(&format!(
                "DELETE FROM mailbox_records WHERE server IN (
                     SELECT server FROM mailbox_records WHERE {KEPT}
                     ORDER BY learnt_ms DESC, rowid DESC LIMIT -1 OFFSET ?1)"
            ))?
            .execute([limits.total])?;
            let kept = conn
                .prepare_cached("SELECT 1 FROM mailbox_records WHERE server = ?1 AND ts = ?2")?
                .exists(params![record.server, ts])?;
            Ok(changed > 0 && kept)
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

impl Store {
    /// Whether this device took `origin`'s transaction `txn_id` (with this SHA-256 of the signed
    /// transaction, signed at `ts`) from its mailbox before.
    pub async fn mail_seen(
        &self,
        origin: String,
        txn_id: String,
        txn_sha256: String,
        ts: i64,
    ) -> Result<MailSeen> {
        self.read(move |conn| {
            let floor: i64 = conn.query_row(
                "SELECT value FROM counters WHERE name = 'mail_taken_floor'",
                [],
                |row| row.get(0),
            )?;
            if ts <= floor || ts < now_ms() - MAIL_MAX_AGE_MS {
                return Ok(MailSeen::Stale);
            }
            let taken = conn
                .prepare_cached(
                    "SELECT 1 FROM mail_taken
                     WHERE origin = ?1 AND txn_id = ?2 AND txn_sha256 = ?3",
                )?
                .exists(params![origin, txn_id, txn_sha256])?;
            Ok(if taken {
                MailSeen::Repeat
            } else {
                MailSeen::New
            })
        })
        .await
    }

    /// Notes that this device took the transaction (see [`Store::mail_seen`]). What is older
    /// than [`MAIL_MAX_AGE_MS`] is forgotten; past `keep` rows, the oldest are, and mail signed
    /// at or before them counts as stale from then on.
    pub async fn mail_taken(
        &self,
        origin: String,
        txn_id: String,
        txn_sha256: String,
        ts: i64,
        keep: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO mail_taken (origin, txn_id, txn_sha256, ts)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![origin, txn_id, txn_sha256, ts])?;
            conn.prepare_cached("DELETE FROM mail_taken WHERE ts < ?1")?
                .execute([now_ms() - MAIL_MAX_AGE_MS])?;
            let forgotten: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(ts) FROM (SELECT ts FROM mail_taken
                                          ORDER BY ts DESC LIMIT -1 OFFSET ?1)",
                )?
                .query_row([keep], |row| row.get(0))?;
            if let Some(forgotten) = forgotten {
                conn.prepare_cached("DELETE FROM mail_taken WHERE ts <= ?1")?
                    .execute([forgotten])?;
                conn.prepare_cached(
                    "UPDATE counters SET value = max(value, ?1) WHERE name = 'mail_taken_floor'",
                )?
                .execute([forgotten])?;
            }
            Ok(())
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

    /// Makes `server` one the subscriber shares rooms with: its user's event in the replica.
    /// Returns the replica bytes that took.
    async fn corresponds(store: &Store, server: &str) -> i64 {
        let json = format!("{{\"sender\":\"@u:{server}\"}}");
        let pdu = crate::ReplicaPdu {
            event_id: format!("${server}"),
            room_id: "!r:x".into(),
            json: json.clone(),
            tag: None,
        };
        store
            .backup_store_replica("dev".into(), vec![pdu])
            .await
            .expect("replica")
            .expect("subscribed");
        json.len() as i64
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
        // 160 bytes of quota: 80 for mail, 20 per sender the subscriber shares rooms with.
        subscribed(&store, 160).await;
        let replica = corresponds(&store, "bob").await + corresponds(&store, "carol").await;
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
        let long_id = "x".repeat(15);
        assert_eq!(
            take("carol", &long_id, "{}").await.expect("take"),
            MailOutcome::OverQuota
        );
        // Mail is not counted in the replica's quota.
        let subscriber = store.backup_subscriber("dev".into()).await.expect("read");
        assert_eq!(subscriber.expect("subscribed").bytes_used, replica);
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
        let from = || RecordSource::Peer("dev".into());
        assert!(
            store
                .put_mailbox_record(record(5, Some("box")), from())
                .await
                .expect("put")
        );
        assert!(
            !store
                .put_mailbox_record(record(4, Some("old")), from())
                .await
                .expect("put")
        );
        assert_eq!(
            store.mailbox_record("dev".into()).await.expect("read"),
            Some(record(5, Some("box")))
        );
        assert!(
            store
                .put_mailbox_record(record(6, None), from())
                .await
                .expect("put")
        );
        let held = store.mailbox_record("dev".into()).await.expect("read");
        assert_eq!(held.expect("held").mailbox, None);
    }

    #[tokio::test]
    async fn strangers_share_a_small_allowance_that_leaves_room_for_correspondents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        // 64 KiB of quota: 32 KiB for mail, 8 KiB per correspondent, 1 KiB for all strangers
        // together and 128 bytes each.
        subscribed(&store, 64 << 10).await;
        corresponds(&store, "bob").await;
        let mail = "x".repeat(100);
        let take = |from: String, id: &str| {
            store.backup_take_mail("dev".into(), from, id.into(), mail.clone())
        };
        // A stranger's one invite goes in, a second is more than its share.
        assert_eq!(
            take("stranger0".into(), "1").await.expect("take"),
            MailOutcome::Stored
        );
        assert_eq!(
            take("stranger0".into(), "2").await.expect("take"),
            MailOutcome::OverQuota
        );
        // Fresh names (keys are free) fill the strangers' allowance and no more.
        let mut stored = 1;
        for n in 1..100 {
            if take(format!("stranger{n}"), "1").await.expect("take") == MailOutcome::Stored {
                stored += 1;
            }
        }
        assert_eq!(stored, 10, "1 KiB holds ten 101-byte transactions");
        // Bob, whom the subscriber shares a room with, still gets his mail in.
        for n in 0..40 {
            assert_eq!(
                take("bob".into(), &n.to_string()).await.expect("take"),
                MailOutcome::Stored,
                "Bob's mail {n}"
            );
        }
    }

    #[tokio::test]
    async fn a_record_signed_far_ahead_does_not_pin_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let now = now_ms();
        let record = |ts: i64, mailbox: &str| MailboxRecord {
            server: "dev".into(),
            mailbox: Some(mailbox.into()),
            addresses: Vec::new(),
            ts,
            record: format!("{{\"ts\":{ts}}}"),
        };
        let from = || RecordSource::Peer("dev".into());
        let far_ahead = now + 10 * 365 * 24 * 3600 * 1000;
        assert!(
            store
                .put_mailbox_record(record(far_ahead, "stale"), from())
                .await
                .expect("put")
        );
        let held = store.mailbox_record("dev".into()).await.expect("read");
        let held = held.expect("held");
        assert!(held.ts <= now_ms() + CLOCK_AHEAD_MS, "{}", held.ts);
        // Signed by the same server with its clock put right, once the allowed drift passed.
        let later = now + CLOCK_AHEAD_MS + 1000;
        assert!(
            store
                .put_mailbox_record(record(later, "fresh"), from())
                .await
                .expect("put")
        );
        let held = store.mailbox_record("dev".into()).await.expect("read");
        assert_eq!(held.expect("held").mailbox.as_deref(), Some("fresh"));
    }

    #[tokio::test]
    async fn records_beyond_the_caps_go_oldest_first_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let limits = RecordLimits {
            per_teller: 3,
            total: 5,
            ttl_ms: 60_000,
        };
        let record = |server: &str| MailboxRecord {
            server: server.into(),
            mailbox: Some("box".into()),
            addresses: Vec::new(),
            ts: 1,
            record: "{}".into(),
        };
        let put = |server: &str, from: RecordSource| {
            store.put_mailbox_record_within(record(server), from, limits)
        };
        let held = || async {
            let records = store.mailbox_records_naming("box".into()).await;
            let mut servers: Vec<String> = records
                .expect("read")
                .into_iter()
                .map(|r| r.server)
                .collect();
            servers.sort();
            servers
        };
        put("own", RecordSource::Own).await.expect("put");
        // One peer telling of many servers (fresh keys): its oldest go past three.
        for n in 0..5 {
            put(&format!("sybil{n}"), RecordSource::Peer("mallory".into()))
                .await
                .expect("put");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(held().await, ["own", "sybil2", "sybil3", "sybil4"]);
        // Past five in all, the oldest heard go, never this node's own.
        for n in 0..3 {
            put(&format!("peer{n}"), RecordSource::Peer(format!("peer{n}")))
                .await
                .expect("put");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(
            held().await,
            ["own", "peer0", "peer1", "peer2", "sybil3", "sybil4"]
        );
        // Records not heard again for their time to live expire.
        store
            .write(|conn| {
                conn.execute(
                    "UPDATE mailbox_records SET learnt_ms = learnt_ms - 120000
                     WHERE server LIKE 'sybil%'",
                    [],
                )?;
                Ok(())
            })
            .await
            .expect("age");
        put("peer0", RecordSource::Peer("peer0".into()))
            .await
            .expect("put");
        assert_eq!(held().await, ["own", "peer0", "peer1", "peer2"]);
    }

    #[tokio::test]
    async fn taken_mail_is_remembered_bounded_and_older_mail_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).await.expect("open");
        let now = now_ms();
        let seen =
            |id: &str, ts: i64| store.mail_seen("bob".into(), id.into(), format!("hash {id}"), ts);
        let taken = |id: &str, ts: i64| {
            store.mail_taken("bob".into(), id.into(), format!("hash {id}"), ts, 3)
        };
        assert_eq!(seen("1", now).await.expect("seen"), MailSeen::New);
        taken("1", now).await.expect("taken");
        assert_eq!(seen("1", now).await.expect("seen"), MailSeen::Repeat);
        // The same id with other content (a sender counting ids again) is new.
        let other = store.mail_seen("bob".into(), "1".into(), "other".into(), now);
        assert_eq!(other.await.expect("seen"), MailSeen::New);
        assert_eq!(
            seen("old", now - MAIL_MAX_AGE_MS - 1).await.expect("seen"),
            MailSeen::Stale
        );
        // Past three remembered, the oldest are forgotten and mail that old is stale.
        for (n, id) in ["2", "3", "4"].iter().enumerate() {
            taken(id, now + 1 + n as i64).await.expect("taken");
        }
        assert_eq!(seen("1", now).await.expect("seen"), MailSeen::Stale);
        assert_eq!(seen("5", now).await.expect("seen"), MailSeen::Stale);
        assert_eq!(seen("4", now + 3).await.expect("seen"), MailSeen::Repeat);
        assert_eq!(seen("5", now + 4).await.expect("seen"), MailSeen::New);
    }
}
