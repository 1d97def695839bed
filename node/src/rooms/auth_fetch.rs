//! Auth events an incoming PDU names that this node lacks: asked of the server that relayed the
//! PDU, then of the sender's server and a few more of the room's servers, each given a few
//! seconds. Any member relays events (gossip), so a relaying member that stalls or refuses must
//! not be able to get an honest event rejected: a PDU whose auth events nobody could supply is
//! set aside, not rejected (the fault is this node's ignorance, not the event), and tried again
//! later; a later delivery of it is taken as if it were new.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::Method;
use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedServerName, ServerName};
use serde_json::value::RawValue;

use super::incoming::{
    EventResponse, check_auth, may_ask, parse_and_verify, urlencode, with_create,
};
use super::{Inner, Pdu, Received, RoomEntry, RoomError, Rooms};

/// Auth events fetched one by one for one incoming event (and as many for the state before
/// it), at most.
pub(super) const MAX_AUTH_FETCHES: usize = 200;
/// How long one server may take to answer for one event.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Servers asked for an event's auth events: the relaying one, the sender's, and others.
const MAX_SOURCES: usize = 4;
/// PDUs set aside at most; past this the oldest is dropped (a later delivery is still taken).
const MAX_SET_ASIDE: usize = 256;
/// PDUs of one sender's server set aside at most, so a member that sends events citing what
/// nobody has cannot push out everyone else's (its own oldest go first).
const MAX_SET_ASIDE_PER_SERVER: usize = 32;
/// Tries of a PDU set aside before it is dropped.
const MAX_TRIES: u32 = 8;
/// The first retry of a PDU set aside comes after this; each further one after twice as long.
const FIRST_RETRY: Duration = Duration::from_secs(30);
/// How often PDUs set aside are looked at.
const RETRY_TICK: Duration = Duration::from_secs(15);

/// Where the auth events of one incoming PDU are asked for, and how much may still be asked.
pub(super) struct AuthSources {
    /// The server that relayed the PDU: what its fetches cost is charged to it.
    origin: OwnedServerName,
    /// In the order they are asked.
    servers: Vec<OwnedServerName>,
    /// Servers that failed this PDU once (no answer in time, a refusal, a bad answer): not
    /// asked again for it, so a server that stalls costs one timeout, not one per auth event.
    failed: HashSet<OwnedServerName>,
    budget: usize,
}

impl AuthSources {
    /// Nobody to ask: what is not here is missing.
    pub(super) fn none(origin: &ServerName) -> AuthSources {
        AuthSources {
            origin: origin.to_owned(),
            servers: Vec::new(),
            failed: HashSet::new(),
            budget: 0,
        }
    }

    /// A fresh budget for another round of fetches (the state before the PDU).
    pub(super) fn refill(&mut self) {
        self.budget = MAX_AUTH_FETCHES;
    }
}

/// One auth event, as far as this node can tell.
pub(super) enum AuthEvent {
    Found(Box<Pdu>),
    /// Held here, rejected: an event citing it is rejected too.
    Rejected,
    /// Nobody supplied it (or what it needs in turn).
    Missing,
}

/// PDUs set aside for want of their auth events, oldest first.
#[derive(Default)]
pub(super) struct SetAside {
    waiting: Mutex<VecDeque<Waiting>>,
}

pub(super) struct Waiting {
    pub(super) event_id: OwnedEventId,
    room_id: OwnedRoomId,
    sender_server: OwnedServerName,
    /// The PDU as received.
    pdu: Box<RawValue>,
    tries: u32,
    due: Instant,
}

impl SetAside {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Rooms {
    /// The servers to ask for `pdu`'s auth events: `origin`, the sender's server, then others
    /// of the room (those this node is connected to first); only servers with members in the
    /// room (see `may_ask`), never this one.
    pub(super) async fn auth_sources(
        &self,
        entry: &RoomEntry,
        origin: &ServerName,
        pdu: &Pdu,
    ) -> AuthSources {
        let connected = self.inner.federation.connected_servers().await;
        let mut others: Vec<&String> = entry.servers.iter().collect();
        others.sort_by_key(|s| !connected.contains(*s));
        let mut servers: Vec<OwnedServerName> = Vec::new();
        let first = [origin, pdu.sender.server_name()];
        let others = others
            .into_iter()
            .filter_map(|s| <&ServerName>::try_from(s.as_str()).ok());
        for server in first.into_iter().chain(others) {
            if servers.len() >= MAX_SOURCES {
                break;
            }
            if may_ask(entry, server)
                && server != self.inner.server_name
                && !servers.iter().any(|s| s == server)
            {
                servers.push(server.to_owned());
            }
        }
        AuthSources {
            origin: origin.to_owned(),
            servers,
            failed: HashSet::new(),
            budget: MAX_AUTH_FETCHES,
        }
    }

    /// The PDU's auth events that can be had (with the room's create event), and the ids of
    /// those nobody supplied.
    pub(super) async fn auth_events_of(
        &self,
        entry: &RoomEntry,
        sources: &mut AuthSources,
        pdu: &Pdu,
    ) -> Result<(HashMap<OwnedEventId, Pdu>, Vec<OwnedEventId>), RoomError> {
        let mut events = with_create(&entry.state);
        let mut missing = Vec::new();
        for id in &pdu.auth_events {
            match self.auth_event(entry, sources, id).await? {
                AuthEvent::Found(event) => {
                    events.insert(id.clone(), *event);
                }
                AuthEvent::Rejected => {}
                AuthEvent::Missing => missing.push(id.clone()),
            }
        }
        Ok((events, missing))
    }

    /// One auth event: from the store, or fetched, verified, checked against its own auth
    /// events and kept as an outlier. One judged on only part of its auth events (some could
    /// not be had) is not kept at all: rejected, it would stay rejected when the rest came.
    pub(super) async fn auth_event(
        &self,
        entry: &RoomEntry,
        sources: &mut AuthSources,
        id: &EventId,
    ) -> Result<AuthEvent, RoomError> {
        if let Some(stored) = self.inner.store.pdu(id.to_string()).await? {
            let pdu = Pdu::from_stored(&stored).map_err(|e| RoomError::Internal(e.to_string()))?;
            return Ok(if pdu.rejected {
                AuthEvent::Rejected
            } else {
                AuthEvent::Found(Box::new(pdu))
            });
        }
        let Some(event) = self.fetch_event(entry, sources, id).await else {
            return Ok(AuthEvent::Missing);
        };
        let mut its_auth = with_create(&entry.state);
        let mut complete = true;
        for auth_id in &event.auth_events {
            match Box::pin(self.auth_event(entry, sources, auth_id)).await? {
                AuthEvent::Found(auth) => {
                    its_auth.insert(auth_id.clone(), *auth);
                }
                AuthEvent::Rejected => {}
                AuthEvent::Missing => complete = false,
            }
        }
        let verdict = check_auth(&entry.version, &event, &its_auth, None);
        if verdict.is_err() && !complete {
            return Ok(AuthEvent::Missing);
        }
        let origin = sources.origin.clone();
        if !self.keep_refused(entry, &origin) {
            return Ok(match verdict {
                Ok(()) => AuthEvent::Found(Box::new(event)),
                Err(_) => AuthEvent::Rejected,
            });
        }
        let mut accepted = self.accepted(&event, None, None, Vec::new())?;
        accepted.pdu.outlier = true;
        accepted.prev_may_be_missing = true;
        if let Err(reason) = &verdict {
            accepted.pdu.rejection_reason = Some(reason.clone());
        }
        self.inner.store.append_accepted(vec![accepted]).await?;
        Ok(match verdict {
            Ok(()) => AuthEvent::Found(Box::new(event)),
            Err(_) => AuthEvent::Rejected,
        })
    }

    /// The event `id` of the room, from the first source that gives it within
    /// `FETCH_TIMEOUT`, verified.
    async fn fetch_event(
        &self,
        entry: &RoomEntry,
        sources: &mut AuthSources,
        id: &EventId,
    ) -> Option<Pdu> {
        let path = format!("/_matrix/federation/v1/event/{}", urlencode(id.as_str()));
        for server in sources.servers.clone() {
            if sources.failed.contains(&server) {
                continue;
            }
            if sources.budget == 0 {
                return None;
            }
            sources.budget -= 1;
            let answer = tokio::time::timeout(
                FETCH_TIMEOUT,
                self.inner
                    .federation
                    .request::<EventResponse>(&server, Method::GET, &path, None),
            )
            .await;
            let event = match answer {
                Ok(Ok(response)) => response
                    .pdus
                    .first()
                    .and_then(|raw| parse_and_verify(&entry.version, raw).ok())
                    .filter(|event| {
                        event.event_id == id && event.room_id().as_ref() == Some(&entry.room_id)
                    }),
                Ok(Err(e)) => {
                    tracing::info!(%server, event_id = %id, error = %e, "could not fetch an auth event");
                    None
                }
                Err(_) => {
                    tracing::info!(%server, event_id = %id, "no answer in time for an auth event");
                    None
                }
            };
            match event {
                Some(event) => return Some(event),
                None => {
                    sources.failed.insert(server);
                }
            }
        }
        None
    }

    /// Keeps a PDU aside to be tried again later, instead of rejecting it for what this node
    /// could not fetch.
    pub(super) fn set_aside(&self, room_id: &OwnedRoomId, event_id: &EventId, pdu: Box<RawValue>) {
        let Some(sender_server) = sender_server(&pdu) else {
            return;
        };
        let mut waiting = self.inner.set_aside.lock();
        if waiting.iter().any(|w| w.event_id == event_id) {
            return;
        }
        let same_server = || waiting.iter().filter(|w| w.sender_server == sender_server);
        if same_server().count() >= MAX_SET_ASIDE_PER_SERVER {
            if let Some(oldest) = waiting
                .iter()
                .position(|w| w.sender_server == sender_server)
            {
                waiting.remove(oldest);
            }
        } else if waiting.len() >= MAX_SET_ASIDE {
            waiting.pop_front();
        }
        tracing::info!(%room_id, %event_id, "setting an event aside until its auth events can be had");
        waiting.push_back(Waiting {
            event_id: event_id.to_owned(),
            room_id: room_id.clone(),
            sender_server,
            pdu,
            tries: 0,
            due: Instant::now() + FIRST_RETRY,
        });
    }

    /// Tries the PDUs set aside again (those due, or all of them), as if their senders' servers
    /// had sent them; returns how many were accepted. One that is set aside again waits twice
    /// as long next time, and is dropped after `MAX_TRIES`.
    pub(crate) async fn retry_set_aside(&self, all: bool) -> usize {
        let now = Instant::now();
        let due: Vec<(OwnedEventId, OwnedRoomId, OwnedServerName, Box<RawValue>)> = self
            .inner
            .set_aside
            .lock()
            .iter()
            .filter(|w| all || w.due <= now)
            .map(|w| {
                let Waiting {
                    event_id,
                    room_id,
                    sender_server,
                    pdu,
                    ..
                } = w;
                (
                    event_id.clone(),
                    room_id.clone(),
                    sender_server.clone(),
                    pdu.clone(),
                )
            })
            .collect();
        let mut accepted = 0;
        for (event_id, room_id, sender_server, pdu) in due {
            let outcome = self.receive_pdu(&sender_server, &pdu).await;
            let again = match outcome {
                Ok((_, Received::SetAside(_))) | Err(RoomError::Unreachable(_)) => true,
                Ok((_, received)) => {
                    tracing::info!(%room_id, %event_id, ?received, "an event set aside was taken up again");
                    accepted += usize::from(received == Received::Accepted);
                    false
                }
                Err(e) => {
                    tracing::info!(%room_id, %event_id, error = %e, "an event set aside was refused");
                    false
                }
            };
            let mut waiting = self.inner.set_aside.lock();
            let Some(index) = waiting.iter().position(|w| w.event_id == event_id) else {
                continue;
            };
            let retried = &mut waiting[index];
            retried.tries += 1;
            if again && retried.tries < MAX_TRIES {
                retried.due = Instant::now() + FIRST_RETRY * 2u32.pow(retried.tries);
            } else {
                waiting.remove(index);
            }
        }
        accepted
    }

    /// Retries what is set aside every `RETRY_TICK`, for as long as the rooms are in use.
    pub(crate) fn spawn_retries(&self) {
        let rooms: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETRY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = rooms.upgrade() else {
                    return;
                };
                let rooms = Rooms { inner };
                if !rooms.inner.set_aside.lock().is_empty() {
                    rooms.retry_set_aside(false).await;
                }
            }
        });
    }
}

/// The server of a PDU's sender, read off the raw PDU.
fn sender_server(pdu: &RawValue) -> Option<OwnedServerName> {
    #[derive(serde::Deserialize)]
    struct Sender {
        sender: ruma::OwnedUserId,
    }
    let sender: Sender = serde_json::from_str(pdu.get()).ok()?;
    Some(sender.sender.server_name().to_owned())
}
