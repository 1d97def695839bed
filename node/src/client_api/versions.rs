//! `GET /_matrix/client/versions` and the node's health check.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use ruma::api::client::discovery::get_supported_versions;

use super::Ruma;
use crate::node::AppState;

/// The Client-Server API versions this node speaks.
const SPEC_VERSIONS: &[&str] = &["v1.11", "v1.12"];

pub(crate) async fn get_versions() -> Ruma<get_supported_versions::Response> {
    let versions = SPEC_VERSIONS.iter().map(|v| v.to_string()).collect();
    let mut response = get_supported_versions::Response::new(versions);
    response.unstable_features = BTreeMap::new();
    Ruma(response)
}

/// Liveness plus what an operator wants at a glance: is the database answering, and who am I.
pub(crate) async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let store = state.store.read(hyphae_store::current_stream_pos).await;
    Json(serde_json::json!({
        "status": if store.is_ok() { "ok" } else { "degraded" },
        "server_name": state.server_name.as_str(),
        "store": match store {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        },
    }))
}
