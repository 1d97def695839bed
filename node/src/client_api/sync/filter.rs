//! Filters: what a client's filter keeps of `/sync` (which rooms, which events of each section
//! by type, sender and URL, the timeline's length, lazy-loaded members) and of a `/messages`
//! page; and the stored filters of `/user/{userId}/filter`.
//!
//! Left out, as most clients never send them: `event_fields` and `event_format: federation`
//! (events always come in the client format, whole).

use axum::extract::State;
use ruma::api::client::filter::{
    FilterDefinition, LazyLoadOptions, RoomEventFilter, UrlFilter, create_filter, get_filter,
};
use ruma::api::client::sync::sync_events::v3::Filter;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UInt};
use serde_json::Value;

use crate::client_api::Ruma;
use crate::client_api::error::{ApiResult, MatrixError};
use crate::client_api::request::{Req, User};
use crate::node::AppState;
use crate::rooms::Pdu;

/// Timeline events per room when the filter says nothing.
const DEFAULT_TIMELINE_LIMIT: u32 = 20;
/// The longest timeline a sync gives per room, whatever the filter asks.
const MAX_TIMELINE_LIMIT: u32 = 500;

/// A sync filter, read once per request.
#[derive(Debug, Clone)]
pub(crate) struct SyncFilter {
    pub(crate) timeline_limit: u32,
    /// `room.rooms` and `room.not_rooms`: which rooms a sync speaks of at all.
    rooms: Option<Vec<OwnedRoomId>>,
    not_rooms: Vec<OwnedRoomId>,
    /// Rooms the user left are given on a first sync too.
    pub(crate) include_leave: bool,
    pub(crate) timeline: EventMatch,
    pub(crate) state: EventMatch,
    pub(crate) ephemeral: EventMatch,
    pub(crate) room_account_data: EventMatch,
    pub(crate) account_data: EventMatch,
    pub(crate) presence: EventMatch,
    /// Members only of the timeline's senders (and the user's own) in a room's `state`.
    pub(crate) lazy_load_members: bool,
}

impl Default for SyncFilter {
    fn default() -> SyncFilter {
        SyncFilter::from_definition(&FilterDefinition::default())
    }
}

impl SyncFilter {
    /// The filter a `/sync` names: inline, stored under an id, or none.
    pub(crate) async fn load(
        state: &AppState,
        user: &User,
        filter: Option<&Filter>,
    ) -> Result<SyncFilter, MatrixError> {
        let definition = match filter {
            Some(Filter::FilterDefinition(definition)) => definition.clone(),
            Some(Filter::FilterId(id)) => stored(state, user, id).await?,
            _ => return Ok(SyncFilter::default()),
        };
        Ok(SyncFilter::from_definition(&definition))
    }

    pub(crate) fn from_definition(definition: &FilterDefinition) -> SyncFilter {
        let room = &definition.room;
        SyncFilter {
            timeline_limit: room
                .timeline
                .limit
                .map_or(DEFAULT_TIMELINE_LIMIT, clamp_limit)
                .clamp(1, MAX_TIMELINE_LIMIT),
            rooms: room.rooms.clone(),
            not_rooms: room.not_rooms.clone(),
            include_leave: room.include_leave,
            timeline: EventMatch::of_room_events(&room.timeline),
            state: EventMatch::of_room_events(&room.state),
            ephemeral: EventMatch::of_room_events(&room.ephemeral),
            room_account_data: EventMatch::of_room_events(&room.account_data),
            account_data: EventMatch::of_events(&definition.account_data),
            presence: EventMatch::of_events(&definition.presence),
            lazy_load_members: !room.state.lazy_load_options.is_disabled()
                || !room.timeline.lazy_load_options.is_disabled(),
        }
    }

    /// Whether the sync speaks of `room` at all.
    pub(crate) fn wants_room(&self, room: &RoomId) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
            && !self.not_rooms.iter().any(|r| r == room)
    }
}

fn clamp_limit(limit: UInt) -> u32 {
    u32::try_from(u64::from(limit)).unwrap_or(u32::MAX)
}

async fn stored(state: &AppState, user: &User, id: &str) -> Result<FilterDefinition, MatrixError> {
    let stored = match id.parse::<i64>() {
        Ok(id) => state.store.filter(user.localpart.clone(), id).await?,
        Err(_) => None,
    };
    let stored = stored.ok_or_else(|| MatrixError::not_found("Unknown filter"))?;
    serde_json::from_str(&stored).map_err(|e| MatrixError::unknown(format!("stored filter: {e}")))
}

/// Which events of one section a filter keeps: by type (`*` matches any run of characters),
/// sender, room and whether the content has a `url`.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventMatch {
    types: Option<Vec<String>>,
    not_types: Vec<String>,
    senders: Option<Vec<OwnedUserId>>,
    not_senders: Vec<OwnedUserId>,
    rooms: Option<Vec<OwnedRoomId>>,
    not_rooms: Vec<OwnedRoomId>,
    with_url: Option<bool>,
}

impl EventMatch {
    pub(crate) fn of_room_events(filter: &RoomEventFilter) -> EventMatch {
        EventMatch {
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            senders: filter.senders.clone(),
            not_senders: filter.not_senders.clone(),
            rooms: filter.rooms.clone(),
            not_rooms: filter.not_rooms.clone(),
            with_url: filter
                .url_filter
                .as_ref()
                .map(|url| *url == UrlFilter::EventsWithUrl),
        }
    }

    fn of_events(filter: &ruma::api::client::filter::Filter) -> EventMatch {
        EventMatch {
            types: filter.types.clone(),
            not_types: filter.not_types.clone(),
            senders: filter.senders.clone(),
            not_senders: filter.not_senders.clone(),
            ..EventMatch::default()
        }
    }

    /// Whether an event of type `kind` from `sender` in `room` with `content` is kept.
    pub(crate) fn allows(
        &self,
        kind: &str,
        sender: Option<&str>,
        room: Option<&RoomId>,
        content: Option<&Value>,
    ) -> bool {
        if self.not_types.iter().any(|t| type_matches(t, kind))
            || self
                .types
                .as_ref()
                .is_some_and(|types| !types.iter().any(|t| type_matches(t, kind)))
        {
            return false;
        }
        if let Some(sender) = sender
            && (self.not_senders.iter().any(|s| s == sender)
                || self
                    .senders
                    .as_ref()
                    .is_some_and(|senders| !senders.iter().any(|s| s == sender)))
        {
            return false;
        }
        if let Some(room) = room
            && (self.not_rooms.iter().any(|r| r == room)
                || self
                    .rooms
                    .as_ref()
                    .is_some_and(|rooms| !rooms.iter().any(|r| r == room)))
        {
            return false;
        }
        match self.with_url {
            Some(wanted) => content.is_some_and(|c| c.get("url").is_some()) == wanted,
            None => true,
        }
    }

    pub(crate) fn allows_pdu(&self, pdu: &Pdu) -> bool {
        if self.with_url.is_some() {
            let content: Option<Value> = serde_json::from_str(pdu.content.get()).ok();
            return self.allows(
                &pdu.kind.to_string(),
                Some(pdu.sender.as_str()),
                pdu.room_id().as_deref(),
                content.as_ref(),
            );
        }
        self.allows(
            &pdu.kind.to_string(),
            Some(pdu.sender.as_str()),
            pdu.room_id().as_deref(),
            None,
        )
    }

    /// For events without a sender or room (account data, ephemeral events).
    pub(crate) fn allows_type(&self, kind: &str) -> bool {
        self.allows(kind, None, None, None)
    }
}

/// A filter's event type: `*` matches any run of characters.
fn type_matches(pattern: &str, kind: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == kind;
    };
    let Some(mut left) = kind.strip_prefix(first) else {
        return false;
    };
    let mut pieces: Vec<&str> = rest.split('*').collect();
    let last = pieces.pop().unwrap_or_default();
    for piece in pieces {
        match left.find(piece) {
            Some(at) => left = &left[at + piece.len()..],
            None => return false,
        }
    }
    left.len() >= last.len() && left.ends_with(last)
}

pub(crate) async fn create_filter(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden(
            "You can only make filters for yourself",
        ));
    }
    let filter =
        serde_json::to_string(&request.filter).map_err(|e| MatrixError::bad_json(e.to_string()))?;
    let id = state.store.save_filter(user.localpart, filter).await?;
    Ok(Ruma(create_filter::v3::Response::new(id.to_string())))
}

pub(crate) async fn get_filter(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_filter::v3::Request>,
) -> ApiResult<get_filter::v3::Response> {
    if request.user_id != user.user_id {
        return Err(MatrixError::forbidden("You can only read your own filters"));
    }
    let filter = stored(&state, &user, &request.filter_id).await?;
    Ok(Ruma(get_filter::v3::Response::new(filter)))
}

/// Whether a `/messages` filter asks for the members of a page's senders.
pub(crate) fn lazy_loads(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(json: Value) -> SyncFilter {
        SyncFilter::from_definition(&serde_json::from_value(json).unwrap())
    }

    #[test]
    fn types_match_with_wildcards() {
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(type_matches("m.room.*", "m.room.member"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.member", "m.room.member"));
        assert!(type_matches("*.member", "m.room.member"));
        assert!(!type_matches("m.room.*", "m.call.invite"));
        assert!(!type_matches("m.room", "m.room.member"));
        assert!(!type_matches("*.name", "m.room.member"));
        assert!(!type_matches("a*a", "a"));
    }

    #[test]
    fn a_filter_keeps_what_it_names() {
        let f = filter(json!({
            "room": {
                "not_rooms": ["!no:x"],
                "timeline": {
                    "limit": 100000,
                    "types": ["m.room.*"],
                    "not_types": ["m.room.member"],
                    "not_senders": ["@spam:x"],
                    "contains_url": true,
                },
                "state": {"lazy_load_members": true},
            },
            "account_data": {"not_types": ["m.push_rules"]},
        }));
        assert_eq!(f.timeline_limit, MAX_TIMELINE_LIMIT);
        assert!(f.lazy_load_members);
        assert!(!f.wants_room(<&RoomId>::try_from("!no:x").unwrap()));
        assert!(f.wants_room(<&RoomId>::try_from("!yes:x").unwrap()));
        let url = json!({"url": "mxc://x/y"});
        let t = &f.timeline;
        assert!(t.allows("m.room.message", Some("@a:x"), None, Some(&url)));
        assert!(!t.allows("m.room.message", Some("@a:x"), None, Some(&json!({}))));
        assert!(!t.allows("m.room.member", Some("@a:x"), None, Some(&url)));
        assert!(!t.allows("m.reaction", Some("@a:x"), None, Some(&url)));
        assert!(!t.allows("m.room.message", Some("@spam:x"), None, Some(&url)));
        assert!(!f.account_data.allows_type("m.push_rules"));
        assert!(f.account_data.allows_type("m.direct"));
        assert_eq!(SyncFilter::default().timeline_limit, DEFAULT_TIMELINE_LIMIT);
        assert!(!SyncFilter::default().lazy_load_members);
    }
}
