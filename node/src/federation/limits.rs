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

/// Reads a request body into one buffer of the length it declares (which the transport held
/// to the route's cap, at most `max`): collecting its chunks and joining them would hold it
/// twice at the end.
pub(crate) async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    max: usize,
) -> Result<Vec<u8>, MatrixError> {
    use http_body_util::{BodyExt, LengthLimitError};
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut buffer = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut body = http_body_util::Limited::new(body, max);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            // The transport's own cap on the route, over a body without a length, ends the
            // body first, wrapped in the error of axum's body: it counts as over the cap too.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            let chain: Vec<_> = std::iter::from_fn(|| {
                let error = source?;
                source = error.source();
                Some(error)
            })
            .collect();
            if chain
                .iter()
                .any(|error| error.is::<hyphae_p2p::BodyTooSlow>())
            {
                // The transport ended a body that trickled in to hold a slot.
                MatrixError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorKind::Unknown,
                    format!("Request body too slow: {e}"),
                )
            } else if chain.iter().any(|error| error.is::<LengthLimitError>()) {
                MatrixError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorKind::TooLarge,
                    format!("Request body over {max} bytes"),
                )
            } else {
                MatrixError::bad_json(format!("Could not read the request body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use axum::http::{HeaderMap, HeaderValue, header::CONTENT_LENGTH};
    use axum::response::IntoResponse;
    use http_body_util::Limited;

    /// A body without a length, in chunks of `chunk` bytes.
    fn chunked(total: usize, chunk: usize) -> Body {
        let chunks = (0..total.div_ceil(chunk)).map(move |n| {
            let len = chunk.min(total - n * chunk);
            Ok::<_, std::io::Error>(Bytes::from(vec![b'0'; len]))
        });
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn status(answer: Result<Vec<u8>, MatrixError>) -> StatusCode {
        answer.expect_err("refused").into_response().status()
    }

    #[tokio::test]
    async fn a_body_is_read_into_one_buffer_of_its_declared_length() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(3000));
        let body = read_body(&headers, chunked(3000, 1000), 3000)
            .await
            .unwrap();
        assert_eq!(body.len(), 3000);
        assert_eq!(body.capacity(), 3000);
    }

    #[tokio::test]
    async fn a_body_over_its_cap_is_too_large() {
        let over = read_body(&HeaderMap::new(), chunked(5000, 1000), 4096).await;
        assert_eq!(status(over), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_body_cut_by_the_transport_is_too_large_and_a_broken_one_is_not() {
        // As the transport hands a body without a length on: cut at the route's cap.
        let cut = Body::new(Limited::new(chunked(5000, 1000), 4096));
        let over = read_body(&HeaderMap::new(), cut, 4096).await;
        assert_eq!(status(over), StatusCode::PAYLOAD_TOO_LARGE);
        let reset = [Err::<Bytes, _>(std::io::Error::other("reset"))];
        let broken = Body::from_stream(futures::stream::iter(reset));
        let failed = read_body(&HeaderMap::new(), broken, 4096).await;
        assert_eq!(status(failed), StatusCode::BAD_REQUEST);
    }
}
