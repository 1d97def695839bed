//! `PUT /_matrix/federation/v1/send/{txnId}`: transactions of PDUs and EDUs from other servers.
//! Each PDU is checked on its own (whoever relays it), so one bad PDU does not cost the others;
//! so is each EDU. Items stay raw JSON until then: one over its size cap is never parsed.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use ruma::ServerName;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::Origin;
use super::limits::{
    MAX_EDU_BYTES, MAX_PDU_BYTES, MAX_SEND_BODY, RawTransaction, check_counts, read_body,
};
use crate::client_api::MatrixError;
use crate::node::AppState;
use crate::rooms::{Received, RoomError};

/// The transaction's items stay raw JSON borrowed from the body (which the transport capped),
/// and their number is checked before any of them is parsed.
pub(crate) async fn send_transaction(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(txn_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, MatrixError> {
    let body = read_body(&headers, body, MAX_SEND_BODY).await?;
    let transaction: RawTransaction = serde_json::from_slice(&body).map_err(|e| {
        tracing::warn!(%origin, %txn_id, error = %e, "malformed transaction");
        MatrixError::bad_json(format!("Malformed transaction: {e}"))
    })?;
    if transaction.origin != origin.as_str() {
        tracing::warn!(%origin, claimed = %transaction.origin, "transaction from another origin");
        return Err(MatrixError::forbidden(
            "The transaction's origin is not the sending server",
        ));
    }
    if let Err(e) = check_counts(&transaction.pdus, &transaction.edus) {
        tracing::warn!(%origin, pdus = transaction.pdus.len(), edus = transaction.edus.len(), "transaction too large");
        return Err(e);
    }
    let results = process(&state, &origin, &transaction.pdus, &transaction.edus).await;
    Ok(Json(json!({ "pdus": results })))
}

/// Takes a transaction's PDUs and EDUs from `origin`, each on its own, and answers per PDU
/// (whether it came straight from `origin` or through its mailbox).
pub(crate) async fn process<P: Borrow<RawValue>, E: Borrow<RawValue>>(
    state: &AppState,
    origin: &ServerName,
    pdus: &[P],
    edus: &[E],
) -> BTreeMap<String, Value> {
    let mut results = BTreeMap::new();
    // A server the node's policy lists ban is not heard, whoever's events it carries: its own
    // are refused anyway, and others' reach the node from their own servers. Nothing of it is
    // stored (an honest event it relays must still be taken when it comes another way), and
    // the answer is a success so it does not retry.
    if state.policy.node_has_lists()
        && let Some((list, reason)) = state.policy.node_verdict(&crate::policy::Subject {
            server: Some(origin.as_str()),
            ..Default::default()
        })
    {
        tracing::warn!(%origin, %list, %reason, pdus = pdus.len(), "refusing a transaction at the federation edge");
        for raw in pdus {
            if let Some(event_id) = event_id_hint(raw.borrow()) {
                results.insert(event_id, json!({"error": reason}));
            }
        }
        return results;
    }
    for raw in pdus {
        let raw = raw.borrow();
        match state.rooms.receive_pdu(origin, raw).await {
            Ok((event_id, received)) => {
                let result = match received {
                    Received::Accepted | Received::Duplicate => json!({}),
                    Received::SoftFailed(_) => json!({}),
                    Received::Rejected(reason) | Received::SetAside(reason) => {
                        json!({"error": reason})
                    }
                };
                results.insert(event_id.to_string(), result);
            }
            Err(e) => {
                // Without a valid event there may be no event id to answer under.
                let level_worthy = !matches!(e, RoomError::NotFound(_));
                if level_worthy {
                    tracing::warn!(%origin, error = %e, "refused a PDU");
                } else {
                    tracing::debug!(%origin, error = %e, "PDU for a room this server is not in");
                }
                if let Some(event_id) = event_id_hint(raw) {
                    results.insert(event_id, json!({"error": e.to_string()}));
                }
            }
        }
    }
    for edu in edus {
        let edu = edu.borrow();
        if edu.get().len() > MAX_EDU_BYTES {
            tracing::warn!(%origin, size = edu.get().len(), "EDU over its size cap dropped unread");
            continue;
        }
        super::edus::receive(state, origin, edu).await;
    }
    results
}

/// The event id a refused PDU is answered under: its reference hash when it parses at all. One
/// far over the size cap gets none: it is not parsed.
pub(crate) fn event_id_hint(raw: &RawValue) -> Option<String> {
    if raw.get().len() > 2 * MAX_PDU_BYTES {
        return None;
    }
    let json: ruma::CanonicalJsonObject = serde_json::from_str(raw.get()).ok()?;
    let version = ruma::RoomVersionId::V12.rules()?;
    ruma::signatures::reference_hash(&json, &version)
        .ok()
        .map(|hash| format!("${hash}"))
}
