//! Pushers: kept per user and device and listed back, never called. The node is the device
//! itself, so there is no push gateway to wake it: clients on the device notify from their own
//! sync. Element X sets a pusher on login and fails without this.

use axum::extract::State;
use ruma::api::client::push::Pusher;
use ruma::api::client::push::{get_pushers, set_pusher};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;

/// The spec's limits on a pusher's ids.
const MAX_PUSHKEY: usize = 512;
const MAX_APP_ID: usize = 64;

pub(crate) async fn list(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<get_pushers::v3::Response> {
    let pushers = state
        .store
        .pushers(user.localpart)
        .await?
        .iter()
        .filter_map(|json| match serde_json::from_str::<Pusher>(json) {
            Ok(pusher) => Some(pusher),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable stored pusher");
                None
            }
        })
        .collect();
    Ok(Ruma(get_pushers::v3::Response::new(pushers)))
}

pub(crate) async fn set(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_pusher::v3::Request>,
) -> ApiResult<set_pusher::v3::Response> {
    match request.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let ids = &data.pusher.ids;
            if ids.pushkey.is_empty() || ids.pushkey.len() > MAX_PUSHKEY {
                return Err(MatrixError::invalid_param(format!(
                    "A pushkey has 1 to {MAX_PUSHKEY} bytes"
                )));
            }
            if ids.app_id.is_empty() || ids.app_id.len() > MAX_APP_ID {
                return Err(MatrixError::invalid_param(format!(
                    "An app_id has 1 to {MAX_APP_ID} bytes"
                )));
            }
            let json = serde_json::to_string(&data.pusher)
                .map_err(|e| MatrixError::bad_json(e.to_string()))?;
            state
                .store
                .set_pusher(
                    user.localpart,
                    user.device_id.to_string(),
                    ids.app_id.clone(),
                    ids.pushkey.clone(),
                    json,
                    data.append,
                )
                .await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            // Deleting a pusher that is not there leaves what the client wanted.
            state
                .store
                .delete_pusher(user.localpart, ids.app_id, ids.pushkey)
                .await?;
        }
        _ => return Err(MatrixError::invalid_param("Unknown pusher action")),
    }
    Ok(Ruma(set_pusher::v3::Response::new()))
}
