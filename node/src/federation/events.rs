//! The read-only endpoints a server uses to catch up on a room: one event (`event`), the state
//! before an event (`state_ids`, `state`), history (`backfill`), the gap between what it has and
//! what it was sent (`get_missing_events`), and an event's auth chain (`event_auth`). Only servers
//! with a user joined to the room get answers, and only the history their users could read
//! (see `visibility.rs`); PDUs go out as stored, signed and hashed, or redacted where the server
//! may not read them.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use hyphae_store::StoredPdu;
use ruma::api::error::{DeserializationError, FromHttpRequestError};
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::backfill::get_backfill;
use ruma::api::federation::event::{
    get_event, get_missing_events, get_room_state, get_room_state_ids,
};
use ruma::api::{IncomingRequest, IncomingRequestExt};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    ServerName, UInt,
};
use serde_json::value::RawValue;

use super::Origin;
use super::visibility::ServerView;
use crate::client_api::{MatrixError, Ruma};
use crate::node::AppState;

/// Most PDUs one `backfill` or `get_missing_events` answer holds, whatever the asker's limit.
const MAX_LIMIT: usize = 100;

/// A ruma federation request parsed from the HTTP request. Malformed path or query parameters
/// (ids above all) are `M_INVALID_PARAM`, a body that is not the request's JSON `M_BAD_JSON`.
/// The transport caps the body's size.
pub(crate) struct Incoming<T>(pub(crate) T);

impl<T: IncomingRequest, S: Send + Sync> FromRequest<S> for Incoming<T> {
    type Rejection = MatrixError;

    async fn from_request(request: Request, state: &S) -> Result<Self, MatrixError> {
        let (mut parts, body) = request.into_parts();
        // The path parameters' values (none for some routes), decoded, in order.
        let Path(path_args) = Path::<Vec<String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| MatrixError::invalid_param(e.body_text()))?;
        let path_args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| MatrixError::bad_json(format!("Could not read the request body: {e}")))?;
        T::try_from_http_request(
            axum::http::Request::from_parts(parts, &body[..]),
            &path_args,
        )
        .map(Incoming)
        .map_err(|e| match e {
            FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
                MatrixError::bad_json(e.to_string())
            }
            e => MatrixError::invalid_param(e.to_string()),
        })
    }
}

/// A room some server may ask about, and what that server may read of it.
struct Room {
    id: OwnedRoomId,
    version: RoomVersionId,
    view: ServerView,
    /// From room version 12 the create event is named by the room id instead of in
    /// `auth_events`; it still belongs in every auth chain (as Synapse counts it), since whoever
    /// checks the chain needs it.
    implicit_create: bool,
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub(crate) async fn event(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_event::v1::Request>,
) -> Result<Ruma<get_event::v1::Response>, MatrixError> {
    let pdu = accepted(&state, &request.event_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such event"))?;
    let room_id = RoomId::parse(&pdu.room_id).map_err(|e| {
        tracing::error!(event_id = %pdu.event_id, error = %e, "stored event with a bad room id");
        MatrixError::unknown("A stored event is damaged")
    })?;
    let room = room(&state, &origin, &room_id).await?;
    let pdu = room
        .view
        .serve(&room.version, vec![pdu])?
        .pop()
        .ok_or_else(|| MatrixError::unknown("The event vanished"))?;
    Ok(Ruma(get_event::v1::Response::new(
        state.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    )))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=…`: the state before the event.
pub(crate) async fn state_ids(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_room_state_ids::v1::Request>,
) -> Result<Ruma<get_room_state_ids::v1::Response>, MatrixError> {
    let room = room(&state, &origin, &request.room_id).await?;
    let (pdus, auth_chain) = state_before(&state, &room, &request.event_id).await?;
    Ok(Ruma(get_room_state_ids::v1::Response::new(
        event_ids(&auth_chain)?,
        event_ids(&pdus)?,
    )))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=…`: the same as `state_ids`, as PDUs.
pub(crate) async fn state(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_room_state::v1::Request>,
) -> Result<Ruma<get_room_state::v1::Response>, MatrixError> {
    let room = room(&state, &origin, &request.room_id).await?;
    let (pdus, auth_chain) = state_before(&state, &room, &request.event_id).await?;
    Ok(Ruma(get_room_state::v1::Response::new(
        raws(auth_chain)?,
        raws(pdus)?,
    )))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…`: the given events and those
/// before them, newest first.
pub(crate) async fn backfill(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_backfill::v1::Request>,
) -> Result<Ruma<get_backfill::v1::Response>, MatrixError> {
    let room = room(&state, &origin, &request.room_id).await?;
    let pdus = state
        .store
        .backfill(
            room.id.to_string(),
            request.v.iter().map(ToString::to_string).collect(),
            capped(request.limit),
        )
        .await?;
    Ok(Ruma(get_backfill::v1::Response::new(
        state.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        room.view.serve(&room.version, pdus)?,
    )))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: the events between what the
/// asker has (`earliest_events`) and what it was sent (`latest_events`), oldest first.
pub(crate) async fn missing_events(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_missing_events::v1::Request>,
) -> Result<Ruma<get_missing_events::v1::Response>, MatrixError> {
    let room = room(&state, &origin, &request.room_id).await?;
    let ids = |ids: &[OwnedEventId]| ids.iter().map(ToString::to_string).collect();
    let pdus = state
        .store
        .missing_events(
            room.id.to_string(),
            ids(&request.earliest_events),
            ids(&request.latest_events),
            capped(request.limit),
            i64::try_from(u64::from(request.min_depth)).unwrap_or(i64::MAX),
        )
        .await?;
    Ok(Ruma(get_missing_events::v1::Response::new(
        room.view.serve(&room.version, pdus)?,
    )))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`: the event's full auth chain.
pub(crate) async fn event_auth(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Incoming(request): Incoming<get_event_authorization::v1::Request>,
) -> Result<Ruma<get_event_authorization::v1::Response>, MatrixError> {
    let room = room(&state, &origin, &request.room_id).await?;
    let event = event_in_room(&state, &room, &request.event_id).await?;
    room.view.require_visible(&event)?;
    let auth_chain = auth_chain(&state, &room, vec![event.event_id]).await?;
    Ok(Ruma(get_event_authorization::v1::Response::new(raws(
        auth_chain,
    )?)))
}

/// The room, if it is known here and a user of `origin` is joined to it now, with what
/// `origin` may read of it. Everything these endpoints serve is room history: a server that
/// left, was banned (even without ever joining), declined an invite or was only invited gets
/// none of it.
async fn room(
    state: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
) -> Result<Room, MatrixError> {
    let version = state.rooms.version(room_id).await?;
    let view = ServerView::of(state, origin, room_id).await?;
    let implicit_create = crate::rooms::rules(&version)
        .is_ok_and(|rules| rules.authorization.room_create_event_id_as_room_id);
    Ok(Room {
        id: room_id.to_owned(),
        version,
        view,
        implicit_create,
    })
}

/// The event if it is stored and was not rejected (outliers included).
async fn accepted(state: &AppState, event_id: &EventId) -> Result<Option<StoredPdu>, MatrixError> {
    Ok(state
        .store
        .pdu(event_id.to_string())
        .await?
        .filter(|pdu| pdu.rejection_reason.is_none()))
}

async fn event_in_room(
    state: &AppState,
    room: &Room,
    event_id: &EventId,
) -> Result<StoredPdu, MatrixError> {
    accepted(state, event_id)
        .await?
        .filter(|pdu| pdu.room_id == room.id.as_str())
        .ok_or_else(|| MatrixError::not_found("No such event in this room"))
}

/// The room's state before the event, and that state's auth chain, for a server that may read
/// the event.
async fn state_before(
    state: &AppState,
    room: &Room,
    event_id: &EventId,
) -> Result<(Vec<StoredPdu>, Vec<StoredPdu>), MatrixError> {
    let event = event_in_room(state, room, event_id).await?;
    room.view.require_visible(&event)?;
    // An outlier has no place in the room's timeline here, so no state is known at it.
    let Some(position) = event.stream_pos else {
        return Err(MatrixError::not_found(
            "The state at this event is not known here",
        ));
    };
    let pdus = state
        .store
        .state_before(room.id.to_string(), position)
        .await?;
    let ids = pdus.iter().map(|pdu| pdu.event_id.clone()).collect();
    let auth_chain = auth_chain(state, room, ids).await?;
    Ok((pdus, auth_chain))
}

/// The auth chain of `event_ids`, with the room's create event where the room version leaves it
/// out of `auth_events`.
async fn auth_chain(
    state: &AppState,
    room: &Room,
    event_ids: Vec<String>,
) -> Result<Vec<StoredPdu>, MatrixError> {
    let create_id = format!("${}", room.id.as_str().trim_start_matches('!'));
    let needs_create = room.implicit_create && event_ids.iter().any(|id| *id != create_id);
    let mut chain = state
        .store
        .auth_chain(room.id.to_string(), event_ids)
        .await?;
    if needs_create && !chain.iter().any(|pdu| pdu.event_id == create_id) {
        let create = state
            .store
            .pdu(create_id)
            .await?
            .filter(|pdu| pdu.room_id == room.id.as_str() && pdu.rejection_reason.is_none());
        // The chain is oldest first, and nothing in a room is older than its create event.
        chain.splice(0..0, create);
    }
    Ok(chain)
}

fn capped(limit: UInt) -> usize {
    usize::try_from(u64::from(limit)).map_or(MAX_LIMIT, |limit| limit.min(MAX_LIMIT))
}

/// The PDU as stored: the federation format, signatures and hashes included.
pub(super) fn raw(pdu: StoredPdu) -> Result<Box<RawValue>, MatrixError> {
    let StoredPdu { event_id, json, .. } = pdu;
    RawValue::from_string(json).map_err(|e| {
        tracing::error!(%event_id, error = %e, "stored PDU is not JSON");
        MatrixError::unknown("A stored event is damaged")
    })
}

fn raws(pdus: Vec<StoredPdu>) -> Result<Vec<Box<RawValue>>, MatrixError> {
    pdus.into_iter().map(raw).collect()
}

fn event_ids(pdus: &[StoredPdu]) -> Result<Vec<OwnedEventId>, MatrixError> {
    pdus.iter()
        .map(|pdu| {
            EventId::parse(&pdu.event_id).map_err(|e| {
                tracing::error!(event_id = %pdu.event_id, error = %e, "stored event id is bad");
                MatrixError::unknown("A stored event is damaged")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use reqwest::Method;
    use serde_json::{Value, json};

    use crate::client_api::test_support::Api;

    /// Node B with a room of a few messages, node A connected to it.
    struct History {
        a: Api,
        b: Api,
        token: String,
        room_id: String,
        /// The messages' event ids, oldest first.
        messages: Vec<String>,
    }

    impl History {
        async fn new() -> History {
            let b = Api::start_federated().await;
            let a = Api::start_federated().await;
            a.connect(&b).await;
            let (_, token, _) = b.register("alice", "password").await;
            let room_id = create_room(&b, &token).await;
            let mut messages = Vec::new();
            for i in 0..5 {
                let (status, body) = b
                    .put(
                        &format!("/v3/rooms/{room_id}/send/m.room.message/txn{i}"),
                        Some(&token),
                        json!({"msgtype": "m.text", "body": format!("message {i}")}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                messages.push(body["event_id"].as_str().unwrap().to_owned());
            }
            History {
                a,
                b,
                token,
                room_id,
                messages,
            }
        }

        /// Makes A's server take part in `room_id` on B as a user of it with `membership`
        /// would (cross-server joins are not what is tested here).
        async fn a_takes_part(&self, room_id: &str, membership: &str) {
            let row = [
                room_id.to_owned(),
                format!("@x:{}", self.a.node.server_name()),
                membership.to_owned(),
            ];
            self.b
                .node
                .store()
                .write(move |conn| {
                    conn.execute(
                        "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
                         VALUES (?1, ?2, ?3, '$test', 0)
                         ON CONFLICT (room_id, user_id)
                         DO UPDATE SET membership = excluded.membership",
                        row,
                    )?;
                    Ok(())
                })
                .await
                .unwrap();
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            self.a.federation(&self.b, Method::GET, path, None).await
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            self.a
                .federation(&self.b, Method::POST, path, Some(body))
                .await
        }

        /// The room's state on B as the Client-Server API shows it: (type, state key) → id.
        async fn client_state(&self) -> HashMap<(String, String), String> {
            let (status, body) = self
                .b
                .get(
                    &format!("/v3/rooms/{}/state", self.room_id),
                    Some(&self.token),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body.as_array()
                .unwrap()
                .iter()
                .map(|event| {
                    let key = (
                        event["type"].as_str().unwrap().to_owned(),
                        event["state_key"].as_str().unwrap().to_owned(),
                    );
                    (key, event["event_id"].as_str().unwrap().to_owned())
                })
                .collect()
        }
    }

    async fn create_room(api: &Api, token: &str) -> String {
        api.create_room(token, json!({"name": "history"})).await
    }

    /// Ids as a client puts them in a URL.
    fn enc(id: &str) -> String {
        crate::rooms::urlencode(id)
    }

    fn bodies(pdus: &Value) -> Vec<&str> {
        pdus.as_array()
            .unwrap()
            .iter()
            .filter_map(|pdu| pdu["content"]["body"].as_str())
            .collect()
    }

    fn ids(ids: &Value) -> BTreeSet<&str> {
        ids.as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_server_in_the_room_catches_up_on_it() {
        let h = History::new().await;
        h.a_takes_part(&h.room_id, "join").await;
        let room = enc(&h.room_id);
        let latest = &h.messages[4];

        // One event, as signed.
        let (status, body) = h
            .get(&format!("/_matrix/federation/v1/event/{}", enc(latest)))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["origin"], h.b.node.server_name());
        assert!(body["origin_server_ts"].is_u64());
        let pdu = &body["pdus"][0];
        assert_eq!(pdu["content"]["body"], "message 4");
        assert!(
            pdu["signatures"][h.b.node.server_name()].is_object(),
            "{pdu}"
        );
        assert!(pdu["hashes"]["sha256"].is_string(), "{pdu}");
        assert!(
            pdu.get("event_id").is_none(),
            "room versions ≥ 3 carry no event_id: {pdu}"
        );

        // The state before the latest message is the room's state (no state came after it).
        let state = h.client_state().await;
        let create = &state[&("m.room.create".into(), String::new())];
        let power = &state[&("m.room.power_levels".into(), String::new())];
        let alice = state
            .iter()
            .find(|((kind, _), _)| kind == "m.room.member")
            .map(|(_, id)| id)
            .unwrap();
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/state_ids/{room}?event_id={}",
                enc(latest)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let pdu_ids = ids(&body["pdu_ids"]);
        assert_eq!(pdu_ids, state.values().map(String::as_str).collect());
        let chain_ids = ids(&body["auth_chain_ids"]);
        for id in [create, power, alice] {
            assert!(chain_ids.contains(id.as_str()), "{id} in {chain_ids:?}");
        }

        // The same as PDUs.
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/state/{room}?event_id={}",
                enc(latest)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["pdus"].as_array().unwrap().len(), pdu_ids.len());
        assert_eq!(
            body["auth_chain"].as_array().unwrap().len(),
            chain_ids.len()
        );
        assert!(
            body["pdus"]
                .as_array()
                .unwrap()
                .iter()
                .all(|pdu| pdu["signatures"].is_object())
        );

        // The state before Alice's join holds the create event but not the join itself.
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/state_ids/{room}?event_id={}",
                enc(alice)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let before_join = ids(&body["pdu_ids"]);
        assert!(before_join.contains(create.as_str()) && !before_join.contains(alice.as_str()));

        // Backfill: newest first, as many as asked, down to the create event.
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/backfill/{room}?v={}&limit=3",
                enc(latest)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["origin"], h.b.node.server_name());
        assert_eq!(
            bodies(&body["pdus"]),
            ["message 4", "message 3", "message 2"]
        );
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/backfill/{room}?v={}&v={}&limit=1000",
                enc(&h.messages[2]),
                enc(latest)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let pdus = body["pdus"].as_array().unwrap();
        assert_eq!(
            bodies(&body["pdus"]),
            [
                "message 4",
                "message 3",
                "message 2",
                "message 1",
                "message 0"
            ]
        );
        assert_eq!(pdus.len(), 5 + state.len(), "the whole room");
        assert_eq!(pdus.last().unwrap()["type"], "m.room.create");

        // The gap between message 1 and message 4, oldest first.
        let path = format!("/_matrix/federation/v1/get_missing_events/{room}");
        let (status, body) = h
            .post(
                &path,
                json!({"earliest_events": [h.messages[1]], "latest_events": [latest]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(bodies(&body["events"]), ["message 2", "message 3"]);
        let (_, event) = h
            .get(&format!(
                "/_matrix/federation/v1/event/{}",
                enc(&h.messages[3])
            ))
            .await;
        let (status, body) = h
            .post(
                &path,
                json!({"earliest_events": [], "latest_events": [latest],
                       "min_depth": event["pdus"][0]["depth"], "limit": 10}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(bodies(&body["events"]), ["message 3"]);

        // The auth chain of a message: the create event first (named by the room id from
        // room version 12), the sender's join and the power levels; not the message.
        let (status, body) = h
            .get(&format!(
                "/_matrix/federation/v1/event_auth/{room}/{}",
                enc(latest)
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let chain = body["auth_chain"].as_array().unwrap();
        assert_eq!(chain[0]["type"], "m.room.create");
        let kinds: BTreeSet<&str> = chain.iter().filter_map(|p| p["type"].as_str()).collect();
        assert!(kinds.contains("m.room.member") && kinds.contains("m.room.power_levels"));
        assert!(!kinds.contains("m.room.message"), "{kinds:?}");
    }

    #[tokio::test]
    async fn servers_with_no_user_joined_are_refused_and_unknown_events_not_found() {
        let h = History::new().await;
        let room = enc(&h.room_id);
        let latest = enc(&h.messages[4]);
        let reads = crate::federation::history_tests::history_reads(&h.room_id, &h.messages[4]);
        let refused = async |h: &History| {
            for (method, path, body) in &reads {
                let (status, answer) =
                    h.a.federation(&h.b, method.clone(), path, body.clone())
                        .await;
                assert_eq!(
                    (status, &answer["errcode"]),
                    (403, &json!("M_FORBIDDEN")),
                    "{path}"
                );
            }
        };
        refused(&h).await;
        // An invite is an offer, not a part in the room; a server that left or was banned
        // (whether or not it ever joined) takes part no more.
        for membership in ["invite", "leave", "ban"] {
            h.a_takes_part(&h.room_id, membership).await;
            refused(&h).await;
        }
        h.a_takes_part(&h.room_id, "join").await;
        for (method, path, body) in &reads {
            let (status, answer) =
                h.a.federation(&h.b, method.clone(), path, body.clone())
                    .await;
            assert_eq!(status, 200, "{path}: {answer}");
        }

        let errcode = async |path: &str| {
            let (status, body) = h.get(path).await;
            (
                status,
                body["errcode"].as_str().unwrap_or_default().to_owned(),
            )
        };
        let not_found = (404, "M_NOT_FOUND".to_owned());
        let unknown = enc("$unknownunknownunknownunknownunknownunknown");
        assert_eq!(
            errcode(&format!("/_matrix/federation/v1/event/{unknown}")).await,
            not_found
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/event_auth/{room}/{unknown}"
            ))
            .await,
            not_found
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/state_ids/{room}?event_id={unknown}"
            ))
            .await,
            not_found
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={latest}",
                enc("!unknownunknownunknownunknownunknownunknown")
            ))
            .await,
            not_found
        );
        let invalid = (400, "M_INVALID_PARAM".to_owned());
        assert_eq!(
            errcode("/_matrix/federation/v1/event/not-an-event-id").await,
            invalid
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/state_ids/{room}?event_id=nonsense"
            ))
            .await,
            invalid
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/backfill/{room}?v={latest}"
            ))
            .await,
            invalid,
            "backfill needs a limit"
        );
        let (status, body) = h
            .post(
                &format!("/_matrix/federation/v1/get_missing_events/{room}"),
                json!({"latest_events": "not a list"}),
            )
            .await;
        assert_eq!((status, &body["errcode"]), (400, &json!("M_BAD_JSON")));

        // A rejected event is kept but never served.
        let rejected = "$rejectedrejectedrejectedrejectedrejectedrej";
        h.b.node
            .store()
            .append_pdus(vec![hyphae_store::NewPdu {
                event_id: rejected.into(),
                room_id: h.room_id.clone(),
                depth: 100,
                sender: format!("@x:{}", h.a.node.server_name()),
                event_type: "m.room.message".into(),
                state_key: None,
                origin_server_ts: 0,
                json: "{}".into(),
                prev_events: vec![h.messages[4].clone()],
                auth_events: vec![],
                rejection_reason: Some("not allowed".into()),
                outlier: false,
            }])
            .await
            .unwrap();
        assert_eq!(
            errcode(&format!("/_matrix/federation/v1/event/{}", enc(rejected))).await,
            not_found
        );

        // Taking part in one room opens no other: B's second room stays closed to A, and its
        // events are not found through the first room.
        let other = create_room(&h.b, &h.token).await;
        let other_create = format!("${}", other.trim_start_matches('!'));
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/event/{}",
                enc(&other_create)
            ))
            .await,
            (403, "M_FORBIDDEN".to_owned())
        );
        assert_eq!(
            errcode(&format!(
                "/_matrix/federation/v1/event_auth/{room}/{}",
                enc(&other_create)
            ))
            .await,
            not_found
        );
    }
}
