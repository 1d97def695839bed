//! Notifications: each local member's push rules evaluated once per timeline event, in stream
//! order, and what notified them kept (as Synapse keeps `event_push_actions`), for the unread
//! counts in `/sync` (`notification_count`, `highlight_count`) and for `/notifications`. The
//! rules themselves are the user's `m.push_rules` account data (`rules.rs`).
//!
//! The node is the user's own device: no push gateway is ever called. Pushers clients register
//! are kept and listed only, and the clients on the device notify from their own sync.
//!
//! Why evaluate once and keep, not at every sync: a sync would re-read and re-evaluate every
//! unread event of every room it answers for, on every sync. Measured with `bench-unread`
//! (`tests/src/bin/bench-unread.rs`; a debug build on a busy two-core machine) for a user in
//! 200 rooms with 50 unread messages each: evaluating an event costs 0.7 to 0.9 ms, so the
//! 10,000 cost 7 to 9 s, once here; a first sync that then only counts takes 0.6 to 1.0 s (the
//! 200 counts themselves under 0.1 s), where evaluating at sync would add those 7 to 9 s to
//! every first sync, and 50 evaluations to every incremental sync of a room with news. Kept,
//! an event costs one evaluation per local member (on a device, one or two users), once.
//! What is given up: a rule change does not recount events already evaluated (as in Synapse).

mod notifier;
mod rules;

use hyphae_store::StoreError;
use ruma::api::client::sync::sync_events::UnreadNotificationsCount;
use ruma::events::AnyGlobalAccountDataEvent;
use ruma::serde::Raw;
use ruma::{RoomId, UInt, UserId};

use crate::node::AppState;
pub(crate) use notifier::Notifier;
pub(crate) use rules::{PUSH_RULES, update_ruleset, user_ruleset};

/// Unread notifications counted per room at most (the newest ones): more shows as this many.
pub(crate) const UNREAD_LIMIT: u32 = 1000;

/// Evaluates push rules for every event up to stream position `upto` not evaluated yet.
pub(crate) async fn catch_up(state: &AppState, upto: i64) -> Result<(), StoreError> {
    state
        .notifier
        .catch_up(&state.store, &state.server_name, upto)
        .await
}

/// A joined room's unread notifications for `/sync`, as of stream position `upto`.
pub(crate) async fn unread_notifications(
    state: &AppState,
    user_id: &UserId,
    room_id: &RoomId,
    upto: i64,
) -> Result<UnreadNotificationsCount, StoreError> {
    catch_up(state, upto).await?;
    let counts = state
        .store
        .unread_counts(user_id.to_string(), room_id.to_string(), upto, UNREAD_LIMIT)
        .await?;
    let mut unread = UnreadNotificationsCount::new();
    unread.notification_count = Some(UInt::try_from(counts.notifications).unwrap_or(UInt::MAX));
    unread.highlight_count = Some(UInt::try_from(counts.highlights).unwrap_or(UInt::MAX));
    Ok(unread)
}

/// On a first sync, the user's push rules are in their account data even before any was
/// written: the server defaults then, as other homeservers send them.
pub(crate) fn with_push_rules(user_id: &UserId, events: &mut Vec<Raw<AnyGlobalAccountDataEvent>>) {
    let stored = events
        .iter()
        .any(|e| e.get_field::<String>("type").ok().flatten().as_deref() == Some(PUSH_RULES));
    if stored {
        return;
    }
    let defaults = rules::ruleset_from(user_id, None);
    let event = serde_json::json!({"type": PUSH_RULES, "content": {"global": defaults}});
    if let Ok(raw) = serde_json::value::to_raw_value(&event) {
        events.push(Raw::from_json(raw));
    }
}
