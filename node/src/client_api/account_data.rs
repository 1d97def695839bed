//! Account data, push rules and capabilities: what clients keep on, or ask of, their server.

use axum::extract::State;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::discovery::get_capabilities::v3 as get_capabilities;
use ruma::api::client::push::get_pushrules_all;
use ruma::serde::Raw;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;
use crate::rooms::ROOM_VERSIONS;

fn only_self(user: &User, user_id: &ruma::UserId) -> Result<(), MatrixError> {
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

/// The spec's default push rules: this node keeps no per-user rules yet, and Element waits for
/// this answer before its first sync.
pub(crate) async fn push_rules(user: User) -> Ruma<get_pushrules_all::v3::Response> {
    Ruma(get_pushrules_all::v3::Response::new(
        ruma::push::Ruleset::server_default(&user.user_id),
    ))
}

pub(crate) async fn capabilities(_user: User) -> Ruma<get_capabilities::Response> {
    let mut capabilities = get_capabilities::Capabilities::new();
    capabilities.room_versions = get_capabilities::RoomVersionsCapability::new(
        ROOM_VERSIONS[0].clone(),
        ROOM_VERSIONS
            .iter()
            .map(|v| (v.clone(), get_capabilities::RoomVersionStability::Stable))
            .collect(),
    );
    Ruma(get_capabilities::Response::new(capabilities))
}
