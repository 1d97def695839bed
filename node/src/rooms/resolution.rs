//! State resolution v2 (v2.1 from room version 12) where branches of a room meet. A member of a
//! room can make its auth graph as deep and wide as it likes, so the work is bounded: the graph
//! is read from the store in one walk and refused past `PeerLimits::resolution_events`, and the
//! algorithm runs on a blocking thread (never on the async workers), without recursion, and is
//! abandoned past `PeerLimits::resolution_time`. A refused resolution refuses the event that
//! needed it, with the reason; the node stays up.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use ruma::room_version_rules::{
    AuthorizationRules, StateResolutionV2Rules, StateResolutionVersion,
};
use ruma::state_res::{self, StateMap};
use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId};

use super::{Pdu, RoomError, RoomState, Rooms, rules};

/// Resolutions computed at once on the whole node: each holds its graph in memory and a
/// blocking thread, so a peer forking many rooms at once queues instead of multiplying them.
pub(super) const RESOLUTIONS_AT_ONCE: usize = 2;

/// An event as state resolution reads it: shared, so the algorithm's many look-ups copy a
/// pointer, not the event.
type Events = HashMap<OwnedEventId, Arc<Pdu>>;

impl Rooms {
    /// Resolves `states` of `room_id` into one, or refuses with the reason when the auth graph
    /// behind them is larger, or its resolution longer, than the node's limits allow.
    pub(super) async fn resolve(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        states: Vec<RoomState>,
    ) -> Result<RoomState, RoomError> {
        let rules = rules(version)?;
        let StateResolutionVersion::V2(res_rules) = rules.state_res else {
            return Err(RoomError::UnsupportedVersion(version.to_string()));
        };
        let limits = &self.inner.limits.config;
        let (max_events, max_time) = (limits.resolution_events, limits.resolution_time);
        let maps: Vec<StateMap<OwnedEventId>> = states
            .iter()
            .map(|state| {
                state
                    .iter()
                    .map(|(key, pdu)| (key.clone(), pdu.event_id.clone()))
                    .collect()
            })
            .collect();
        // The states' own events, whole: the resolved state is made of them, mostly.
        let mut whole: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for state in states {
            for pdu in state.into_values() {
                whole.insert(pdu.event_id.clone(), pdu);
            }
        }
        let mut roots: Vec<String> = whole
            .values()
            .flat_map(|pdu| pdu.auth_events.iter())
            .filter(|id| !whole.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        roots.sort();
        roots.dedup();

        // Held until the computation ends, even if the event's handling gives up waiting.
        let permit = self
            .inner
            .resolutions
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RoomError::Internal("the node is stopping".into()))?;
        let limit = max_events.saturating_sub(whole.len());
        let too_large = || {
            RoomError::TooLarge(format!(
                "resolving the room's state here needs more than {max_events} events of its \
                 auth graph; refused"
            ))
        };
        let graph = self
            .inner
            .store
            .auth_graph(room_id.to_string(), roots, limit)
            .await?
            .ok_or_else(too_large)?;
        let started = Instant::now();
        let (resolved, mut whole) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut events: Events = whole
                .iter()
                .map(|(id, pdu)| (id.clone(), Arc::new(pdu.clone())))
                .collect();
            for stored in &graph {
                let mut pdu =
                    Pdu::from_stored(stored).map_err(|e| RoomError::Internal(e.to_string()))?;
                // The algorithm reads the fields, never the signed JSON: the graph need not
                // hold it twice.
                pdu.json.clear();
                events.entry(pdu.event_id.clone()).or_insert(Arc::new(pdu));
            }
            drop(graph);
            let deadline = started + max_time;
            let resolved =
                resolve_blocking(&rules.authorization, &res_rules, &maps, &events, deadline)?;
            Ok::<_, RoomError>((resolved, whole))
        })
        .await
        .map_err(|e| RoomError::Internal(format!("state resolution stopped: {e}")))??;
        tracing::debug!(%room_id, elapsed = ?started.elapsed(), "state resolved");

        // The few resolved events that are in no input state (an older power event that won)
        // are read whole.
        let others: Vec<String> = resolved
            .values()
            .filter(|id| !whole.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        for stored in self.inner.store.pdus(others).await? {
            let pdu = Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            whole.insert(pdu.event_id.clone(), pdu);
        }
        Ok(resolved
            .into_iter()
            .filter_map(|(key, id)| whole.get(&id).cloned().map(|pdu| (key, pdu)))
            .collect())
    }
}

/// The algorithm itself, on the calling (blocking) thread. Every event it reads goes through
/// one look-up that also watches the clock: past `deadline` the look-ups fail, the algorithm
/// ends at once, and the resolution is refused.
fn resolve_blocking(
    authorization: &AuthorizationRules,
    res_rules: &StateResolutionV2Rules,
    maps: &[StateMap<OwnedEventId>],
    events: &Events,
    deadline: Instant,
) -> Result<StateMap<OwnedEventId>, RoomError> {
    let too_long = || {
        RoomError::TooLarge(
            "resolving the room's state here takes longer than this node allows; refused".into(),
        )
    };
    let late = Cell::new(false);
    let fetch = |id: &EventId| {
        if late.get() || Instant::now() > deadline {
            late.set(true);
            return None;
        }
        events.get(id).cloned()
    };
    let auth_chains = maps
        .iter()
        .map(|map| auth_chain(map.values(), events).into_iter().collect())
        .collect();
    if Instant::now() > deadline {
        return Err(too_long());
    }
    let resolved = state_res::resolve(
        authorization,
        res_rules,
        maps.iter(),
        auth_chains,
        fetch,
        |conflicted| {
            Some(
                conflicted_subgraph(conflicted, events)
                    .into_iter()
                    .collect(),
            )
        },
    );
    if late.get() {
        return Err(too_long());
    }
    resolved.map_err(|e| RoomError::Internal(format!("state resolution: {e}")))
}

/// Every event reachable from `start` through one or more auth events.
fn auth_chain<'a>(
    start: impl Iterator<Item = &'a OwnedEventId>,
    events: &Events,
) -> HashSet<OwnedEventId> {
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut stack: Vec<&OwnedEventId> = start
        .filter_map(|id| events.get(id))
        .flat_map(|pdu| pdu.auth_events.iter())
        .collect();
    while let Some(id) = stack.pop() {
        if !seen.contains(id) {
            seen.insert(id.clone());
            if let Some(pdu) = events.get(id) {
                stack.extend(pdu.auth_events.iter());
            }
        }
    }
    seen
}

/// The events that are both descendants of one conflicted event and ancestors of another
/// through auth events (the conflicted events included), as room version 12 asks. Two walks,
/// no recursion: up from the conflicted events to their ancestors, then down from the
/// conflicted events among those ancestors; a chain thousands of events deep costs a loop,
/// not a stack.
fn conflicted_subgraph(
    conflicted: &StateMap<Vec<OwnedEventId>>,
    events: &Events,
) -> HashSet<OwnedEventId> {
    let starts: Vec<&OwnedEventId> = conflicted.values().flatten().collect();
    // Ancestors of conflicted events (and they themselves), each with the ancestors' edges
    // turned round: who names it as an auth event.
    let mut ancestors: HashSet<&OwnedEventId> = HashSet::new();
    let mut named_by: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
    let mut stack = starts.clone();
    while let Some(id) = stack.pop() {
        if !ancestors.insert(id) {
            continue;
        }
        if let Some(pdu) = events.get(id) {
            for auth in &pdu.auth_events {
                named_by.entry(auth).or_default().push(id);
                stack.push(auth);
            }
        }
    }
    // Of those, the ones a conflicted event is reachable from: the conflicted events' own
    // descendants among the ancestors.
    let mut subgraph: HashSet<OwnedEventId> = HashSet::new();
    let mut stack = starts;
    while let Some(id) = stack.pop() {
        if subgraph.insert(id.clone())
            && let Some(children) = named_by.get(id)
        {
            stack.extend(children.iter().copied());
        }
    }
    subgraph
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state event `id` whose auth events are `auth`.
    fn event(id: &str, auth: &[&str]) -> (OwnedEventId, Arc<Pdu>) {
        let id = EventId::parse(format!("${id}")).unwrap();
        let auth: Vec<String> = auth.iter().map(|a| format!("${a}")).collect();
        let json = serde_json::from_value(serde_json::json!({
            "room_id": "!room:example.org", "sender": "@a:example.org",
            "type": "m.room.power_levels", "state_key": "", "content": {},
            "origin_server_ts": 0, "depth": 1, "prev_events": [], "auth_events": auth,
        }))
        .unwrap();
        (
            id.clone(),
            Arc::new(Pdu::from_json(id, json, false).unwrap()),
        )
    }

    fn ids(set: &HashSet<OwnedEventId>) -> Vec<&str> {
        let mut ids: Vec<&str> = set.iter().map(|id| &id.as_str()[1..]).collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_conflicted_subgraph_is_what_lies_between_conflicted_events() {
        // create ← p1 ← p2 ← p3, and p2 ← side (not an ancestor of a conflicted event).
        let events: Events = [
            event("create", &[]),
            event("p1", &["create"]),
            event("p2", &["p1", "create"]),
            event("p3", &["p2"]),
            event("side", &["p2"]),
        ]
        .into_iter()
        .collect();
        let key = (ruma::events::StateEventType::RoomPowerLevels, String::new());
        let conflicted: StateMap<Vec<OwnedEventId>> = [(
            key,
            vec![
                EventId::parse("$p1").unwrap(),
                EventId::parse("$p3").unwrap(),
            ],
        )]
        .into_iter()
        .collect();
        assert_eq!(
            ids(&conflicted_subgraph(&conflicted, &events)),
            ["p1", "p2", "p3"]
        );
    }

    #[test]
    fn a_resolution_past_its_time_is_refused() {
        let events: Events = [
            event("create", &[]),
            event("p1", &["create"]),
            event("p2", &["p1"]),
        ]
        .into_iter()
        .collect();
        let key = (ruma::events::StateEventType::RoomPowerLevels, String::new());
        let maps: Vec<StateMap<OwnedEventId>> = ["$p1", "$p2"]
            .into_iter()
            .map(|id| [(key.clone(), EventId::parse(id).unwrap())].into())
            .collect();
        let rules = RoomVersionId::V11.rules().unwrap();
        let StateResolutionVersion::V2(res_rules) = rules.state_res else {
            panic!("v2");
        };
        let resolve =
            |deadline| resolve_blocking(&rules.authorization, &res_rules, &maps, &events, deadline);
        let soon = Instant::now() + std::time::Duration::from_secs(60);
        assert!(resolve(soon).is_ok());
        let past = Instant::now() - std::time::Duration::from_millis(1);
        match resolve(past) {
            Err(RoomError::TooLarge(reason)) => assert!(reason.contains("longer"), "{reason}"),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_chain_deeper_than_any_stack_is_walked() {
        // Deep enough that one frame per event would overflow a 2 MiB stack many times over.
        const DEPTH: usize = 50_000;
        let mut events: Events = Events::new();
        let (first, pdu) = event("e0", &[]);
        events.insert(first.clone(), pdu);
        for n in 1..DEPTH {
            let (id, pdu) = event(&format!("e{n}"), &[&format!("e{}", n - 1)]);
            events.insert(id, pdu);
        }
        let last = EventId::parse(format!("$e{}", DEPTH - 1)).unwrap();
        let key = (ruma::events::StateEventType::RoomPowerLevels, String::new());
        let conflicted: StateMap<Vec<OwnedEventId>> =
            [(key, vec![first, last])].into_iter().collect();
        assert_eq!(conflicted_subgraph(&conflicted, &events).len(), DEPTH);
        assert_eq!(
            auth_chain(
                std::iter::once(&EventId::parse(format!("$e{}", DEPTH - 1)).unwrap()),
                &events
            )
            .len(),
            DEPTH - 1
        );
    }
}
