//! Profiles: display names and avatars of this node's users, and of other servers' users as
//! their servers say. A change is also written into the user's membership in every room they
//! are in, as other homeservers do.

use axum::extract::State;
use ruma::api::client::profile::{
    get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name,
};
use ruma::events::StateEventType;
use ruma::{OwnedMxcUri, UserId};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;
use crate::rooms::EventDraft;

/// (display name, avatar URL) of a user of this node, or of another server's as their server
/// says (cached; see `people::profiles`).
pub(crate) async fn profile_of(
    state: &AppState,
    user_id: &UserId,
) -> Result<(Option<String>, Option<String>), MatrixError> {
    if user_id.server_name() != state.server_name {
        return crate::people::profiles::remote_profile(state, user_id)
            .await?
            .ok_or_else(|| MatrixError::not_found("Profile not found"));
    }
    local_profile(state, user_id).await
}

/// (display name, avatar URL) of a user of this node: what other servers are told. Anyone else
/// is not found, whatever this node knows of them.
pub(crate) async fn local_profile(
    state: &AppState,
    user_id: &UserId,
) -> Result<(Option<String>, Option<String>), MatrixError> {
    if user_id.server_name() != state.server_name {
        return Err(MatrixError::not_found("Not a user of this server"));
    }
    state
        .store
        .profile(user_id.localpart().to_owned())
        .await?
        .ok_or_else(|| MatrixError::not_found("Profile not found"))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Req(request): Req<get_profile::v3::Request>,
) -> ApiResult<get_profile::v3::Response> {
    let (displayname, avatar_url) = profile_of(&state, &request.user_id).await?;
    let mut response = get_profile::v3::Response::new();
    if let Some(name) = displayname {
        response.set("displayname".into(), name.into());
    }
    if let Some(url) = avatar_url {
        response.set("avatar_url".into(), url.into());
    }
    if let Some(record) = crate::backup::mailbox::own_record(&state, Some(&request.user_id)).await {
        response.set(crate::backup::mailbox::PROFILE_FIELD.into(), record);
    }
    Ok(Ruma(response))
}

pub(crate) async fn get_displayname(
    State(state): State<AppState>,
    Req(request): Req<get_display_name::v3::Request>,
) -> ApiResult<get_display_name::v3::Response> {
    let (displayname, _) = profile_of(&state, &request.user_id).await?;
    Ok(Ruma(get_display_name::v3::Response::new(displayname)))
}

pub(crate) async fn get_avatar(
    State(state): State<AppState>,
    Req(request): Req<get_avatar_url::v3::Request>,
) -> ApiResult<get_avatar_url::v3::Response> {
    let (_, avatar_url) = profile_of(&state, &request.user_id).await?;
    Ok(Ruma(get_avatar_url::v3::Response::new(
        avatar_url.map(OwnedMxcUri::from),
    )))
}

pub(crate) async fn set_displayname(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_display_name::v3::Request>,
) -> ApiResult<set_display_name::v3::Response> {
    set_field(&state, &user, &request.user_id, false, request.displayname).await?;
    Ok(Ruma(set_display_name::v3::Response::new()))
}

pub(crate) async fn set_avatar(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_avatar_url::v3::Request>,
) -> ApiResult<set_avatar_url::v3::Response> {
    let url = request.avatar_url.map(|u| u.to_string());
    set_field(&state, &user, &request.user_id, true, url).await?;
    Ok(Ruma(set_avatar_url::v3::Response::new()))
}

async fn set_field(
    state: &AppState,
    user: &User,
    target: &UserId,
    avatar: bool,
    value: Option<String>,
) -> Result<(), MatrixError> {
    if target != user.user_id {
        return Err(MatrixError::forbidden(
            "You can only change your own profile",
        ));
    }
    if value.as_ref().is_some_and(|v| v.len() > 1024) {
        return Err(MatrixError::invalid_param(
            "Profile fields are limited to 1024 bytes",
        ));
    }
    state
        .store
        .set_profile_field(user.localpart.clone(), avatar, value)
        .await?;
    let joined = state.store.memberships_of(user.user_id.to_string()).await?;
    for membership in joined.into_iter().filter(|m| m.membership == "join") {
        let Ok(room_id) = ruma::RoomId::parse(&membership.room_id) else {
            continue;
        };
        let content = state.rooms.member_content(&user.user_id, "join").await?;
        let draft = EventDraft::state(StateEventType::RoomMember, user.user_id.as_str(), content);
        if let Err(e) = state.rooms.send(&room_id, &user.user_id, draft).await {
            tracing::warn!(%room_id, error = %e, "could not update the membership with the profile");
        }
    }
    Ok(())
}
