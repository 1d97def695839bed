//! Room tags (`m.favourite`, `m.lowpriority`, a user's own): the `m.tag` room account data,
//! read and changed one tag at a time, for rooms the user is or was in.

use axum::extract::State;
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::events::tag::{TagEventContent, TagName, Tags};
use ruma::{RoomId, UserId};

use super::Ruma;
use super::account_data::only_self;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;

const TAGS: &str = "m.tag";
/// The spec's limit on a tag's name.
const MAX_TAG_BYTES: usize = 255;
/// Tags one room may carry.
const MAX_TAGS: usize = 64;

/// Only the user's own tags, on a room they are or were in.
async fn check(
    state: &AppState,
    user: &User,
    user_id: &UserId,
    room_id: &RoomId,
) -> Result<(), MatrixError> {
    only_self(user, user_id)?;
    let membership = state
        .store
        .membership(room_id.to_string(), user.user_id.to_string())
        .await?;
    if membership.is_none() {
        return Err(MatrixError::forbidden(format!(
            "{} has never been in room {room_id}",
            user.user_id
        )));
    }
    Ok(())
}

/// The tags in stored `m.tag` content; none if it cannot be read.
fn tags_of(stored: Option<&str>) -> Tags {
    stored
        .and_then(|json| serde_json::from_str::<TagEventContent>(json).ok())
        .map(|content| content.tags)
        .unwrap_or_default()
}

fn content_of(tags: Tags) -> Option<String> {
    serde_json::to_string(&TagEventContent::new(tags)).ok()
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_tags::v3::Request>,
) -> ApiResult<get_tags::v3::Response> {
    check(&state, &user, &request.user_id, &request.room_id).await?;
    let stored = state
        .store
        .account_data(
            user.localpart,
            Some(request.room_id.to_string()),
            TAGS.into(),
        )
        .await?;
    Ok(Ruma(get_tags::v3::Response::new(tags_of(
        stored.as_deref(),
    ))))
}

/// Changes the room's tags in one read-modify-write; `change` says whether it changed them
/// (nothing is written otherwise) and what to answer.
async fn change_tags<T: Send + 'static>(
    state: &AppState,
    user: &User,
    room_id: &RoomId,
    change: impl FnOnce(&mut Tags) -> (bool, T) + Send + 'static,
) -> Result<T, MatrixError> {
    let answer = state
        .store
        .update_account_data(
            user.localpart.clone(),
            Some(room_id.to_string()),
            TAGS.into(),
            move |stored| {
                let mut tags = tags_of(stored.as_deref());
                let (changed, answer) = change(&mut tags);
                (changed.then(|| content_of(tags)).flatten(), answer)
            },
        )
        .await?;
    Ok(answer)
}

pub(crate) async fn put(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_tag::v3::Request>,
) -> ApiResult<create_tag::v3::Response> {
    check(&state, &user, &request.user_id, &request.room_id).await?;
    if request.tag.is_empty() || request.tag.len() > MAX_TAG_BYTES {
        return Err(MatrixError::invalid_param(format!(
            "A tag has 1 to {MAX_TAG_BYTES} bytes"
        )));
    }
    let (tag, info) = (TagName::from(request.tag), request.tag_info);
    change_tags(&state, &user, &request.room_id, move |tags| {
        if !tags.contains_key(&tag) && tags.len() >= MAX_TAGS {
            let error = format!("A room carries at most {MAX_TAGS} tags");
            return (false, Err(MatrixError::invalid_param(error)));
        }
        tags.insert(tag, info);
        (true, Ok(()))
    })
    .await??;
    Ok(Ruma(create_tag::v3::Response::new()))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_tag::v3::Request>,
) -> ApiResult<delete_tag::v3::Response> {
    check(&state, &user, &request.user_id, &request.room_id).await?;
    let tag = TagName::from(request.tag);
    // Deleting a tag the room does not carry changes nothing.
    change_tags(&state, &user, &request.room_id, move |tags| {
        (tags.remove(&tag).is_some(), ())
    })
    .await?;
    Ok(Ruma(delete_tag::v3::Response::new()))
}
