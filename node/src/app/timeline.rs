//! The owner's view of a room's messages: timeline items decrypted where the keys are here,
//! marked undecryptable (and shown again once a key arrives) where they are not, with how far
//! the owner's own messages got.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId};
use serde::Serialize;
use serde_json::{Value, json};

use super::{AppClient, AppError, AppEvent};

/// How far a message of the owner got: stored on this node, and sent to `sent_to` of the `of`
/// other servers in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub stored: bool,
    pub sent_to: usize,
    pub of: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ItemKind {
    Text {
        body: String,
    },
    /// Something that happened in the room (a join, a name change), in words.
    Notice {
        text: String,
    },
    /// Encrypted, and the key is not here (yet).
    Undecryptable {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineItem {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub sender: String,
    pub sender_name: Option<String>,
    /// Milliseconds since the Unix epoch, as the sender's server stamped it.
    pub ts: u64,
    #[serde(flatten)]
    pub kind: ItemKind,
    /// The message travelled end-to-end encrypted.
    pub encrypted: bool,
    /// Sent by the owner (from any of their devices).
    pub own: bool,
    /// For the owner's messages: how far they got.
    pub delivery: Option<Delivery>,
    /// When one of the owner's policy lists bans the sender at level blur or warn: the UI shows
    /// the item collapsed with the reason, or flagged. (Hidden ones are not items at all.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Verdict>,
}

impl AppClient {
    /// The room's latest `limit` items, oldest first.
    pub async fn timeline(
        &self,
        room_id: &RoomId,
        limit: u32,
    ) -> Result<Vec<TimelineItem>, AppError> {
        let page: Value = self
            .inner
            .cs
            .get(&format!(
                "/v3/rooms/{}/messages?dir=b&limit={}",
                crate::rooms::urlencode(room_id.as_str()),
                limit.clamp(1, 1000)
            ))
            .await?;
        let names = self.display_names(room_id).await;
        let mut items = Vec::new();
        for event in page["chunk"].as_array().into_iter().flatten().rev() {
            if let Some(item) = self.item(room_id, event, &names).await {
                items.push(item);
            }
        }
        let own: Vec<OwnedEventId> = items
            .iter()
            .filter(|i| i.own)
            .map(|i| i.event_id.clone())
            .collect();
        let deliveries = self.deliveries(room_id, &own).await?;
        for item in &mut items {
            item.delivery = deliveries.get(&item.event_id).copied();
        }
        Ok(items)
    }

    /// Sends a text message: encrypted when the room is.
    pub async fn send_text(&self, room_id: &RoomId, text: &str) -> Result<OwnedEventId, AppError> {
        if text.trim().is_empty() {
            return Err(AppError::BadInput("An empty message is not sent".into()));
        }
        let content = json!({"msgtype": "m.text", "body": text});
        let room = crate::rooms::urlencode(room_id.as_str());
        let (event_type, content) = match self.encryption(room_id).await? {
            Some(rotation) => {
                // A room restored from the backup: its room key goes to the members a server of
                // theirs says it has now, not to those the backup last saw.
                let confirmed = self.inner.state.rooms.confirm_restored(room_id).await;
                if !confirmed.map_err(|e| AppError::Internal(e.to_string()))? {
                    return Err(AppError::Unconfirmed(format!(
                        "{room_id} came back from the backup and none of its members' servers \
                         could be reached to bring it up to date; nothing was sent"
                    )));
                }
                let members = self.members_to_encrypt_for(room_id).await?;
                let encrypted = self
                    .inner
                    .crypto
                    .encrypt_room_event(
                        &self.inner.cs,
                        room_id,
                        &members,
                        rotation,
                        "m.room.message",
                        content,
                    )
                    .await
                    .map_err(|e| AppError::Crypto(e.to_string()))?;
                ("m.room.encrypted", encrypted)
            }
            None => ("m.room.message", content),
        };
        let txn = new_txn_id();
        let sent: Value = self
            .inner
            .cs
            .put(
                &format!("/v3/rooms/{room}/send/{event_type}/{txn}"),
                &content,
            )
            .await?;
        let event_id = sent["event_id"]
            .as_str()
            .and_then(|id| ruma::EventId::parse(id).ok())
            .ok_or_else(|| AppError::BadInput("send answered without an event id".into()))?;
        let delivery = self
            .deliveries(room_id, std::slice::from_ref(&event_id))
            .await?
            .remove(&event_id);
        if let Some(delivery) = delivery {
            if delivery.sent_to < delivery.of {
                self.inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(event_id.clone(), (room_id.to_owned(), delivery));
                self.watch_deliveries();
            }
            self.emit(AppEvent::Delivery {
                room_id: room_id.to_owned(),
                event_id: event_id.clone(),
                delivery,
            });
        }
        Ok(event_id)
    }

    /// One timeline event as an item, decrypted if it can be; `None` for events not shown.
    pub(super) async fn item(
        &self,
        room_id: &RoomId,
        event: &Value,
        names: &HashMap<String, String>,
    ) -> Option<TimelineItem> {
        let event_id = ruma::EventId::parse(event["event_id"].as_str()?).ok()?;
        let sender = event["sender"].as_str()?.to_owned();
        // Hidden by the owner's lists: left out of every view (and undecrypted), kept in the
        // store, so it shows again once the owner unsubscribes.
        let policy = self.verdict_on(&sender, None);
        if policy.as_ref().is_some_and(|v| v.level.hides()) {
            return None;
        }
        // A state event of someone the node bans (their invite of someone, a name they gave
        // the room) is part of the room's state, but not something to show.
        if event.get("state_key").is_some() && self.node_bans(&sender) {
            return None;
        }
        let name_of = |user: &str| names.get(user).cloned().unwrap_or_else(|| user.to_owned());
        let (kind, encrypted) = match event["type"].as_str()? {
            "m.room.message" => (
                ItemKind::Text {
                    body: event["content"]["body"].as_str()?.to_owned(),
                },
                false,
            ),
            "m.room.encrypted" => {
                match self.inner.crypto.decrypt_room_event(room_id, event).await {
                    Ok(decrypted) if decrypted.event_type == "m.room.message" => (
                        ItemKind::Text {
                            body: decrypted.content["body"].as_str()?.to_owned(),
                        },
                        true,
                    ),
                    Ok(_) => return None,
                    Err(e) => {
                        if let Some(session_id) = event["content"]["session_id"].as_str() {
                            let first_time = {
                                let mut waiting = self
                                    .inner
                                    .undecrypted
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner());
                                let events = waiting
                                    .entry((room_id.to_owned(), session_id.to_owned()))
                                    .or_default();
                                let first_time = events.is_empty();
                                events.insert(event_id.clone());
                                first_time
                            };
                            // The owner's other devices may hold the key (sent before this
                            // device existed): ask them, once per session.
                            if first_time
                                && let Some(sender_key) = event["content"]["sender_key"].as_str()
                                && let Err(e) = self
                                    .inner
                                    .crypto
                                    .request_room_key(
                                        &self.inner.cs,
                                        room_id,
                                        session_id,
                                        sender_key,
                                    )
                                    .await
                            {
                                tracing::debug!(error = %e, "could not ask for a room key");
                            }
                        }
                        (
                            ItemKind::Undecryptable {
                                reason: e.to_string(),
                            },
                            true,
                        )
                    }
                }
            }
            "m.room.member" => {
                let target = event["state_key"].as_str()?;
                let text = match event["content"]["membership"].as_str()? {
                    "join" => format!("{} joined", name_of(target)),
                    "invite" => format!("{} invited {}", name_of(&sender), name_of(target)),
                    "leave" if target == sender => format!("{} left", name_of(target)),
                    "leave" => format!("{} removed {}", name_of(&sender), name_of(target)),
                    "ban" => format!("{} banned {}", name_of(&sender), name_of(target)),
                    _ => return None,
                };
                (ItemKind::Notice { text }, false)
            }
            "m.room.name" => (
                ItemKind::Notice {
                    text: format!(
                        "{} named the room {}",
                        name_of(&sender),
                        event["content"]["name"].as_str().unwrap_or_default()
                    ),
                },
                false,
            ),
            "m.room.encryption" => (
                ItemKind::Notice {
                    text: "Messages here are end-to-end encrypted".into(),
                },
                false,
            ),
            _ => return None,
        };
        Some(TimelineItem {
            room_id: room_id.to_owned(),
            event_id,
            own: sender == self.inner.user_id.as_str(),
            sender_name: names.get(&sender).cloned(),
            sender,
            ts: event["origin_server_ts"].as_u64().unwrap_or_default(),
            kind,
            encrypted,
            delivery: None,
            policy,
        })
    }

    /// Shows again, decrypted, the events that were waiting for these room keys.
    pub(super) async fn keys_arrived(&self, keys: &[(OwnedRoomId, String)]) {
        for key in keys {
            let waiting = self
                .inner
                .undecrypted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
            let Some(waiting) = waiting else {
                continue;
            };
            let (room_id, _) = key;
            let names = self.display_names(room_id).await;
            for event_id in waiting {
                let path = format!(
                    "/v3/rooms/{}/event/{}",
                    crate::rooms::urlencode(room_id.as_str()),
                    crate::rooms::urlencode(event_id.as_str())
                );
                let Ok(event) = self.inner.cs.get::<Value>(&path).await else {
                    continue;
                };
                if let Some(item) = self.item(room_id, &event, &names).await {
                    self.emit(AppEvent::Timeline { item });
                }
            }
        }
    }

    /// For the owner's events: stored here, and how many of the room's other servers have
    /// taken them (what is still in the outbox has not been taken).
    async fn deliveries(
        &self,
        room_id: &RoomId,
        event_ids: &[OwnedEventId],
    ) -> Result<HashMap<OwnedEventId, Delivery>, AppError> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let of = self
            .inner
            .state
            .rooms
            .servers_in_room(room_id)
            .await
            .map(|servers| servers.len().saturating_sub(1))
            .unwrap_or(0);
        let pending = self
            .inner
            .state
            .store
            .outbox_pending(event_ids.iter().map(ToString::to_string).collect())
            .await?;
        Ok(event_ids
            .iter()
            .map(|id| {
                let waiting = pending.get(id.as_str()).copied().unwrap_or(0);
                let delivery = Delivery {
                    stored: true,
                    sent_to: of.saturating_sub(waiting),
                    of,
                };
                (id.clone(), delivery)
            })
            .collect())
    }

    /// Follows the owner's messages still on their way, telling the UI as servers take them.
    fn watch_deliveries(&self) {
        use std::sync::atomic::Ordering;
        // One watcher at a time: it runs while anything is in flight.
        if self.inner.delivery_watcher.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let client = AppClient { inner };
                let in_flight: Vec<(OwnedEventId, OwnedRoomId, Delivery)> = client
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(id, (room, delivery))| (id.clone(), room.clone(), *delivery))
                    .collect();
                if in_flight.is_empty() {
                    client
                        .inner
                        .delivery_watcher
                        .store(false, Ordering::Release);
                    // A message sent just now may have found the flag still set.
                    let more = !client
                        .inner
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty();
                    if more && !client.inner.delivery_watcher.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    return;
                }
                // One look per room at all of its messages in flight.
                let mut by_room: HashMap<OwnedRoomId, Vec<OwnedEventId>> = HashMap::new();
                for (event_id, room_id, _) in &in_flight {
                    by_room
                        .entry(room_id.clone())
                        .or_default()
                        .push(event_id.clone());
                }
                let mut now = HashMap::new();
                for (room_id, event_ids) in &by_room {
                    if let Ok(deliveries) = client.deliveries(room_id, event_ids).await {
                        now.extend(deliveries);
                    }
                }
                for (event_id, room_id, before) in in_flight {
                    let Some(delivery) = now.remove(&event_id) else {
                        continue;
                    };
                    {
                        let mut in_flight = client
                            .inner
                            .in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if delivery.sent_to >= delivery.of {
                            in_flight.remove(&event_id);
                        } else {
                            in_flight.insert(event_id.clone(), (room_id.clone(), delivery));
                        }
                    }
                    if delivery != before {
                        client.emit(AppEvent::Delivery {
                            room_id,
                            event_id,
                            delivery,
                        });
                    }
                }
            }
        });
    }
}

fn new_txn_id() -> String {
    let mut bytes = [0u8; 12];
    // A clash would only make the API return the earlier event.
    let _ = getrandom::fill(&mut bytes);
    format!("app{}", hex::encode(bytes))
}
