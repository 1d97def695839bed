//! What this node does not offer, answered as the spec (or the homeservers clients are used to)
//! allows for "none here", instead of 404s that clients report as errors at start-up: no TURN
//! servers, no third-party networks, no third-party identifiers.

use axum::Json;
use ruma::api::client::thirdparty::get_protocols;
use serde_json::{Value, json};

use super::Ruma;
use super::request::User;

/// No TURN server: `{}`, as Synapse answers without one. matrix-js-sdk (Element Web) then sets
/// no TURN server and asks again in ten minutes, quietly; a 404 would log an error every time,
/// and a 403 stops the asking only by raising a fatal error event. An answer with an empty
/// `uris` list would be worse: the SDK would hand WebRTC an ICE server without URLs, which
/// fails every call. Calls between devices that reach each other need no TURN.
pub(crate) async fn turn_server(_user: User) -> Json<Value> {
    Json(json!({}))
}

/// No bridges to third-party networks.
pub(crate) async fn thirdparty_protocols(_user: User) -> Ruma<get_protocols::v3::Response> {
    Ruma(get_protocols::v3::Response::new(Default::default()))
}

/// Accounts here have no email addresses or phone numbers (`m.3pid_changes` is off). Written
/// out: ruma leaves an empty list out, and Element's settings read `threepids` as a list.
pub(crate) async fn threepids(_user: User) -> Json<Value> {
    Json(json!({ "threepids": [] }))
}
