//! Account data and capabilities: what clients keep on, or ask of, their server.

use axum::extract::State;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::discovery::get_capabilities::v3 as get_capabilities;
use ruma::serde::Raw;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;
use crate::rooms::ROOM_VERSIONS;

pub(crate) fn only_self(user: &User, user_id: &ruma::UserId) -> Result<(), MatrixError> {
    if user.user_id != user_id {
        return Err(MatrixError::forbidden(
            "You can only reach your own account data",
        ));
    }
    Ok(())
}

fn raw<T>(json: String) -> Result<Raw<T>, MatrixError> {
    serde_json::value::RawValue::from_string(json)
        .map(Raw::from_json)
        .map_err(|e| MatrixError::unknown(format!("stored account data: {e}")))
}

pub(crate) async fn put_global(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_global_account_data::v3::Request>,
) -> ApiResult<set_global_account_data::v3::Response> {
    only_self(&user, &request.user_id)?;
    let event_type = request.event_type.to_string();
    let content = request.data.json().get().to_owned();
    state
        .store
        .set_account_data(
            user.localpart.clone(),
            None,
            event_type.clone(),
            content.clone(),
        )
        .await?;
    // Whichever client changed them, the user's lists apply from the next thing they see.
    if event_type == crate::policy::SUBSCRIPTIONS_DATA {
        state
            .policy
            .set_user_subscriptions(&user.localpart, &content)
            .await;
    }
    Ok(Ruma(set_global_account_data::v3::Response::new()))
}

pub(crate) async fn get_global(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    only_self(&user, &request.user_id)?;
    let content = state
        .store
        .account_data(user.localpart, None, request.event_type.to_string())
        .await?
        .ok_or_else(|| MatrixError::not_found("No such account data"))?;
    Ok(Ruma(get_global_account_data::v3::Response::new(raw(
        content,
    )?)))
}

pub(crate) async fn put_room(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_room_account_data::v3::Request>,
) -> ApiResult<set_room_account_data::v3::Response> {
    only_self(&user, &request.user_id)?;
    state
        .store
        .set_account_data(
            user.localpart,
            Some(request.room_id.to_string()),
            request.event_type.to_string(),
            request.data.json().get().to_owned(),
        )
        .await?;
    Ok(Ruma(set_room_account_data::v3::Response::new()))
}

pub(crate) async fn get_room(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    only_self(&user, &request.user_id)?;
    let content = state
        .store
        .account_data(
            user.localpart,
            Some(request.room_id.to_string()),
            request.event_type.to_string(),
        )
        .await?
        .ok_or_else(|| MatrixError::not_found("No such account data"))?;
    Ok(Ruma(get_room_account_data::v3::Response::new(raw(
        content,
    )?)))
}

/// What the user may do here. Capabilities at the spec's default (`enabled: true`) are left out
/// by ruma, which clients read as enabled: display name and avatar changes.
pub(crate) async fn capabilities(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<get_capabilities::Response> {
    let mut capabilities = get_capabilities::Capabilities::new();
    capabilities.room_versions = get_capabilities::RoomVersionsCapability::new(
        ROOM_VERSIONS[0].clone(),
        ROOM_VERSIONS
            .iter()
            .map(|v| (v.clone(), get_capabilities::RoomVersionStability::Stable))
            .collect(),
    );
    // Changing a password proves the old one: an account without one (the device owner's,
    // until they set one in the app) cannot.
    let has_password = state
        .store
        .account(user.localpart)
        .await?
        .is_some_and(|a| a.password_hash.is_some());
    capabilities.change_password = get_capabilities::ChangePasswordCapability::new(has_password);
    capabilities.thirdparty_id_changes =
        get_capabilities::ThirdPartyIdChangesCapability::new(false);
    Ok(Ruma(get_capabilities::Response::new(capabilities)))
}
