//! Room events as a client gets them. Every endpoint that serves room events (`/sync`,
//! `/messages`, `/event`, `/context`, `/state`, `/members`, relations, threads) goes through
//! [`ClientEvents`], which fills `unsigned`: `age`, the device's own `transaction_id`, for
//! state events `prev_content`/`prev_sender`/`replaces_state`, and for timeline events the
//! bundled aggregations of their relations (`m.relations`: `m.thread`, `m.replace`,
//! `m.reference`).
//!
//! All of it is worked out when the events are served, in one batched store query per kind
//! for the whole page, not at accept time into the stored event: the stored PDU stays as
//! signed (it is what other servers and the backup get), an event from another server or
//! from backfill is treated like a local one without each accepting path having to fill it
//! in, a redaction of the replaced state event or of an edit shows at once, and aggregations
//! depend on who asks (`current_user_participated`, the history they may see) anyway.

use std::collections::HashMap;

use hyphae_store::StoredPdu;
use ruma::RoomId;
use ruma::serde::Raw;
use serde_json::{Value, json};

use super::error::MatrixError;
use super::request::User;
use crate::node::AppState;
use crate::rooms::Pdu;

/// How one page of a room's events is served to a user's device.
pub(crate) struct ClientEvents<'a> {
    state: &'a AppState,
    user: &'a User,
    /// `/sync` leaves it out (the room is the key the events are under); the rest keep it.
    with_room_id: bool,
    /// The room, and the first stream position the user may read in it, for bundling the
    /// aggregations of relations; `None` serves events without them (state listings).
    relations: Option<(&'a RoomId, i64)>,
}

impl<'a> ClientEvents<'a> {
    /// Events without the aggregations of their relations: state as listed whole (`/state`,
    /// `/members`, `/sync`'s state section), and a left room's last timeline.
    pub(crate) fn without_relations(
        state: &'a AppState,
        user: &'a User,
        with_room_id: bool,
    ) -> ClientEvents<'a> {
        ClientEvents {
            state,
            user,
            with_room_id,
            relations: None,
        }
    }

    /// Timeline events of `room_id`, with the aggregations of the relations the user may see
    /// (from stream position `visible_from` on; see `history::history_start`).
    pub(crate) fn timeline(
        state: &'a AppState,
        user: &'a User,
        room_id: &'a RoomId,
        visible_from: i64,
        with_room_id: bool,
    ) -> ClientEvents<'a> {
        ClientEvents {
            state,
            user,
            with_room_id,
            relations: Some((room_id, visible_from)),
        }
    }

    pub(crate) async fn serve<T>(&self, pdus: &[Pdu]) -> Result<Vec<Raw<T>>, MatrixError> {
        Ok(self
            .serve_json(pdus)
            .await?
            .iter()
            .map(|event| Raw::from_json(serde_json::value::to_raw_value(event).unwrap_or_default()))
            .collect())
    }

    pub(crate) async fn serve_one<T>(&self, pdu: &Pdu) -> Result<Raw<T>, MatrixError> {
        let mut served = self.serve(std::slice::from_ref(pdu)).await?;
        served
            .pop()
            .ok_or_else(|| MatrixError::unknown("an event was not served"))
    }

    /// The room's current state.
    pub(crate) async fn serve_room_state<T>(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<Raw<T>>, MatrixError> {
        let room_state: Vec<Pdu> = self
            .state
            .rooms
            .state(room_id)
            .await?
            .into_values()
            .collect();
        self.serve(&room_state).await
    }

    /// Stored events, skipping (and logging) any the store holds damaged.
    pub(crate) async fn serve_stored<T>(
        &self,
        stored: &[StoredPdu],
    ) -> Result<Vec<Raw<T>>, MatrixError> {
        self.serve(&parsed(stored)).await
    }

    /// The events as JSON objects, in the order given.
    pub(crate) async fn serve_json(&self, pdus: &[Pdu]) -> Result<Vec<Value>, MatrixError> {
        let store = &self.state.store;
        let now = u64::from(ruma::MilliSecondsSinceUnixEpoch::now().0);
        let state_ids: Vec<String> = pdus
            .iter()
            .filter(|p| p.state_key.is_some())
            .map(|p| p.event_id.to_string())
            .collect();
        let replaced: HashMap<String, hyphae_store::ReplacedState> = if state_ids.is_empty() {
            HashMap::new()
        } else {
            store
                .replaced_states(state_ids)
                .await?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect()
        };
        let bundled = match self.relations {
            Some((room_id, visible_from)) if !pdus.is_empty() => {
                Bundled::read(self.state, self.user, room_id, visible_from, pdus).await?
            }
            _ => Bundled::default(),
        };
        // The device's transaction ids: of the events served and of those bundled with them.
        let own: Vec<String> = pdus
            .iter()
            .chain(bundled.pdus())
            .filter(|p| p.sender == self.user.user_id)
            .map(|p| p.event_id.to_string())
            .collect();
        let transactions: HashMap<String, String> = if own.is_empty() {
            HashMap::new()
        } else {
            store
                .transaction_ids(
                    self.user.localpart.clone(),
                    self.user.device_id.to_string(),
                    own,
                )
                .await?
                .into_iter()
                .collect()
        };
        let plain = |pdu: &Pdu| {
            let mut event = pdu.to_client_json(self.with_room_id);
            let age = now.saturating_sub(u64::from(pdu.origin_server_ts.0));
            event["unsigned"]["age"] = age.into();
            if let Some(txn) = transactions.get(pdu.event_id.as_str())
                && let Some(room_id) = pdu.room_id()
            {
                // Stored as "<endpoint>/<room>/<txn id>".
                let txn = ["send", "redact"]
                    .iter()
                    .find_map(|endpoint| txn.strip_prefix(&format!("{endpoint}/{room_id}/")))
                    .unwrap_or(txn);
                event["unsigned"]["transaction_id"] = txn.into();
            }
            event
        };
        Ok(pdus
            .iter()
            .map(|pdu| {
                let mut event = plain(pdu);
                if let Some(previous) = replaced.get(pdu.event_id.as_str()) {
                    let unsigned = &mut event["unsigned"];
                    unsigned["prev_content"] =
                        serde_json::from_str(&previous.content).unwrap_or_else(|_| json!({}));
                    unsigned["prev_sender"] = previous.sender.as_str().into();
                    unsigned["replaces_state"] = previous.replaced.as_str().into();
                }
                if let Some(relations) = bundled.relations_of(pdu, &self.user.user_id, &plain) {
                    event["unsigned"]["m.relations"] = relations;
                }
                event
            })
            .collect())
    }
}

/// The aggregations of a page's relations, with the events they bundle parsed.
#[derive(Default)]
struct Bundled {
    /// Thread root → (reply count, latest reply, whether the user replied).
    threads: HashMap<String, (i64, Pdu, bool)>,
    /// Original → the edit that counts.
    replacements: HashMap<String, Pdu>,
    /// Event → ids of the events referencing it.
    references: HashMap<String, Vec<String>>,
}

impl Bundled {
    async fn read(
        state: &AppState,
        user: &User,
        room_id: &RoomId,
        visible_from: i64,
        pdus: &[Pdu],
    ) -> Result<Bundled, MatrixError> {
        let aggregations = state
            .store
            .aggregations(
                room_id.to_string(),
                pdus.iter().map(|p| p.event_id.to_string()).collect(),
                user.user_id.to_string(),
                visible_from,
            )
            .await?;
        let mut bundled = Bundled::default();
        for (root, thread) in aggregations.threads {
            if let Some(latest) = parse(&thread.latest) {
                bundled
                    .threads
                    .insert(root, (thread.count, latest, thread.user_replied));
            }
        }
        for (original, edit) in aggregations.replacements {
            if let Some(edit) = parse(&edit) {
                bundled.replacements.insert(original, edit);
            }
        }
        for (target, referencing) in aggregations.references {
            bundled
                .references
                .entry(target)
                .or_default()
                .push(referencing);
        }
        Ok(bundled)
    }

    /// The events bundled in, to be served with the page.
    fn pdus(&self) -> impl Iterator<Item = &Pdu> {
        self.threads
            .values()
            .map(|(_, latest, _)| latest)
            .chain(self.replacements.values())
    }

    /// `unsigned["m.relations"]` of one event; `serve` turns a bundled event into its client
    /// form.
    fn relations_of(
        &self,
        pdu: &Pdu,
        user: &ruma::UserId,
        serve: &impl Fn(&Pdu) -> Value,
    ) -> Option<Value> {
        let id = pdu.event_id.as_str();
        let mut relations = serde_json::Map::new();
        if let Some((count, latest, replied)) = self.threads.get(id) {
            let mut latest_event = serve(latest);
            // The latest reply as edited, so a thread's summary shows its current text.
            if let Some(edit) = self.replacements.get(latest.event_id.as_str()) {
                latest_event["unsigned"]["m.relations"] = json!({"m.replace": serve(edit)});
            }
            relations.insert(
                "m.thread".into(),
                json!({
                    "latest_event": latest_event,
                    "count": count,
                    "current_user_participated": *replied || pdu.sender == user,
                }),
            );
        }
        if let Some(edit) = self.replacements.get(id) {
            relations.insert("m.replace".into(), serve(edit));
        }
        if let Some(referencing) = self.references.get(id) {
            let chunk: Vec<Value> = referencing
                .iter()
                .map(|id| json!({"event_id": id}))
                .collect();
            relations.insert("m.reference".into(), json!({"chunk": chunk}));
        }
        (!relations.is_empty()).then_some(Value::Object(relations))
    }
}

/// Stored events parsed, skipping (and logging) any the store holds damaged.
pub(crate) fn parsed(stored: &[StoredPdu]) -> Vec<Pdu> {
    stored.iter().filter_map(parse).collect()
}

fn parse(stored: &StoredPdu) -> Option<Pdu> {
    match Pdu::from_stored(stored) {
        Ok(pdu) => Some(pdu),
        Err(e) => {
            tracing::error!(error = %e, "skipping a damaged stored event");
            None
        }
    }
}
