//! What of a room's history another server may read: only a server with a user joined now
//! reads anything, and each event by the room's history visibility at it and that server's
//! users' memberships at it (the spec's history visibility rules, applied to a server as a
//! whole). "At an event" is at its place in this node's timeline, as the Client-Server API
//! reads it for local users. Events the server may not see go out redacted, so it can still
//! follow the room's DAG through them.

use hyphae_store::{HistoryChange, StoredPdu};
use ruma::{CanonicalJsonObject, RoomId, RoomVersionId, ServerName};
use serde_json::value::RawValue;

use crate::client_api::MatrixError;
use crate::node::AppState;

/// What one server may read of one room, from one read of the store.
pub(super) struct ServerView {
    /// After each change of the history visibility or of the server's users' memberships, in
    /// stream order: its position and what the server could then see.
    steps: Vec<(i64, Step)>,
}

/// The history visibility and the server's standing at some point of the room's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    visibility: Visibility,
    /// Some user of the server is joined.
    joined: bool,
    /// Some user of the server is invited or joined.
    invited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl Visibility {
    fn parse(value: Option<&str>) -> Visibility {
        match value {
            Some("world_readable") => Visibility::WorldReadable,
            Some("shared") => Visibility::Shared,
            Some("invited") => Visibility::Invited,
            // A value no one knows promises no openness: read as the most private.
            _ => Visibility::Joined,
        }
    }
}

impl Step {
    /// Before any history visibility event the spec's default holds, and no user of the
    /// server is in the room.
    const START: Step = Step {
        visibility: Visibility::Shared,
        joined: false,
        invited: false,
    };

    /// Whether the server may read an event sent at this step. It has a user joined now (or
    /// it reads nothing), which is all `shared` asks: a member at the event or after it.
    fn allows(self) -> bool {
        match self.visibility {
            Visibility::WorldReadable | Visibility::Shared => true,
            Visibility::Invited => self.invited,
            Visibility::Joined => self.joined,
        }
    }
}

impl ServerView {
    /// What `origin` may read of the room: `M_FORBIDDEN` unless a user of it is joined now.
    pub(super) async fn of(
        state: &AppState,
        origin: &ServerName,
        room_id: &RoomId,
    ) -> Result<ServerView, MatrixError> {
        match state
            .store
            .server_history(room_id.to_string(), origin.to_string())
            .await?
        {
            Some(changes) => Ok(ServerView::from_changes(&changes)),
            None => {
                tracing::info!(%origin, %room_id, "refused room history to a server with no user joined");
                Err(MatrixError::forbidden(format!(
                    "{origin} has no user joined to {room_id}"
                )))
            }
        }
    }

    fn from_changes(changes: &[HistoryChange]) -> ServerView {
        let mut members: std::collections::HashMap<&str, Option<&str>> = Default::default();
        let mut visibility = Step::START.visibility;
        let mut steps = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                HistoryChange::Visibility {
                    visibility: value, ..
                } => visibility = Visibility::parse(value.as_deref()),
                HistoryChange::Membership {
                    user_id,
                    membership,
                    ..
                } => {
                    members.insert(user_id, membership.as_deref());
                }
            }
            let joined = members.values().any(|m| *m == Some("join"));
            let invited = joined || members.values().any(|m| *m == Some("invite"));
            steps.push((
                change.stream_pos(),
                Step {
                    visibility,
                    joined,
                    invited,
                },
            ));
        }
        ServerView { steps }
    }

    /// The step in force once every change at or before `position` (`inclusive`) or strictly
    /// before it was applied.
    fn step_at(&self, position: i64, inclusive: bool) -> Step {
        let applied = self
            .steps
            .partition_point(|(at, _)| *at < position || (inclusive && *at == position));
        applied
            .checked_sub(1)
            .map_or(Step::START, |i| self.steps[i].1)
    }

    /// Whether the server may read the event. One at a place in the timeline is readable if
    /// the room's state before it or after it allows it: the spec's rule for a user's own
    /// membership events and for history visibility changes, and the same state for any other
    /// event. An event with no place in the timeline here (state fetched with a join, an auth
    /// event) is readable if it is state, which the state and auth chain answers carry anyway.
    pub(super) fn may_see(&self, pdu: &StoredPdu) -> bool {
        match pdu.stream_pos {
            Some(position) => {
                self.step_at(position, false).allows() || self.step_at(position, true).allows()
            }
            None => is_state(pdu),
        }
    }

    /// The events as this server may have them: whole where it may read them, redacted
    /// otherwise.
    pub(super) fn serve(
        &self,
        version: &RoomVersionId,
        pdus: Vec<StoredPdu>,
    ) -> Result<Vec<Box<RawValue>>, MatrixError> {
        pdus.into_iter()
            .map(|pdu| {
                if self.may_see(&pdu) {
                    super::events::raw(pdu)
                } else {
                    redacted(version, &pdu)
                }
            })
            .collect()
    }

    /// `M_FORBIDDEN` unless the server may read the event: what is anchored at an event the
    /// server may not see (the state at it, its auth chain) is history it may not read either.
    pub(super) fn require_visible(&self, pdu: &StoredPdu) -> Result<(), MatrixError> {
        if self.may_see(pdu) {
            return Ok(());
        }
        Err(MatrixError::forbidden(
            "The room's history at this event is not visible to your server",
        ))
    }
}

fn is_state(pdu: &StoredPdu) -> bool {
    #[derive(serde::Deserialize)]
    struct StateKey {
        state_key: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_str::<StateKey>(&pdu.json).is_ok_and(|pdu| pdu.state_key.is_some())
}

/// The PDU with only what the room version keeps through a redaction: its signatures still
/// verify and its event id is the same, but its content is gone.
fn redacted(version: &RoomVersionId, pdu: &StoredPdu) -> Result<Box<RawValue>, MatrixError> {
    let damaged = |error: String| {
        tracing::error!(event_id = %pdu.event_id, %error, "cannot redact a stored PDU");
        MatrixError::unknown("A stored event is damaged")
    };
    let rules = crate::rooms::rules(version).map_err(|e| damaged(e.to_string()))?;
    let json: CanonicalJsonObject =
        serde_json::from_str(&pdu.json).map_err(|e| damaged(e.to_string()))?;
    let redacted = ruma::canonical_json::redact(json, &rules.redaction, None)
        .map_err(|e| damaged(e.to_string()))?;
    serde_json::value::to_raw_value(&redacted).map_err(|e| damaged(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visibility(stream_pos: i64, value: &str) -> HistoryChange {
        HistoryChange::Visibility {
            stream_pos,
            visibility: Some(value.into()),
        }
    }

    fn member(stream_pos: i64, user: &str, membership: &str) -> HistoryChange {
        HistoryChange::Membership {
            stream_pos,
            user_id: user.into(),
            membership: Some(membership.into()),
        }
    }

    fn at(stream_pos: Option<i64>, json: &str) -> StoredPdu {
        StoredPdu {
            event_id: "$e".into(),
            room_id: "!r:x".into(),
            stream_pos,
            depth: 1,
            json: json.into(),
            rejection_reason: None,
        }
    }

    /// Which of the positions 1..=`upto` the view lets the server read.
    fn readable(view: &ServerView, upto: i64) -> Vec<i64> {
        (1..=upto)
            .filter(|p| view.may_see(&at(Some(*p), "{}")))
            .collect()
    }

    #[test]
    fn joined_history_is_read_from_the_join_until_the_leave() {
        let view = ServerView::from_changes(&[
            visibility(2, "joined"),
            member(5, "@a:s", "invite"),
            member(7, "@a:s", "join"),
            member(10, "@a:s", "leave"),
            member(13, "@a:s", "join"),
        ]);
        // Before the visibility event the default (shared) holds; the visibility event itself
        // is readable since the state before it allows it. The invite at 5 opens nothing under
        // `joined`; the join at 7 and the leave at 10 are the server's own memberships.
        assert_eq!(readable(&view, 15), [1, 2, 7, 8, 9, 10, 13, 14, 15]);
    }

    #[test]
    fn invited_history_is_read_from_the_invite_and_shared_or_world_readable_all_of_it() {
        let invited = ServerView::from_changes(&[
            visibility(1, "invited"),
            member(4, "@a:s", "invite"),
            member(6, "@a:s", "join"),
        ]);
        assert_eq!(readable(&invited, 7), [1, 4, 5, 6, 7]);
        for open in ["shared", "world_readable"] {
            let view = ServerView::from_changes(&[visibility(1, open), member(6, "@a:s", "join")]);
            assert_eq!(readable(&view, 7), [1, 2, 3, 4, 5, 6, 7], "{open}");
        }
    }

    #[test]
    fn a_visibility_change_is_read_under_the_more_open_of_before_and_after() {
        let view = ServerView::from_changes(&[
            visibility(1, "shared"),
            visibility(3, "joined"),
            visibility(5, "world_readable"),
            visibility(7, "custom.unknown"),
            member(9, "@a:s", "join"),
        ]);
        assert_eq!(readable(&view, 9), [1, 2, 3, 5, 6, 7, 9]);
    }

    #[test]
    fn any_user_of_the_server_joined_opens_joined_history() {
        let view = ServerView::from_changes(&[
            visibility(1, "joined"),
            member(2, "@a:s", "join"),
            member(4, "@b:s", "join"),
            member(5, "@a:s", "ban"),
            member(7, "@b:s", "leave"),
        ]);
        assert_eq!(readable(&view, 8), [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn events_out_of_the_timeline_are_read_only_when_they_are_state() {
        let view = ServerView::from_changes(&[visibility(1, "joined")]);
        assert!(view.may_see(&at(
            None,
            r#"{"type":"m.room.power_levels","state_key":""}"#
        )));
        assert!(!view.may_see(&at(None, r#"{"type":"m.room.message"}"#)));
        assert!(!view.may_see(&at(None, "not json")));
    }
}
