//! One outbox sender per destination: it sends what the outbox holds for that server as
//! `/send` transactions (at most 50 PDUs and 100 EDUs each, and 4 MiB), removes what the server
//! acknowledged, and backs off while the server cannot be reached. When sends to it keep
//! failing and it named a mailbox, transactions go there instead (`backup::mailbox`). On a
//! backup server the same sender pushes held mail to a subscriber.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use hyphae_store::{OutboxEntry, OutboxKind, Store};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use hyphae_p2p::WeakTransport;

use crate::backup::mailbox::{
    self, DIRECT_PROBE, MAILBOX_AFTER_FAILURES, MailboxSent, NO_MAILBOX_RECHECK,
};
use crate::federation::limits::{MAX_EDU_BYTES, MAX_PDU_BYTES, MAX_SEND_BODY};
use crate::signing::SigningKey;

const MAX_PDUS: u32 = super::limits::MAX_PDUS as u32;
const MAX_EDUS: u32 = super::limits::MAX_EDUS as u32;
/// Room kept in a transaction's body for what surrounds its items (origin, timestamp).
const ENVELOPE: usize = 4096;
/// Replica entries per request to a backup server.
const MAX_REPLICA: u32 = crate::backup::server::MAX_REPLICA_PDUS as u32;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How much may wait in the outbox for a destination that cannot be reached (PDUs and EDUs;
/// a backup server's replica always waits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxLimits {
    pub(crate) per_destination: u32,
    pub(crate) ttl: Duration,
}

/// The handle on a destination's sender task; dropping it stops the task.
pub(super) struct SenderHandle {
    /// Something new is in the outbox.
    pub(super) more: Arc<Notify>,
    /// The destination's peer just showed up: retry now, whatever the back-off says.
    pub(super) reachable: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Drop for SenderHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn spawn(
    store: Store,
    signing_key: SigningKey,
    destination: OwnedServerName,
    transport: WeakTransport,
    limits: OutboxLimits,
) -> SenderHandle {
    let more = Arc::new(Notify::new());
    let reachable = Arc::new(Notify::new());
    let sender = Sender {
        store,
        signing_key,
        destination,
        transport,
        more: more.clone(),
        reachable: reachable.clone(),
        limits,
    };
    let task = tokio::spawn(sender.run()).abort_handle();
    SenderHandle {
        more,
        reachable,
        task,
    }
}

struct Sender {
    store: Store,
    signing_key: SigningKey,
    destination: OwnedServerName,
    transport: WeakTransport,
    more: Arc<Notify>,
    reachable: Arc<Notify>,
    limits: OutboxLimits,
}

/// How long sends to the destination have been failing, to decide when its mailbox takes over.
#[derive(Default)]
struct Away {
    /// Direct sends that failed in a row.
    failures: u32,
    /// When the destination itself was last tried.
    last_direct: Option<std::time::Instant>,
    /// No mailbox was found for it (here or in the DHT): not looked for again before then, and
    /// the destination itself is tried as usual meanwhile.
    no_mailbox_until: Option<std::time::Instant>,
}

enum Outcome {
    Sent,
    /// Worth trying again later: the server is away or busy.
    Retry(String),
}

impl Sender {
    async fn run(self) {
        let mut backoff: Option<Duration> = None;
        let mut away = Away::default();
        loop {
            // Federation traffic first; a backup server's replica when there is none.
            let batch = match self.next_batch().await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(destination = %self.destination, error = %e, "outbox unreadable");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Notify keeps one permit, so a wake between the read and here is not lost.
                tokio::select! {
                    _ = self.more.notified() => {}
                    _ = self.reachable.notified() => {}
                }
                continue;
            }
            let mut batch = batch;
            match self.send(&mut batch, &mut away).await {
                Outcome::Sent => {
                    backoff = None;
                    self.acknowledge(&batch).await;
                }
                Outcome::Retry(reason) => {
                    self.trim().await;
                    let wait = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                    backoff = Some(wait);
                    tracing::debug!(destination = %self.destination, ?wait, %reason, "transaction not delivered; backing off");
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = self.reachable.notified() => {
                                backoff = None;
                                away = Away::default();
                                break;
                            }
                            // More for a destination that is away: it stays within its share
                            // while the sender waits.
                            _ = self.more.notified() => self.trim().await,
                        }
                    }
                }
            }
        }
    }

    /// Drops what waited too long, or past the destination's share, while it cannot be
    /// reached: a server that never comes back (or a name made up to join a room) must not
    /// grow the outbox with every event. It fetches what it missed when a later event names it.
    async fn trim(&self) {
        let created_before = std::time::SystemTime::now()
            .checked_sub(self.limits.ttl)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match self
            .store
            .outbox_trim(
                self.destination.to_string(),
                self.limits.per_destination,
                created_before,
            )
            .await
        {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::info!(destination = %self.destination, dropped, "unreachable destination: its oldest outbox entries dropped")
            }
            Err(e) => {
                tracing::warn!(destination = %self.destination, error = %e, "could not trim the outbox")
            }
        }
    }

    /// Removes what was delivered: outbox entries, or held mail.
    async fn acknowledge(&self, batch: &[OutboxEntry]) {
        let destination = self.destination.to_string();
        let (mail, outbox): (Vec<&OutboxEntry>, Vec<&OutboxEntry>) =
            batch.iter().partition(|e| e.kind == OutboxKind::Mail);
        let mut result = Ok(());
        if !outbox.is_empty() {
            let ids = outbox.iter().map(|e| e.id).collect();
            result = self.store.outbox_ack(destination.clone(), ids).await;
        }
        if !mail.is_empty() && result.is_ok() {
            let ids = mail.iter().map(|e| e.id).collect();
            result = self.store.backup_mail_delivered(destination, ids).await;
        }
        if let Err(e) = result {
            tracing::warn!(destination = %self.destination, error = %e, "could not clear the outbox");
        }
    }

    async fn next_batch(&self) -> hyphae_store::Result<Vec<OutboxEntry>> {
        let destination = self.destination.to_string();
        let batch = self
            .store
            .outbox_batch(destination.clone(), MAX_PDUS, MAX_EDUS)
            .await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        let mail = self
            .store
            .backup_mail_batch(
                destination.clone(),
                mailbox::MAIL_BATCH,
                mailbox::MAIL_BATCH_BYTES,
            )
            .await?;
        if !mail.is_empty() {
            return Ok(mail);
        }
        self.store
            .outbox_replica_batch(destination, MAX_REPLICA)
            .await
    }

    /// Sends `batch`, or the part of it that fits one transaction: what is left out of
    /// `batch` stays in the outbox for the next one.
    async fn send(&self, batch: &mut Vec<OutboxEntry>, away: &mut Away) -> Outcome {
        let Some(transport) = self.transport.upgrade() else {
            // The transport is gone, so is the node; the entries wait in the store.
            std::future::pending::<()>().await;
            return Outcome::Retry("stopped".into());
        };
        if batch.iter().all(|e| e.kind == OutboxKind::Mail) {
            return match mailbox::send_mail(&transport, &self.destination, batch).await {
                Ok(()) => Outcome::Sent,
                Err(reason) => Outcome::Retry(reason),
            };
        }
        if batch.iter().all(|e| e.kind == OutboxKind::Replica) {
            return match crate::backup::send_replica(
                &self.store,
                &transport,
                self.signing_key.replica_key(),
                &self.destination,
                batch,
            )
            .await
            {
                crate::backup::ReplicaSent::Done => Outcome::Sent,
                crate::backup::ReplicaSent::Retry(reason) => Outcome::Retry(reason),
            };
        }
        let (pdus, edus, covered) = match self.transaction_body(batch).await {
            Ok(body) => body,
            Err(e) => return Outcome::Retry(e),
        };
        batch.retain(|entry| covered.contains(&entry.id));
        let body = serde_json::json!({
            "origin": self.signing_key.server_name(),
            "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
            "edus": edus,
        });
        // The same entries get the same transaction id on every retry, so a server that took
        // a transaction whose answer was lost can tell it is a repeat.
        let mut hash = Sha256::new();
        for entry in batch {
            hash.update(entry.id.to_be_bytes());
        }
        let txn_id = hex::encode(&hash.finalize()[..12]);
        let request = axum::http::Request::builder()
            .method(Method::PUT)
            .uri(format!("/_matrix/federation/v1/send/{txn_id}"))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Bytes::from(body.to_string()));
        let request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Retry(e.to_string()),
        };
        // Away for a while: the destination's mailbox takes it, unless it is time to try the
        // destination itself again.
        let now = std::time::Instant::now();
        if away.failures >= MAILBOX_AFTER_FAILURES
            && away
                .last_direct
                .is_some_and(|at| at.elapsed() < DIRECT_PROBE)
            && away.no_mailbox_until.is_none_or(|until| now >= until)
        {
            match mailbox::send_to_mailbox(
                &self.store,
                &transport,
                &self.signing_key,
                &self.destination,
                &txn_id,
                body,
            )
            .await
            {
                MailboxSent::Taken => return Outcome::Sent,
                MailboxSent::NotTaken(reason) => return Outcome::Retry(reason),
                MailboxSent::NoMailbox => away.no_mailbox_until = Some(now + NO_MAILBOX_RECHECK),
            }
        }
        away.last_direct = Some(std::time::Instant::now());
        let outcome = match transport.request(self.destination.as_str(), request).await {
            Ok(response) if response.status().is_success() => Outcome::Sent,
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Retry(format!("status {}", response.status()))
            }
            Ok(response) => {
                // The server refuses this transaction as such (malformed, too large): sending
                // it again would be refused again and hold up everything behind it.
                tracing::warn!(
                    destination = %self.destination,
                    status = %response.status(),
                    body = %String::from_utf8_lossy(response.body()),
                    "transaction refused; dropping it"
                );
                Outcome::Sent
            }
            Err(e) => Outcome::Retry(e.to_string()),
        };
        match &outcome {
            Outcome::Sent => *away = Away::default(),
            Outcome::Retry(_) => away.failures += 1,
        }
        outcome
    }

    /// The PDUs (read from the store, as they are now: redacted if redacted since) and EDUs of
    /// a batch, in outbox order as long as the body stays within what a server takes, and the
    /// entries that covers. An item over its own size cap, which no server would take, is
    /// covered but left out (with a warning): it must not hold up the rest.
    async fn transaction_body(
        &self,
        batch: &[OutboxEntry],
    ) -> Result<(Vec<Box<RawValue>>, Vec<Box<RawValue>>, HashSet<i64>), String> {
        let event_ids: Vec<String> = batch
            .iter()
            .filter(|e| e.kind == OutboxKind::Pdu)
            .map(|e| e.payload.clone())
            .collect();
        let stored: HashMap<String, String> = self
            .store
            .pdus(event_ids)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|p| (p.event_id, p.json))
            .collect();
        let (mut pdus, mut edus, mut covered) = (Vec::new(), Vec::new(), HashSet::new());
        let mut room = MAX_SEND_BODY - ENVELOPE;
        for entry in batch {
            let (json, cap, items) = match entry.kind {
                OutboxKind::Pdu => (stored.get(&entry.payload), MAX_PDU_BYTES, &mut pdus),
                OutboxKind::Edu => (Some(&entry.payload), MAX_EDU_BYTES, &mut edus),
                _ => continue,
            };
            let Some(raw) = json.and_then(|j| RawValue::from_string(j.clone()).ok()) else {
                covered.insert(entry.id);
                continue;
            };
            let size = raw.get().len() + 1;
            if size > cap + 1 {
                tracing::warn!(destination = %self.destination, id = entry.id, size, "an outbox item over its size cap; not sent");
                covered.insert(entry.id);
                continue;
            }
            if size > room {
                // The rest goes in the next transaction; items stay in order.
                break;
            }
            room -= size;
            items.push(raw);
            covered.insert(entry.id);
        }
        Ok((pdus, edus, covered))
    }
}
