//! Mailboxes (ARCHITECTURE.md "Backup server and mailbox"). A subscribed device names its backup server as its
//! mailbox in a record it signs (kept in the DHT, sent to the servers it shares rooms with,
//! served with its owner). A server whose sends to the device keep failing signs the
//! transaction it could not deliver and leaves it in the mailbox (`take_mail`); the mailbox
//! pushes held mail to the device as soon as it can reach it (`send_mail`, from the outbox
//! sender), and the device checks the sender's signature and takes the transaction as if it had
//! come directly (`deliver_mail`).
//!
//! Mail is signed, not encrypted: the mailbox can read what is not end-to-end encrypted (room
//! metadata and state, membership, unencrypted rooms' messages, EDUs such as typing and
//! receipts), though it cannot forge or alter mail, nor make a device take the same mail twice:
//! the signed part names the transaction and when it was signed, and the device remembers what
//! it took (`mail_taken` in the store) and drops mail older than `MAIL_MAX_AGE_MS`. Servers the
//! subscriber shares no room with (as its replica tells) share a small allowance, so fresh keys
//! cannot fill the mailbox (store/src/mailbox.rs); the subscriber's correspondents are not
//! published for that (a record in the DHT would tell everyone whom the device talks to).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use hyphae_p2p::{Multiaddr, Transport};
use hyphae_store::{
    CLOCK_AHEAD_MS, MAIL_MAX_AGE_MS, MailOutcome, MailSeen, MailboxRecord, OutboxEntry,
    RecordSource, Store,
};
use ruma::api::error::ErrorKind;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::client_api::MatrixError;
use crate::federation::Origin;
use crate::federation::limits::{RawTransaction, check_items, check_json_values};
use crate::node::AppState;
use crate::rooms::verify_key_of;
use crate::signing::SigningKey;

/// `PUT …/mailbox/{txnId}` on a backup server: mail for one of its subscribers.
pub(crate) const MAILBOX_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/mailbox";
/// `POST` on a subscribed device, by its backup server only: held mail, delivered.
pub(crate) const MAIL_PATH: &str = "/_matrix/federation/unstable/io.hyphae.backup/mail";
/// The EDU a device sends its signed mailbox record in.
pub(crate) const RECORD_EDU: &str = "io.hyphae.mailbox";
/// Transactions pushed to a device per request...
pub(crate) const MAIL_BATCH: u32 = 10;
/// ...and their size together at most (unless one alone is larger): well below the 8 MiB a
/// node takes in one request.
pub(crate) const MAIL_BATCH_BYTES: usize = 4 << 20;
/// The largest transaction a mailbox takes, so that any one can be delivered.
const MAX_MAIL_TXN: usize = 6 << 20;
/// Longer transaction ids are refused (the spec sets no bound; ours are 24 characters).
const MAX_TXN_ID: usize = 255;
/// Records larger than this are refused unread: a record is a name, a few addresses and a
/// signature.
const MAX_RECORD_BYTES: usize = 4096;
const MAX_RECORD_ADDRESSES: usize = 16;

/// The DHT key a server's mailbox record is kept under.
pub(crate) fn dht_key(server: &str) -> Vec<u8> {
    format!("/hyphae/mailbox/{server}").into_bytes()
}

/// Whether `object` carries a valid signature of `server` (whose key is its name).
fn signed_by(object: &CanonicalJsonObject, server: &str) -> bool {
    crate::signing::signed_by_server(object, server)
}

/// A record naming `mailbox` (dialled at `addresses`) as this server's mailbox, or saying it
/// has none, signed now.
pub(crate) fn signed_record(
    key: &SigningKey,
    mailbox: Option<&str>,
    addresses: &[String],
) -> Result<MailboxRecord, String> {
    let ts = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0);
    let mut object: CanonicalJsonObject = serde_json::from_value(json!({
        "server": key.server_name().as_str(),
        "mailbox": mailbox,
        "addresses": addresses,
        "ts": ts,
    }))
    .map_err(|e| e.to_string())?;
    key.sign_json(&mut object).map_err(|e| e.to_string())?;
    Ok(MailboxRecord {
        server: key.server_name().to_string(),
        mailbox: mailbox.map(str::to_owned),
        addresses: addresses.to_vec(),
        ts,
        record: serde_json::to_string(&object).map_err(|e| e.to_string())?,
    })
}

/// A mailbox record from anywhere (an EDU, the DHT), if it is well-formed and signed by the
/// server it speaks for.
pub(crate) fn verify_record(record: &str) -> Result<MailboxRecord, String> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes, more than {MAX_RECORD_BYTES}",
            record.len()
        ));
    }
    let object: CanonicalJsonObject =
        serde_json::from_str(record).map_err(|e| format!("not canonical JSON: {e}"))?;
    let Some(CanonicalJsonValue::String(server)) = object.get("server") else {
        return Err("no server".into());
    };
    if !signed_by(&object, server) {
        return Err(format!("not signed by {server}"));
    }
    let mailbox = match object.get("mailbox") {
        Some(CanonicalJsonValue::String(mailbox)) if verify_key_of(mailbox).is_some() => {
            Some(mailbox.clone())
        }
        None | Some(CanonicalJsonValue::Null) => None,
        Some(other) => return Err(format!("mailbox {other} is not a server name")),
    };
    let Some(CanonicalJsonValue::Integer(ts)) = object.get("ts") else {
        return Err("no ts".into());
    };
    let addresses: Vec<String> = match object.get("addresses") {
        Some(CanonicalJsonValue::Array(addresses)) => addresses
            .iter()
            .take(MAX_RECORD_ADDRESSES)
            .filter_map(|a| match a {
                CanonicalJsonValue::String(a) if a.parse::<Multiaddr>().is_ok() => Some(a.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(MailboxRecord {
        server: server.clone(),
        mailbox,
        addresses,
        ts: i64::from(*ts),
        record: record.to_owned(),
    })
}

/// Keeps a record that came from elsewhere if it is valid and newer than the one held (within
/// the store's caps on records per teller and in all).
pub(crate) async fn learn_record(store: &Store, record: &str, from: RecordSource) {
    match verify_record(record) {
        Ok(record) => {
            let server = record.server.clone();
            let mailbox = record.mailbox.clone();
            match store.put_mailbox_record(record, from.clone()).await {
                Ok(true) => tracing::debug!(%server, ?mailbox, ?from, "learnt a mailbox"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot keep a mailbox record"),
            }
        }
        Err(reason) => tracing::warn!(?from, %reason, "mailbox record refused"),
    }
}

/// Signs and spreads this device's mailbox record: kept here, put in the DHT, and sent to the
/// servers its owner shares rooms with. `mailbox` is `None` when the device withdrew it.
pub(crate) async fn publish_record(
    state: &AppState,
    transport: Option<&Transport>,
    mailbox: Option<(&str, &[String])>,
) {
    let (name, addresses) = mailbox.map_or((None, &[][..]), |(n, a)| (Some(n), a));
    let record = match signed_record(&state.signing_key, name, addresses) {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign the mailbox record");
            return;
        }
    };
    let json = record.record.clone();
    if let Err(e) = state
        .store
        .put_mailbox_record(record, RecordSource::Own)
        .await
    {
        tracing::warn!(error = %e, "cannot keep the mailbox record");
    }
    if let Some(transport) = transport {
        match transport
            .put_record(
                dht_key(state.server_name.as_str()),
                json.clone().into_bytes(),
            )
            .await
        {
            Ok(peers) => tracing::debug!(peers, "mailbox record put in the DHT"),
            Err(e) => tracing::debug!(error = %e, "mailbox record not put in the DHT"),
        }
    }
    // The mailbox itself keeps the record too, and puts it in the DHT again while this device
    // is away (DHT records expire: see `republish`).
    let mut servers: Vec<OwnedServerName> = name
        .and_then(|n| OwnedServerName::try_from(n).ok())
        .into_iter()
        .collect();
    if let Some(owner) = &state.owner
        && let Ok(owner) = ruma::UserId::parse(format!("@{owner}:{}", state.server_name))
    {
        match crate::client_api::servers_sharing_rooms(state, &owner).await {
            Ok(sharing) => servers.extend(sharing),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which servers to send the mailbox record")
            }
        }
    }
    let edu = json!({"edu_type": RECORD_EDU, "content": {"record": json}});
    if let Err(e) = state.federation.queue_edu(servers, edu).await {
        tracing::warn!(error = %e, "cannot queue the mailbox record");
    }
}

/// How often a backup server puts its subscribers' mailbox records in the DHT again: peers
/// drop a record 24 h after it was put, and a device may be away for longer than that.
const REPUBLISH_EVERY: Duration = Duration::from_secs(3600);

/// On a backup server: puts in the DHT, hourly, the signed record of every subscriber that
/// names this server as its mailbox. Ends when the transport stops.
pub(crate) fn spawn_republisher(store: Store, transport: &Transport, own: String) {
    let weak = transport.downgrade();
    let mut events = transport.events();
    tokio::spawn(async move {
        loop {
            let Some(transport) = weak.upgrade() else {
                return;
            };
            let put = republish(&store, &transport, &own).await;
            tracing::debug!(
                records = put,
                "subscribers' mailbox records put in the DHT again"
            );
            drop(transport);
            let stopped = async {
                // The transport's events end when it stops.
                while !matches!(
                    events.recv().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed)
                ) {}
            };
            tokio::select! {
                _ = tokio::time::sleep(REPUBLISH_EVERY) => {}
                _ = stopped => return,
            }
        }
    });
}

/// Puts the records of this backup server's subscribers that name it in the DHT; how many.
pub(crate) async fn republish(store: &Store, transport: &Transport, own: &str) -> usize {
    let records = match store.mailbox_records_naming(own.to_owned()).await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the subscribers' mailbox records");
            return 0;
        }
    };
    let mut put = 0;
    for record in records {
        let subscribed = store.backup_subscriber(record.server.clone()).await;
        if !matches!(subscribed, Ok(Some(_))) {
            continue;
        }
        let key = dht_key(&record.server);
        if transport
            .put_record(key, record.record.into_bytes())
            .await
            .is_ok()
        {
            put += 1;
        }
    }
    put
}

/// The profile field a device's owner shows its signed mailbox record in.
pub(crate) const PROFILE_FIELD: &str = "io.hyphae.mailbox";

/// This node's own signed record, to serve with its owner (`io.hyphae/owner` and the owner's
/// profile); `None` for anyone else, or when the node has no mailbox.
pub(crate) async fn own_record(state: &AppState, user_id: Option<&ruma::UserId>) -> Option<Value> {
    if let Some(user_id) = user_id
        && (user_id.server_name() != state.server_name
            || state.owner.as_deref() != Some(user_id.localpart()))
    {
        return None;
    }
    let record = state
        .store
        .mailbox_record(state.server_name.to_string())
        .await
        .ok()??;
    record.mailbox.as_ref()?;
    serde_json::from_str(&record.record).ok()
}

/// Where `destination` takes mail, as it last said: from what this node holds, else from the
/// DHT (the newest valid record found there is kept).
pub(crate) async fn find_mailbox(
    store: &Store,
    transport: &Transport,
    destination: &ServerName,
) -> Option<(OwnedServerName, Vec<Multiaddr>)> {
    let mut record = store
        .mailbox_record(destination.to_string())
        .await
        .ok()
        .flatten();
    if record.is_none() {
        refresh_record(store, transport, destination).await;
        record = store
            .mailbox_record(destination.to_string())
            .await
            .ok()
            .flatten();
    }
    let record = record.filter(|r| r.server == destination.as_str())?;
    let mailbox = OwnedServerName::try_from(record.mailbox?).ok()?;
    let addresses = record
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    Some((mailbox, addresses))
}

/// Takes what the DHT holds of `destination`'s mailbox record (kept if newer than ours). Anyone
/// can put a value under that key: only a record of `destination` itself is taken.
async fn refresh_record(store: &Store, transport: &Transport, destination: &ServerName) {
    let found = transport
        .get_records(dht_key(destination.as_str()))
        .await
        .unwrap_or_default();
    for value in found {
        let Ok(text) = String::from_utf8(value) else {
            continue;
        };
        if verify_record(&text).is_ok_and(|r| r.server == destination.as_str()) {
            learn_record(store, &text, RecordSource::Dht).await;
        }
    }
}

/// What became of a transaction offered to a mailbox.
pub(crate) enum MailboxSent {
    /// The mailbox holds it: the destination will have it.
    Taken,
    /// The mailbox did not take the mail; the sender keeps it and tries again later.
    NotTaken(String),
    /// The destination has no mailbox this node can find: the sender goes on as if there were
    /// no such thing.
    NoMailbox,
}

/// Signs the transaction `txn_id` (`body`, as it would go to `/send`) for `destination` and
/// leaves it in the destination's mailbox. What is signed names the destination and the
/// transaction, and when it was signed: the device takes it once, and not once it is stale.
pub(crate) async fn send_to_mailbox(
    store: &Store,
    transport: &Transport,
    key: &SigningKey,
    destination: &ServerName,
    txn_id: &str,
    mut body: Value,
) -> MailboxSent {
    let Some((mailbox, addresses)) = find_mailbox(store, transport, destination).await else {
        return MailboxSent::NoMailbox;
    };
    if mailbox == *key.server_name() || mailbox == destination {
        tracing::debug!(%destination, %mailbox, "a mailbox that is this server or the destination itself");
        return MailboxSent::NoMailbox;
    }
    body["destination"] = json!(destination.as_str());
    body["txn_id"] = json!(txn_id);
    body["origin_server_ts"] = json!(ruma::MilliSecondsSinceUnixEpoch::now());
    let signed = serde_json::from_value::<CanonicalJsonObject>(body)
        .map_err(|e| e.to_string())
        .and_then(|mut object| {
            key.sign_json(&mut object).map_err(|e| e.to_string())?;
            Ok(object)
        });
    let signed = match signed {
        Ok(signed) => signed,
        Err(e) => return MailboxSent::NotTaken(format!("cannot sign the transaction: {e}")),
    };
    // The record's addresses are the destination's word on where its mailbox is: tried for
    // this dial only, never kept, so no record can change how this node reaches a server.
    if let Ok(peer) = hyphae_p2p::peer_id_for_server_name(mailbox.as_str())
        && let Err(e) = transport.dial_via(peer, addresses).await
    {
        tracing::debug!(%mailbox, error = %e, "the mailbox did not answer at once");
    }
    let request = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(format!("{MAILBOX_PATH}/{txn_id}"))
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Bytes::from(
            json!({"destination": destination.as_str(), "transaction": signed}).to_string(),
        ));
    let request = match request {
        Ok(request) => request,
        Err(e) => return MailboxSent::NotTaken(e.to_string()),
    };
    match transport.request(mailbox.as_str(), request).await {
        Ok(response) if response.status().is_success() => {
            tracing::info!(%destination, %mailbox, txn_id, "left a transaction in the destination's mailbox");
            MailboxSent::Taken
        }
        Ok(response) => {
            if matches!(
                response.status(),
                StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            ) {
                // The destination may have moved its mailbox since the record held here.
                refresh_record(store, transport, destination).await;
            }
            MailboxSent::NotTaken(format!(
                "mailbox {mailbox} answered {}: {}",
                response.status(),
                String::from_utf8_lossy(response.body())
            ))
        }
        Err(e) => MailboxSent::NotTaken(format!("mailbox {mailbox}: {e}")),
    }
}

/// Mail as it arrives, before its transaction is parsed.
#[derive(serde::Deserialize)]
struct RawMail<'a> {
    destination: String,
    #[serde(borrow)]
    transaction: &'a RawValue,
}

/// A held transaction, checked for size, item counts and sizes and how many JSON values it
/// holds before it is parsed whole (its signature covers all of it).
fn parse_transaction(raw: &RawValue) -> Result<CanonicalJsonObject, MatrixError> {
    if raw.get().len() > MAX_MAIL_TXN {
        return Err(MatrixError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!("A transaction left as mail may hold at most {MAX_MAIL_TXN} bytes"),
        ));
    }
    let items: RawTransaction = serde_json::from_str(raw.get())
        .map_err(|e| MatrixError::bad_json(format!("Malformed transaction: {e}")))?;
    check_items(&items.pdus, &items.edus)?;
    check_json_values(raw.get())?;
    serde_json::from_str(raw.get())
        .map_err(|e| MatrixError::bad_json(format!("Malformed transaction: {e}")))
}

/// `PUT …/mailbox/{txnId} {"destination", "transaction"}` on a backup server: holds the
/// sending server's signed transaction for a subscriber and wakes the push to it. Only the
/// transaction's own server may leave it, signed, and only for a subscriber.
pub(crate) async fn take_mail(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(txn_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    super::server::invites(&state)?;
    let mail: RawMail = serde_json::from_slice(&body)
        .map_err(|e| MatrixError::bad_json(format!("Malformed mail: {e}")))?;
    let destination = mail.destination;
    let transaction = parse_transaction(mail.transaction)?;
    drop(body);
    let field = |name: &str| match transaction.get(name) {
        Some(CanonicalJsonValue::String(value)) => Some(value.as_str()),
        _ => None,
    };
    if field("origin") != Some(origin.as_str()) {
        return Err(MatrixError::forbidden(
            "The transaction's origin is not the sending server",
        ));
    }
    if field("destination") != Some(destination.as_str()) {
        return Err(MatrixError::forbidden(
            "The transaction is not addressed to this destination",
        ));
    }
    if !signed_by(&transaction, origin.as_str()) {
        tracing::warn!(%origin, "unsigned or badly signed mail refused");
        return Err(MatrixError::forbidden(
            "Mail must be signed by its origin server",
        ));
    }
    if field("txn_id") != Some(txn_id.as_str()) {
        return Err(MatrixError::invalid_param(
            "Mail must name its transaction id in what it signs",
        ));
    }
    // Refused here rather than dropped by the device: the sender keeps it and tries again.
    let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0);
    match signed_ts(&transaction) {
        Some(ts) if ts > now - MAIL_MAX_AGE_MS && ts <= now + CLOCK_AHEAD_MS => {}
        _ => {
            return Err(MatrixError::invalid_param(
                "Mail must carry the time it was signed, not stale nor ahead of this server's clock",
            ));
        }
    }
    let txn =
        serde_json::to_string(&transaction).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if txn_id.len() > MAX_TXN_ID {
        return Err(MatrixError::invalid_param(format!(
            "Transaction ids are at most {MAX_TXN_ID} characters"
        )));
    }
    let outcome = state
        .store
        .backup_take_mail(destination.clone(), origin.to_string(), txn_id.clone(), txn)
        .await?;
    match outcome {
        MailOutcome::Stored | MailOutcome::Duplicate => {
            tracing::info!(%origin, destination = %destination, txn_id, "holding mail");
            if let Ok(destination) = OwnedServerName::try_from(destination) {
                state.federation.wake(&destination);
            }
            Ok(Json(json!({})))
        }
        MailOutcome::OverQuota => Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            // No contact to give: the subscriber's own operator invited it, not the sender.
            ErrorKind::ResourceLimitExceeded(
                ruma::api::error::ResourceLimitExceededErrorData::new(String::new()),
            ),
            "The destination's mailbox is full, or this server's share of it",
        )),
        MailOutcome::NotSubscribed => Err(MatrixError::not_found(
            "The destination has no mailbox here",
        )),
    }
}

/// Pushes held transactions (`OutboxKind::Mail` entries) to their subscriber. `Ok` when the
/// device answered, so they can go; `Err` to try again later.
pub(crate) async fn send_mail(
    transport: &Transport,
    destination: &ServerName,
    batch: &[OutboxEntry],
) -> Result<(), String> {
    let mail: Vec<Box<RawValue>> = batch
        .iter()
        .filter_map(|e| RawValue::from_string(e.payload.clone()).ok())
        .collect();
    let request = axum::http::Request::builder()
        .method(Method::POST)
        .uri(MAIL_PATH)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Bytes::from(json!({"mail": mail}).to_string()))
        .map_err(|e| e.to_string())?;
    let response = transport
        .request(destination.as_str(), request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        tracing::info!(%destination, transactions = batch.len(), "delivered held mail");
        Ok(())
    } else if status == StatusCode::FORBIDDEN {
        // The device says this is not its mailbox (it unsubscribed, or moved): it will never
        // take the mail from here.
        tracing::warn!(%destination, body = %String::from_utf8_lossy(response.body()), "the device no longer takes mail from here; dropping it");
        Ok(())
    } else {
        // Anything else (a device that cannot read it yet, a request it found too large) is
        // kept: held mail is only ever dropped once the device has answered for it.
        Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(response.body())
        ))
    }
}

/// A delivery as it arrives, its transactions raw until each is checked.
#[derive(serde::Deserialize)]
struct Delivery<'a> {
    #[serde(borrow)]
    mail: Vec<&'a RawValue>,
}

/// How many transactions a device remembers taking (see `MAIL_MAX_AGE_MS`): past this, the
/// oldest are forgotten and mail signed before them is refused as stale.
const MAIL_REMEMBERED: i64 = 100_000;

/// Deliveries are taken one at a time: a mailbox sending the same mail twice at once must not
/// have it taken twice.
static DELIVERIES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `POST …/mail {"mail": [transaction]}` on a device, from its backup server only: each
/// transaction is checked against its origin's signature, its address, its age and what the
/// device took before, and taken as if that server had sent it directly. A transaction that
/// fails a check is dropped with a logged reason.
pub(crate) async fn deliver_mail(
    State(state): State<AppState>,
    Origin(mailbox): Origin,
    body: axum::body::Bytes,
) -> Result<Json<Value>, MatrixError> {
    let subscribed = state.store.backup_subscription().await?;
    if subscribed.is_none_or(|s| s.server != mailbox.as_str()) {
        tracing::warn!(%mailbox, "mail from a server that is not this device's mailbox");
        return Err(MatrixError::forbidden("Not this device's mailbox"));
    }
    let delivery: Delivery = serde_json::from_slice(&body)
        .map_err(|e| MatrixError::bad_json(format!("Malformed delivery: {e}")))?;
    if delivery.mail.len() > MAIL_BATCH as usize {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge,
            format!("At most {MAIL_BATCH} transactions per delivery"),
        ));
    }
    let _one_at_a_time = DELIVERIES.lock().await;
    let mut delivered = 0;
    for raw in delivery.mail {
        let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0);
        let opened = parse_transaction(raw)
            .map_err(|e| e.to_string())
            .and_then(|transaction| open_mail(&state.server_name, transaction, now));
        let mail = match opened {
            Ok(mail) => mail,
            Err(reason) => {
                tracing::warn!(%mailbox, %reason, "mail dropped");
                continue;
            }
        };
        let (origin, txn_id) = (mail.origin.to_string(), mail.txn_id.clone());
        let seen = state
            .store
            .mail_seen(origin.clone(), txn_id.clone(), mail.sha256.clone(), mail.ts)
            .await?;
        if seen != MailSeen::New {
            tracing::warn!(%mailbox, %origin, txn_id, ?seen, "mail taken before or too old to tell; dropped");
            continue;
        }
        let started = std::time::Instant::now();
        crate::federation::send::process(&state, &mail.origin, &mail.pdus, &mail.edus).await;
        state
            .store
            .mail_taken(origin, txn_id, mail.sha256, mail.ts, MAIL_REMEMBERED)
            .await?;
        tracing::info!(origin = %mail.origin, %mailbox, pdus = mail.pdus.len(), edus = mail.edus.len(), took = ?started.elapsed(), "took mail");
        delivered += 1;
    }
    Ok(Json(json!({"delivered": delivered})))
}

/// A held transaction, opened.
pub(super) struct Opened {
    pub(super) origin: OwnedServerName,
    pub(super) txn_id: String,
    /// When its origin signed it (its clock, milliseconds).
    pub(super) ts: i64,
    /// SHA-256 (hex) of the signed transaction: a replay is the very same bytes.
    pub(super) sha256: String,
    pub(super) pdus: Vec<Box<RawValue>>,
    pub(super) edus: Vec<Box<RawValue>>,
}

fn signed_ts(transaction: &CanonicalJsonObject) -> Option<i64> {
    match transaction.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => Some(i64::from(*ts)),
        _ => None,
    }
}

/// A held transaction, once its origin's signature, its address, its transaction id and its
/// age (by `now`) check out.
pub(super) fn open_mail(
    own_name: &ServerName,
    transaction: CanonicalJsonObject,
    now: i64,
) -> Result<Opened, String> {
    let Some(CanonicalJsonValue::String(origin)) = transaction.get("origin") else {
        return Err("no origin".into());
    };
    let origin = OwnedServerName::try_from(origin.as_str()).map_err(|e| format!("origin: {e}"))?;
    if !matches!(transaction.get("destination"), Some(CanonicalJsonValue::String(d)) if d == own_name.as_str())
    {
        return Err(format!("from {origin}: addressed to another server"));
    }
    if !signed_by(&transaction, origin.as_str()) {
        return Err(format!("from {origin}: not signed by it"));
    }
    let txn_id = match transaction.get("txn_id") {
        Some(CanonicalJsonValue::String(id)) if !id.is_empty() && id.len() <= MAX_TXN_ID => {
            id.clone()
        }
        _ => {
            return Err(format!(
                "from {origin}: no transaction id in what it signed"
            ));
        }
    };
    let Some(ts) = signed_ts(&transaction) else {
        return Err(format!("from {origin}: no time in what it signed"));
    };
    if ts < now - MAIL_MAX_AGE_MS {
        return Err(format!(
            "from {origin}: stale (signed {} s ago)",
            (now - ts) / 1000
        ));
    }
    if ts > now + CLOCK_AHEAD_MS {
        return Err(format!(
            "from {origin}: signed {} s ahead of this clock",
            (ts - now) / 1000
        ));
    }
    let canonical = serde_json::to_string(&transaction).map_err(|e| e.to_string())?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes()));
    let items = |name: &str| match transaction.get(name) {
        Some(CanonicalJsonValue::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let raw = |items: Vec<CanonicalJsonValue>| -> Vec<Box<RawValue>> {
        items
            .iter()
            .filter_map(|item| {
                let text = serde_json::to_string(item).ok()?;
                RawValue::from_string(text).ok()
            })
            .collect()
    };
    Ok(Opened {
        origin,
        txn_id,
        ts,
        sha256,
        pdus: raw(items("pdus")),
        edus: raw(items("edus")),
    })
}

/// Direct sends to a destination that fail in a row before its mailbox is used. Each failure
/// can take a dial timeout (about 5 s), and a device that comes back soon loses little: the
/// mailbox pushes to it as soon as it connects.
pub(crate) const MAILBOX_AFTER_FAILURES: u32 = 2;
/// While a destination's mail goes to its mailbox, it is still tried directly this often.
pub(crate) const DIRECT_PROBE: Duration = Duration::from_secs(60);
/// A destination with no mailbox to be found is looked up again (locally, then in the DHT) after
/// this long, not on every retry: most servers have none, and a DHT lookup can take seconds.
pub(crate) const NO_MAILBOX_RECHECK: Duration = Duration::from_secs(300);
