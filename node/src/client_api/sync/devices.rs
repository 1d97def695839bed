//! The end-to-end encryption parts of a `/sync`: the to-device inbox, whose devices changed or
//! are no longer shared, and the device's key counts.

use std::collections::{BTreeMap, BTreeSet};

use ruma::api::client::sync::sync_events::v3 as sync;
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, OwnedRoomId, OwnedUserId, UInt, UserId};
use serde_json::{Value, json};

use crate::client_api::error::MatrixError;
use crate::client_api::request::User;
use crate::node::AppState;

/// To-device messages per response; the rest come with the next sync.
const TO_DEVICE_LIMIT: u32 = 100;

/// The device's to-device messages in `(after, upto]`, and where the batch ended: short of
/// `upto` when it was cut, and then the whole response stops there, so nothing in the other
/// streams is skipped.
pub(super) async fn to_device(
    state: &AppState,
    user: &User,
    after: i64,
    upto: i64,
) -> Result<(Vec<Raw<ruma::events::AnyToDeviceEvent>>, i64), MatrixError> {
    let messages = state
        .store
        .to_device_messages(
            user.localpart.clone(),
            user.device_id.to_string(),
            after,
            upto,
            TO_DEVICE_LIMIT,
        )
        .await?;
    let reached = if messages.len() as u32 == TO_DEVICE_LIMIT {
        messages.last().map_or(upto, |m| m.0)
    } else {
        upto
    };
    let events = messages
        .into_iter()
        .filter_map(|(_, kind, sender, content)| {
            let content: Value = serde_json::from_str(&content).ok()?;
            let event = json!({"type": kind, "sender": sender, "content": content});
            Some(Raw::from_json(
                serde_json::value::to_raw_value(&event).ok()?,
            ))
        })
        .collect();
    Ok((events, reached))
}

/// Whose devices the client should fetch again (users sharing a room whose keys changed, and
/// new members) and whose it may forget (users who no longer share any room with the user).
pub(super) async fn device_lists(
    state: &AppState,
    user: &User,
    (after, upto): (i64, i64),
    joined: &[OwnedRoomId],
    left: &[OwnedRoomId],
    new_members: BTreeSet<OwnedUserId>,
) -> Result<ruma::api::client::sync::sync_events::DeviceLists, MatrixError> {
    let store = &state.store;
    let mut sharing: BTreeSet<String> = BTreeSet::from([user.user_id.to_string()]);
    for room_id in joined {
        sharing.extend(
            store
                .room_members(room_id.to_string(), "join".into())
                .await?,
        );
    }
    let mut changed: BTreeSet<OwnedUserId> = store
        .users_with_key_changes(after, upto)
        .await?
        .into_iter()
        .filter(|u| sharing.contains(u))
        .filter_map(|u| UserId::parse(u).ok())
        .collect();
    changed.extend(new_members.into_iter().filter(|u| *u != user.user_id));

    // Users who no longer share any room: they left one of ours, or we left theirs.
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    for room_id in joined {
        for (member, membership) in store
            .membership_changes(room_id.to_string(), after, upto)
            .await?
        {
            if membership == "leave" || membership == "ban" {
                candidates.insert(member);
            }
        }
    }
    for room_id in left {
        candidates.extend(
            store
                .room_members(room_id.to_string(), "join".into())
                .await?,
        );
    }
    let mut lists = ruma::api::client::sync::sync_events::DeviceLists::new();
    lists.changed = changed.into_iter().collect();
    lists.left = candidates
        .into_iter()
        .filter(|u| !sharing.contains(u))
        .filter_map(|u| UserId::parse(u).ok())
        .collect();
    Ok(lists)
}

/// The device's one-time key counts and unused fallback key types.
pub(super) async fn key_counts(
    state: &AppState,
    user: &User,
    response: &mut sync::Response,
) -> Result<(), MatrixError> {
    let (user_id, device_id) = (user.user_id.to_string(), user.device_id.to_string());
    response.device_one_time_keys_count = state
        .store
        .one_time_key_counts(user_id.clone(), device_id.clone())
        .await?
        .into_iter()
        .map(|(algorithm, count)| {
            (
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::try_from(count).unwrap_or_default(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    response.device_unused_fallback_key_types = Some(
        state
            .store
            .unused_fallback_key_types(user_id, device_id)
            .await?
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect(),
    );
    Ok(())
}
