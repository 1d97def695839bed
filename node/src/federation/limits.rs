//! How much a peer may send: the body cap of each federation route (handed to the transport,
//! which answers 413 before reading more), and the counts and sizes of a transaction's items,
//! checked on the raw JSON before any item is parsed further. A parsed JSON value takes many
//! times the bytes it came in, so nothing from a peer is parsed whole before these checks.

use axum::http::StatusCode;
use ruma::api::error::ErrorKind;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::client_api::MatrixError;

/// The spec's limits for one transaction.
pub(crate) const MAX_PDUS: usize = 50;
pub(crate) const MAX_EDUS: usize = 100;
/// The spec's cap on a PDU, in bytes of JSON.
pub(crate) const MAX_PDU_BYTES: usize = 64 * 1024;
/// The spec sets none for an EDU: ours are small (a typing notice, a receipt, to-device messages
/// for one server's devices, a signed mailbox record, an invite with its capped room state).
pub(crate) const MAX_EDU_BYTES: usize = 64 * 1024;
/// A `/send` body: 50 PDUs of the largest size are 3.2 MiB; the rest leaves 0.8 MiB for EDUs
/// and framing. This node's sender never builds a larger one (it sends fewer items instead).
pub(crate) const MAX_SEND_BODY: usize = 4 * 1024 * 1024;
/// The state an invite shows of its room (`invite_room_state`): a handful of events (create,
/// join rules, name, avatar, alias, encryption, the inviter's membership).
pub(crate) const MAX_INVITE_STATE_EVENTS: usize = 16;
pub(crate) const MAX_INVITE_STATE_BYTES: usize = 32 * 1024;
/// Requests with small bodies (ids, filters, a query): everything not named below.
const SMALL_BODY: usize = 64 * 1024;

/// The body cap of each federation route, by path prefix (the longest matching one counts).
/// The transport's own `max_request_body` (8 MiB) stays the ceiling, for the backup server's
/// replica, identity and mail.
pub(crate) fn body_limits() -> Vec<(String, usize)> {
    [
        ("/", SMALL_BODY),
        ("/_matrix/federation/v1/send/", MAX_SEND_BODY),
        // The invite event and its room state, with room for the JSON around them.
        (
            "/_matrix/federation/v2/invite/",
            MAX_PDU_BYTES + MAX_INVITE_STATE_BYTES + 16 * 1024,
        ),
        ("/_matrix/federation/v2/send_join/", 2 * MAX_PDU_BYTES),
        ("/_matrix/federation/v2/send_leave/", 2 * MAX_PDU_BYTES),
        // As the Client-Server API takes key queries and claims.
        (
            "/_matrix/federation/v1/user/keys/",
            crate::client_api::MAX_BODY,
        ),
        // The replica (100 PDUs), room keys, the sealed identity (6 MiB) and mail (6 MiB).
        ("/_matrix/federation/unstable/io.hyphae.backup/", usize::MAX),
        (crate::backup::SUBSCRIBE_PATH, SMALL_BODY),
        (crate::backup::UNSUBSCRIBE_PATH, SMALL_BODY),
    ]
    .into_iter()
    .map(|(prefix, limit)| (prefix.to_owned(), limit))
    .collect()
}

/// A transaction as it arrives: its items stay raw JSON, borrowed from the body.
#[derive(Deserialize)]
pub(crate) struct RawTransaction<'a> {
    pub(crate) origin: String,
    #[serde(default, borrow)]
    pub(crate) pdus: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    pub(crate) edus: Vec<&'a RawValue>,
}

pub(crate) fn too_large(message: String) -> MatrixError {
    MatrixError::new(StatusCode::BAD_REQUEST, ErrorKind::TooLarge, message)
}

/// Refuses a transaction with more items than the spec allows.
pub(crate) fn check_counts(pdus: &[&RawValue], edus: &[&RawValue]) -> Result<(), MatrixError> {
    if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
        return Err(too_large(format!(
            "At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs per transaction"
        )));
    }
    Ok(())
}

/// Refuses a transaction with more items than the spec allows, or an item over its size: for
/// a transaction taken whole (mail, whose signature covers every item).
pub(crate) fn check_items(pdus: &[&RawValue], edus: &[&RawValue]) -> Result<(), MatrixError> {
    check_counts(pdus, edus)?;
    if let Some(pdu) = pdus.iter().find(|p| p.get().len() > MAX_PDU_BYTES) {
        return Err(too_large(format!(
            "A PDU of {} bytes; at most {MAX_PDU_BYTES}",
            pdu.get().len()
        )));
    }
    if let Some(edu) = edus.iter().find(|e| e.get().len() > MAX_EDU_BYTES) {
        return Err(too_large(format!(
            "An EDU of {} bytes; at most {MAX_EDU_BYTES}",
            edu.get().len()
        )));
    }
    Ok(())
}

/// Refuses an invite's room state with more events or bytes than an invite needs.
pub(crate) fn check_invite_state(state: &[&RawValue]) -> Result<(), MatrixError> {
    let bytes: usize = state.iter().map(|e| e.get().len()).sum();
    if state.len() > MAX_INVITE_STATE_EVENTS || bytes > MAX_INVITE_STATE_BYTES {
        return Err(too_large(format!(
            "invite_room_state holds {} events, {bytes} bytes; at most \
             {MAX_INVITE_STATE_EVENTS} events, {MAX_INVITE_STATE_BYTES} bytes",
            state.len()
        )));
    }
    Ok(())
}

/// The most JSON values a document from a peer may hold before it is parsed whole (a mail
/// transaction, whose signature covers all of it): parsed, each value takes tens of bytes
/// whatever its size in the text, so 4 MiB of `[0,0,…]` would take about 64 MiB. Honest
/// transactions hold a few thousand.
pub(crate) const MAX_JSON_VALUES: usize = 128 * 1024;

/// Refuses a JSON text with more values than [`MAX_JSON_VALUES`], counted without parsing it:
/// every value but the first follows a `[`, `{`, `,` or `:` outside strings.
pub(crate) fn check_json_values(json: &str) -> Result<(), MatrixError> {
    let (mut values, mut in_string, mut escaped) = (1usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => values += 1,
            _ => {}
        }
    }
    if values > MAX_JSON_VALUES {
        return Err(too_large(format!(
            "About {values} JSON values; at most {MAX_JSON_VALUES}"
        )));
    }
    Ok(())
}
