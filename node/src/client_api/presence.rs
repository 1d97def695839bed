//! Presence: `GET`/`PUT /presence/{userId}/status`, and what `/sync` asks of presence (its
//! `set_presence`, the `presence` section, the `_p<serial>` part of its token, and waking a
//! long-poll for the changes of the people the user shares a room with). The presence itself
//! is `people::presence`.

use std::collections::HashSet;

use axum::extract::State;
use ruma::api::client::presence::{get_presence, set_presence};
use ruma::api::client::sync::sync_events::v3 as sync;
use ruma::presence::PresenceState;
use ruma::serde::Raw;
use ruma::{OwnedUserId, UserId};
use serde_json::json;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;
use crate::people::presence::MAX_STATUS_MSG;

pub(crate) async fn set_status(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_presence::v3::Request>,
) -> ApiResult<set_presence::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden("You can only set your own presence"));
    }
    if !matches!(
        request.presence,
        PresenceState::Online | PresenceState::Unavailable | PresenceState::Offline
    ) {
        return Err(MatrixError::invalid_param(format!(
            "Unknown presence {:?}: online, unavailable or offline",
            request.presence.as_str()
        )));
    }
    if request
        .status_msg
        .as_ref()
        .is_some_and(|m| m.len() > MAX_STATUS_MSG)
    {
        return Err(MatrixError::invalid_param(format!(
            "status_msg is limited to {MAX_STATUS_MSG} bytes"
        )));
    }
    state
        .people
        .presence
        .set(&user.user_id, request.presence, request.status_msg)
        .await;
    Ok(Ruma(set_presence::v3::Response::new()))
}

pub(crate) async fn get_status(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_presence::v3::Request>,
) -> ApiResult<get_presence::v3::Response> {
    if request.user_id != user.user_id
        && !state
            .store
            .share_a_room(user.user_id.to_string(), request.user_id.to_string())
            .await?
    {
        return Err(MatrixError::forbidden("You share no room with this user"));
    }
    let shown = state.people.presence.shown(&request.user_id);
    let mut response = get_presence::v3::Response::new(shown.presence);
    response.last_active_ago = shown.last_active_ago;
    response.currently_active = Some(shown.currently_active);
    response.status_msg = shown.status_msg;
    Ok(Ruma(response))
}

/// Where this sync's presence starts: everything on a first sync (`None`), from the token's
/// serial, or from now on for a token without one.
pub(crate) fn since(state: &AppState, first_sync: bool, serial: Option<u64>) -> Option<u64> {
    match (first_sync, serial) {
        (true, _) => None,
        (false, Some(serial)) => Some(serial),
        (false, None) => Some(state.people.presence.current()),
    }
}

/// The user syncs, with the sync's `set_presence`.
pub(crate) async fn syncing(state: &AppState, user_id: &UserId, set_presence: &PresenceState) {
    state.people.presence.syncing(user_id, set_presence).await;
}

/// Fills the response's `presence` with the room-mates (and the user) whose presence changed
/// after `since`; returns the serial it is as of, for the next token.
pub(crate) async fn add_to_sync(
    state: &AppState,
    user_id: &UserId,
    since: Option<u64>,
    response: &mut sync::Response,
) -> Result<u64, MatrixError> {
    let people = room_mates(state, user_id).await?;
    let (serial, changed) = state.people.presence.changes(&people, since);
    response.presence.events = changed
        .into_iter()
        .filter_map(|(user_id, shown)| {
            let event =
                json!({"type": "m.presence", "sender": user_id, "content": shown.content()});
            serde_json::value::to_raw_value(&event)
                .ok()
                .map(Raw::from_json)
        })
        .collect();
    Ok(serial)
}

/// Resolves once the presence of someone `user_id` shares a room with (or their own) changes
/// after serial `seen`; other changes on the node do not wake it.
pub(crate) async fn news(state: &AppState, user_id: &UserId, seen: u64) {
    let people: HashSet<OwnedUserId> = match room_mates(state, user_id).await {
        Ok(people) => people.into_iter().collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list whose presence to wait for");
            return std::future::pending().await;
        }
    };
    let presence = &state.people.presence;
    // Subscribed before looking, so a change in between still wakes it.
    let mut serial = presence.serial();
    loop {
        if presence.any_changed(&people, seen) {
            return;
        }
        if serial.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The people whose presence `user_id` sees: everyone in a room with them, and themselves.
async fn room_mates(state: &AppState, user_id: &UserId) -> Result<Vec<OwnedUserId>, MatrixError> {
    let mut people: Vec<OwnedUserId> = state
        .store
        .room_mates(user_id.to_string())
        .await?
        .into_iter()
        .filter_map(|u| UserId::parse(u).ok())
        .collect();
    if !people.iter().any(|u| u == user_id) {
        people.push(user_id.to_owned());
    }
    Ok(people)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ruma::UserId;
    use serde_json::json;

    use crate::people::presence_tests::room_mates_and_a_stranger;

    #[tokio::test]
    async fn a_waiting_sync_wakes_for_its_room_mates_presence_only() {
        let (api, alice, dave, carol) = room_mates_and_a_stranger().await;
        let state = api.node.app_state();
        let alice_id = UserId::parse(&alice.user_id).unwrap();
        let news = super::news(state, &alice_id, state.people.presence.current());
        tokio::pin!(news);

        // Carol shares no room with Alice: her changes leave Alice's sync waiting.
        let carols = format!("/v3/presence/{}/status", carol.user_id);
        for presence in ["online", "unavailable"] {
            let body = json!({"presence": presence});
            let (status, _) = api.put(&carols, Some(&carol.token), body).await;
            assert_eq!(status, 200);
            let woke = tokio::time::timeout(Duration::from_millis(300), &mut news).await;
            assert!(woke.is_err(), "a stranger's presence woke Alice's sync");
        }
        let path = format!("/v3/presence/{}/status", dave.user_id);
        let body = json!({"presence": "unavailable"});
        let (status, _) = api.put(&path, Some(&dave.token), body).await;
        assert_eq!(status, 200);
        tokio::time::timeout(Duration::from_secs(5), &mut news)
            .await
            .expect("Dave's presence did not wake Alice's sync");
    }
}
