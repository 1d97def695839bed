//! Policy rooms' state read as rules: compiling a list from the room's current state in the
//! store, listing its rules for people, and the node's own membership of the rooms it
//! subscribes to (through its service account).

use hyphae_store::StoredPdu;
use ruma::{OwnedRoomId, UserId};
use serde::Deserialize;

use super::index::{CompiledList, ListBuilder, PolicyKind, RuleError, parse_rule};
use super::{PolicyError, PolicyRule, SERVICE_LOCALPART};
use crate::node::AppState;

#[derive(Deserialize)]
struct StateEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    #[serde(default)]
    content: serde_json::Value,
}

/// Compiles the rules among a room's current state events (as the store holds them).
pub(crate) fn compile(room_id: OwnedRoomId, state: &[StoredPdu]) -> CompiledList {
    let mut builder = ListBuilder::new(room_id);
    for stored in state {
        if stored.rejection_reason.is_some() {
            continue;
        }
        let Ok(event) = serde_json::from_str::<StateEvent>(&stored.json) else {
            continue;
        };
        let Some(kind) = PolicyKind::of_event_type(&event.kind) else {
            continue;
        };
        match parse_rule(&event.content) {
            Ok(Some((entity, reason))) => {
                // A refused rule is logged by the builder; the rest of the list goes on.
                let _ = builder.add(kind, &entity, &reason);
            }
            Ok(None) => {}
            Err(why) => {
                let entity = event.content["entity"]
                    .as_str()
                    .unwrap_or(&event.state_key)
                    .to_owned();
                builder.refuse(kind, &entity, &why);
            }
        }
    }
    builder.finish()
}

/// The ban rules among state events in the Client-Server format (`type`, `state_key`,
/// `content`), as a list's owner or subscriber reads them; rules that are not bans or have
/// no entity are left out.
pub(crate) fn rules_of_state(events: &[serde_json::Value]) -> Vec<PolicyRule> {
    let mut rules: Vec<PolicyRule> = events
        .iter()
        .filter_map(|event| {
            let kind = PolicyKind::of_event_type(event["type"].as_str()?)?;
            let (entity, reason) = parse_rule(&event["content"]).ok()??;
            Some(PolicyRule {
                kind,
                entity,
                reason,
                state_key: event["state_key"].as_str()?.to_owned(),
            })
        })
        .collect();
    rules.sort_by(|a, b| (a.kind as u8, &a.entity).cmp(&(b.kind as u8, &b.entity)));
    rules
}

/// Checks a rule before it is written, so a list's owner hears at once what subscribers would
/// refuse.
pub(crate) fn check_new_rule(kind: PolicyKind, entity: &str) -> Result<(), RuleError> {
    let room_id: OwnedRoomId = "!check:policy.invalid"
        .try_into()
        .map_err(|_| RuleError::NoEntity)?;
    ListBuilder::new(room_id).add(kind, entity, "")
}

/// Makes the node's service account (created when first needed, with no password: nobody logs
/// in as it) a member of a list's room, named by id or alias (a room id needs `via`, servers
/// in the room, unless the node is in it already); returns the room's id.
pub(crate) async fn join_as_service(
    state: &AppState,
    room: &str,
    via: &[ruma::OwnedServerName],
) -> Result<OwnedRoomId, PolicyError> {
    if state
        .store
        .account(SERVICE_LOCALPART.to_owned())
        .await?
        .is_none()
    {
        match state
            .store
            .create_account(SERVICE_LOCALPART.to_owned(), None)
            .await
        {
            Ok(_) | Err(hyphae_store::StoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let user_id = service_user(state)?;
    crate::client_api::join_room(state, &user_id, room, via)
        .await
        .map_err(|e| PolicyError::Room(format!("cannot join the list {room}: {e}")))
}

/// The node's service account.
pub(crate) fn service_user(state: &AppState) -> Result<ruma::OwnedUserId, PolicyError> {
    UserId::parse(format!("@{SERVICE_LOCALPART}:{}", state.server_name))
        .map_err(|e| PolicyError::Room(format!("service account id: {e}")))
}
