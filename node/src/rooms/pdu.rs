//! The PDU as the node handles it: the signed canonical JSON, plus the fields the auth rules
//! and clients need, parsed once.

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue;

#[derive(Debug, Clone)]
pub(crate) struct Pdu {
    pub(crate) event_id: OwnedEventId,
    /// Absent only in a v12 create event, whose id is the room's.
    pub(crate) room_id: Option<OwnedRoomId>,
    pub(crate) sender: OwnedUserId,
    pub(crate) origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub(crate) kind: TimelineEventType,
    pub(crate) content: Box<RawValue>,
    pub(crate) state_key: Option<String>,
    pub(crate) prev_events: Vec<OwnedEventId>,
    pub(crate) auth_events: Vec<OwnedEventId>,
    pub(crate) redacts: Option<OwnedEventId>,
    pub(crate) depth: UInt,
    pub(crate) rejected: bool,
    /// The whole PDU, as signed.
    pub(crate) json: CanonicalJsonObject,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed PDU: {0}")]
pub(crate) struct MalformedPdu(pub(crate) String);

impl Pdu {
    pub(crate) fn from_json(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        rejected: bool,
    ) -> Result<Pdu, MalformedPdu> {
        let field = |name: &str| json.get(name);
        let string = |name: &str| -> Result<&str, MalformedPdu> {
            match field(name) {
                Some(CanonicalJsonValue::String(s)) => Ok(s),
                _ => Err(MalformedPdu(format!("{name} is missing or not a string"))),
            }
        };
        let ids = |name: &str| -> Result<Vec<OwnedEventId>, MalformedPdu> {
            match field(name) {
                Some(CanonicalJsonValue::Array(values)) => values
                    .iter()
                    .map(|v| match v {
                        CanonicalJsonValue::String(s) => {
                            EventId::parse(s).map_err(|e| MalformedPdu(format!("{name}: {e}")))
                        }
                        _ => Err(MalformedPdu(format!("{name} holds a non-string"))),
                    })
                    .collect(),
                None => Ok(Vec::new()),
                _ => Err(MalformedPdu(format!("{name} is not an array"))),
            }
        };
        let integer = |name: &str| -> Result<i64, MalformedPdu> {
            match field(name) {
                Some(CanonicalJsonValue::Integer(i)) => Ok(i64::from(*i)),
                _ => Err(MalformedPdu(format!("{name} is missing or not an integer"))),
            }
        };
        let room_id = match field("room_id") {
            Some(CanonicalJsonValue::String(s)) => {
                Some(RoomId::parse(s).map_err(|e| MalformedPdu(format!("room_id: {e}")))?)
            }
            None => None,
            _ => return Err(MalformedPdu("room_id is not a string".into())),
        };
        let content = match field("content") {
            Some(value @ CanonicalJsonValue::Object(_)) => {
                serde_json::value::to_raw_value(value)
                    .map_err(|e| MalformedPdu(format!("content: {e}")))?
            }
            _ => return Err(MalformedPdu("content is missing or not an object".into())),
        };
        let state_key = match field("state_key") {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            None => None,
            _ => return Err(MalformedPdu("state_key is not a string".into())),
        };
        let redacts = match field("redacts") {
            Some(CanonicalJsonValue::String(s)) => {
                Some(EventId::parse(s).map_err(|e| MalformedPdu(format!("redacts: {e}")))?)
            }
            _ => None,
        };
        let ts = integer("origin_server_ts")?;
        let depth = integer("depth")?;
        Ok(Pdu {
            room_id,
            sender: UserId::parse(string("sender")?)
                .map_err(|e| MalformedPdu(format!("sender: {e}")))?,
            origin_server_ts: MilliSecondsSinceUnixEpoch(
                UInt::try_from(ts.max(0)).unwrap_or_default(),
            ),
            kind: TimelineEventType::from(string("type")?),
            content,
            state_key,
            prev_events: ids("prev_events")?,
            auth_events: ids("auth_events")?,
            redacts,
            depth: UInt::try_from(depth.max(0)).unwrap_or_default(),
            rejected,
            event_id,
            json,
        })
    }

    /// The PDU as the store takes it, accepted into `room_id`'s timeline.
    pub(crate) fn to_new_pdu(&self, room_id: &str) -> Result<hyphae_store::NewPdu, MalformedPdu> {
        Ok(hyphae_store::NewPdu {
            event_id: self.event_id.to_string(),
            room_id: room_id.to_owned(),
            depth: i64::try_from(u64::from(self.depth)).unwrap_or(i64::MAX),
            sender: self.sender.to_string(),
            event_type: self.kind.to_string(),
            state_key: self.state_key.clone(),
            origin_server_ts: i64::try_from(u64::from(self.origin_server_ts.0)).unwrap_or(0),
            json: serde_json::to_string(&self.json).map_err(|e| MalformedPdu(e.to_string()))?,
            prev_events: self.prev_events.iter().map(ToString::to_string).collect(),
            auth_events: self.auth_events.iter().map(ToString::to_string).collect(),
            rejection_reason: None,
            outlier: false,
        })
    }

    /// Parses a stored PDU (stored JSON is the node's own, so failure means a damaged store).
    pub(crate) fn from_stored(stored: &hyphae_store::StoredPdu) -> Result<Pdu, MalformedPdu> {
        let json: CanonicalJsonObject = serde_json::from_str(&stored.json)
            .map_err(|e| MalformedPdu(format!("stored PDU {}: {e}", stored.event_id)))?;
        let event_id = EventId::parse(&stored.event_id)
            .map_err(|e| MalformedPdu(format!("stored event id: {e}")))?;
        Pdu::from_json(event_id, json, stored.rejection_reason.is_some())
    }

    /// The event as clients see it in `/sync` (no `room_id`) or elsewhere (with it), before
    /// `client_api::events` adds what the server tells of it in `unsigned`.
    pub(crate) fn to_client_json(&self, with_room_id: bool) -> serde_json::Value {
        let mut event = serde_json::Map::new();
        event.insert("event_id".into(), self.event_id.as_str().into());
        event.insert("type".into(), self.kind.to_string().into());
        event.insert("sender".into(), self.sender.as_str().into());
        event.insert(
            "origin_server_ts".into(),
            u64::from(self.origin_server_ts.0).into(),
        );
        event.insert(
            "content".into(),
            serde_json::from_str(self.content.get()).unwrap_or_default(),
        );
        if let Some(state_key) = &self.state_key {
            event.insert("state_key".into(), state_key.as_str().into());
        }
        if let Some(redacts) = &self.redacts {
            event.insert("redacts".into(), redacts.as_str().into());
        }
        if with_room_id && let Some(room_id) = self.room_id() {
            event.insert("room_id".into(), room_id.as_str().into());
        }
        if let Some(CanonicalJsonValue::Object(unsigned)) = self.json.get("unsigned")
            && let Ok(unsigned) = serde_json::to_value(unsigned)
        {
            event.insert("unsigned".into(), unsigned);
        }
        serde_json::Value::Object(event)
    }

    /// The room, including for a v12 create event (whose id is the room id's hash).
    pub(crate) fn room_id(&self) -> Option<OwnedRoomId> {
        self.room_id.clone().or_else(|| {
            (self.kind == TimelineEventType::RoomCreate)
                .then(|| RoomId::parse(format!("!{}", &self.event_id.as_str()[1..])).ok())
                .flatten()
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
