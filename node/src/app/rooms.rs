//! The owner's rooms, invites and people: what the app lists, the membership actions it takes,
//! the peers nearby, and what each /sync brings.

use std::collections::HashMap;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Serialize;
use serde_json::{Value, json};

use super::crypto::Rotation;
use super::{AppClient, AppError, AppEvent};
use crate::rooms::urlencode;

#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    pub room_id: OwnedRoomId,
    /// The room's name, or for a DM the other person's.
    pub name: String,
    pub is_direct: bool,
    pub encrypted: bool,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Invite {
    pub room_id: OwnedRoomId,
    pub inviter: Option<String>,
    pub name: Option<String>,
    pub is_direct: bool,
    pub encrypted: bool,
    /// When one of the owner's policy lists bans the inviter, their server or the room at
    /// level blur or warn. (Invites it hides are not listed at all.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Verdict>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: String,
    pub display_name: Option<String>,
    pub membership: String,
}

/// Another device on the network, and who owns it when it says.
#[derive(Debug, Clone, Serialize)]
pub struct NearbyPeer {
    pub server_name: String,
    pub peer_id: String,
    pub user_id: Option<String>,
    pub display_name: Option<String>,
    pub connected: bool,
}

impl AppClient {
    /// The rooms the owner is in.
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>, AppError> {
        let joined: Value = self.inner.cs.get("/v3/joined_rooms").await?;
        let direct = self.direct_rooms().await;
        let mut rooms = Vec::new();
        for room_id in joined["joined_rooms"].as_array().into_iter().flatten() {
            let Some(room_id) = room_id.as_str().and_then(|r| RoomId::parse(r).ok()) else {
                continue;
            };
            let state: Value = self
                .inner
                .cs
                .get(&format!("/v3/rooms/{}/state", urlencode(room_id.as_str())))
                .await?;
            let members = members_of(&state);
            let mut name = state_content(&state, "m.room.name")
                .and_then(|c| c["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let is_direct = direct.contains(&room_id);
            if name.is_empty() {
                // Named after the others in it, as clients do.
                name = members
                    .iter()
                    .filter(|m| m.user_id != self.inner.user_id.as_str() && m.membership == "join")
                    .map(|m| m.display_name.clone().unwrap_or_else(|| m.user_id.clone()))
                    .collect::<Vec<_>>()
                    .join(", ");
            }
            rooms.push(RoomSummary {
                encrypted: state_content(&state, "m.room.encryption").is_some(),
                room_id,
                name,
                is_direct,
                members,
            });
        }
        Ok(rooms)
    }

    /// Invites waiting for the owner's answer.
    pub async fn invites(&self) -> Result<Vec<Invite>, AppError> {
        // A sync from the start lists the pending invites with what the inviter showed.
        let synced: Value = self
            .inner
            .cs
            .get("/v3/sync?timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D")
            .await?;
        Ok(synced["rooms"]["invite"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(room_id, room)| self.invite_of(room_id, room))
            .collect())
    }

    fn invite_of(&self, room_id: &str, room: &Value) -> Option<Invite> {
        let room_id = RoomId::parse(room_id).ok()?;
        let events = room["invite_state"]["events"].as_array()?;
        let find = |kind: &str| events.iter().find(|e| e["type"] == kind);
        let own_invite = events.iter().find(|e| {
            e["type"] == "m.room.member" && e["state_key"] == self.inner.user_id.as_str()
        });
        let inviter = own_invite.and_then(|e| e["sender"].as_str().map(str::to_owned));
        let policy = match &inviter {
            Some(inviter) => self.verdict_on(inviter, Some(&room_id)),
            None => None,
        };
        if policy.as_ref().is_some_and(|v| v.level.hides())
            || inviter.as_deref().is_some_and(|i| self.node_bans(i))
        {
            return None;
        }
        Some(Invite {
            policy,
            room_id,
            inviter,
            name: find("m.room.name")
                .and_then(|e| e["content"]["name"].as_str().map(str::to_owned)),
            is_direct: own_invite.is_some_and(|e| e["content"]["is_direct"] == true),
            encrypted: find("m.room.encryption").is_some(),
        })
    }

    /// Who is in the room (joined and invited), with their names.
    pub async fn members(&self, room_id: &RoomId) -> Result<Vec<Member>, AppError> {
        let state: Value = self
            .inner
            .cs
            .get(&format!("/v3/rooms/{}/state", urlencode(room_id.as_str())))
            .await?;
        Ok(members_of(&state))
    }

    /// A direct chat with one person, encrypted; an existing one is reused.
    pub async fn create_dm(&self, with: &UserId) -> Result<OwnedRoomId, AppError> {
        if with == self.inner.user_id {
            return Err(AppError::BadInput(
                "A chat with yourself is not a DM".into(),
            ));
        }
        let direct = self.direct_map().await;
        for room in direct[with.as_str()].as_array().into_iter().flatten() {
            if let Some(room_id) = room.as_str().and_then(|r| RoomId::parse(r).ok())
                && self.is_joined(&room_id).await
            {
                return Ok(room_id);
            }
        }
        let created: Value = self
            .inner
            .cs
            .post(
                "/v3/createRoom",
                &json!({
                    "preset": "trusted_private_chat",
                    "is_direct": true,
                    "invite": [with],
                    "initial_state": [encryption_state()],
                }),
            )
            .await?;
        let room_id = room_id_of(&created)?;
        self.remember_direct(with.as_str(), &room_id).await?;
        self.emit(AppEvent::Rooms);
        Ok(room_id)
    }

    /// A group room with a name, encrypted, inviting `invite`.
    pub async fn create_group(
        &self,
        name: &str,
        invite: &[OwnedUserId],
    ) -> Result<OwnedRoomId, AppError> {
        let created: Value = self
            .inner
            .cs
            .post(
                "/v3/createRoom",
                &json!({
                    "preset": "private_chat",
                    "name": name,
                    "invite": invite,
                    "initial_state": [encryption_state()],
                }),
            )
            .await?;
        self.emit(AppEvent::Rooms);
        room_id_of(&created)
    }

    pub async fn invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<(), AppError> {
        let _: Value = self
            .inner
            .cs
            .post(
                &format!("/v3/rooms/{}/invite", urlencode(room_id.as_str())),
                &json!({ "user_id": user_id }),
            )
            .await?;
        Ok(())
    }

    /// Joins a room (accepting an invite, or a room id the owner was given). An accepted
    /// direct invite makes the room the owner's DM with the inviter.
    pub async fn join(&self, room_id: &RoomId) -> Result<(), AppError> {
        let direct_with = self
            .invites()
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|invite| invite.room_id == room_id && invite.is_direct)
            .and_then(|invite| invite.inviter);
        let _: Value = self
            .inner
            .cs
            .post(
                &format!("/v3/join/{}", urlencode(room_id.as_str())),
                &json!({}),
            )
            .await?;
        if let Some(inviter) = direct_with {
            self.remember_direct(&inviter, room_id).await?;
        }
        self.emit(AppEvent::Rooms);
        Ok(())
    }

    /// Adds the room to the owner's `m.direct` under `with`.
    async fn remember_direct(&self, with: &str, room_id: &RoomId) -> Result<(), AppError> {
        let mut direct = self.direct_map().await;
        let mut rooms = direct[with].as_array().cloned().unwrap_or_default();
        if !rooms.iter().any(|r| r == room_id.as_str()) {
            rooms.push(json!(room_id));
        }
        direct[with] = Value::Array(rooms);
        let _: Value = self
            .inner
            .cs
            .put(
                &format!(
                    "/v3/user/{}/account_data/m.direct",
                    urlencode(self.inner.user_id.as_str())
                ),
                &direct,
            )
            .await?;
        Ok(())
    }

    /// Leaves a room, or declines an invite.
    pub async fn leave(&self, room_id: &RoomId) -> Result<(), AppError> {
        let _: Value = self
            .inner
            .cs
            .post(
                &format!("/v3/rooms/{}/leave", urlencode(room_id.as_str())),
                &json!({}),
            )
            .await?;
        self.emit(AppEvent::Rooms);
        Ok(())
    }

    pub async fn display_name(&self) -> Option<String> {
        let profile: Value = self
            .inner
            .cs
            .get(&format!(
                "/v3/profile/{}",
                urlencode(self.inner.user_id.as_str())
            ))
            .await
            .ok()?;
        profile["displayname"].as_str().map(str::to_owned)
    }

    pub async fn set_display_name(&self, name: &str) -> Result<(), AppError> {
        let _: Value = self
            .inner
            .cs
            .put(
                &format!(
                    "/v3/profile/{}/displayname",
                    urlencode(self.inner.user_id.as_str())
                ),
                &json!({ "displayname": name }),
            )
            .await?;
        Ok(())
    }

    /// The devices around: every peer the overlay is connected to or has found, with its
    /// owner when that node has one and says who.
    pub async fn nearby(&self) -> Vec<NearbyPeer> {
        let Ok(transport) = self.inner.state.federation.transport() else {
            return Vec::new();
        };
        let connected: Vec<hyphae_p2p::PeerId> =
            transport.connected_peers().await.unwrap_or_default();
        let mut peers: Vec<(hyphae_p2p::PeerId, bool)> =
            connected.iter().map(|p| (*p, true)).collect();
        for known in self
            .inner
            .state
            .store
            .known_peers()
            .await
            .unwrap_or_default()
        {
            if let Ok(peer) = known.peer_id.parse::<hyphae_p2p::PeerId>()
                && !connected.contains(&peer)
            {
                peers.push((peer, false));
            }
        }
        let mut nearby = Vec::new();
        for (peer, connected) in peers {
            let Ok(server_name) = hyphae_p2p::server_name_of_peer(&peer) else {
                continue;
            };
            let owner = if connected {
                self.inner.state.federation.owner_of(&server_name).await
            } else {
                None
            };
            nearby.push(NearbyPeer {
                peer_id: peer.to_string(),
                user_id: owner.as_ref().map(|(user, _)| user.clone()),
                display_name: owner.and_then(|(_, name)| name),
                server_name,
                connected,
            });
        }
        nearby
    }

    /// Display names of the room's members, by user id.
    pub(super) async fn display_names(&self, room_id: &RoomId) -> HashMap<String, String> {
        self.members(room_id)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.display_name.map(|name| (m.user_id, name)))
            .collect()
    }

    /// The room's encryption settings, when it is encrypted.
    pub(super) async fn encryption(&self, room_id: &RoomId) -> Result<Option<Rotation>, AppError> {
        let path = format!(
            "/v3/rooms/{}/state/m.room.encryption/",
            urlencode(room_id.as_str())
        );
        match self.inner.cs.get::<Value>(&path).await {
            Ok(content) => {
                let default = Rotation::default();
                Ok(Some(Rotation {
                    period_ms: content["rotation_period_ms"]
                        .as_u64()
                        .unwrap_or(default.period_ms),
                    period_msgs: content["rotation_period_msgs"]
                        .as_u64()
                        .unwrap_or(default.period_msgs),
                }))
            }
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whom a message in the room is encrypted for: the joined and the invited (who may read
    /// what is said after their invite).
    pub(super) async fn members_to_encrypt_for(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedUserId>, AppError> {
        Ok(self
            .members(room_id)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join" || m.membership == "invite")
            .filter_map(|m| UserId::parse(m.user_id).ok())
            .collect())
    }

    pub(super) async fn is_joined(&self, room_id: &RoomId) -> bool {
        let joined: Value = match self.inner.cs.get("/v3/joined_rooms").await {
            Ok(joined) => joined,
            Err(_) => return false,
        };
        joined["joined_rooms"]
            .as_array()
            .is_some_and(|rooms| rooms.iter().any(|r| r == room_id.as_str()))
    }

    async fn direct_map(&self) -> Value {
        let path = format!(
            "/v3/user/{}/account_data/m.direct",
            urlencode(self.inner.user_id.as_str())
        );
        self.inner
            .cs
            .get::<Value>(&path)
            .await
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}))
    }

    async fn direct_rooms(&self) -> Vec<OwnedRoomId> {
        self.direct_map()
            .await
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, rooms)| rooms.as_array().cloned().unwrap_or_default())
            .filter_map(|r| r.as_str().and_then(|r| RoomId::parse(r).ok()))
            .collect()
    }

    /// What a /sync brought: keys and to-device messages for the crypto, then the timeline
    /// and invites as live updates (not on the first sync, which is the past).
    pub(super) async fn handle_sync(&self, response: &Value, first: bool) {
        let crypto = &self.inner.crypto;
        let changed: Vec<OwnedUserId> = response["device_lists"]["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().and_then(|u| UserId::parse(u).ok()))
            .collect();
        if !changed.is_empty() {
            crypto.device_lists_changed(&changed).await;
        }
        let counts: std::collections::BTreeMap<String, u64> =
            serde_json::from_value(response["device_one_time_keys_count"].clone())
                .unwrap_or_default();
        let fallback: Option<Vec<String>> =
            serde_json::from_value(response["device_unused_fallback_key_types"].clone()).ok();
        if let Err(e) = crypto
            .upload_keys(&self.inner.cs, &counts, fallback.as_deref())
            .await
        {
            tracing::warn!(error = %e, "could not upload the app's keys");
        }
        let to_device: Vec<Value> = response["to_device"]["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !to_device.is_empty() {
            let keys = crypto.receive_to_device(&self.inner.cs, &to_device).await;
            if !keys.is_empty() {
                self.keys_arrived(&keys).await;
            }
        }
        if first {
            return;
        }
        let rooms = &response["rooms"];
        for (room_id, room) in rooms["join"].as_object().into_iter().flatten() {
            let Ok(room_id) = RoomId::parse(room_id) else {
                continue;
            };
            // Receipts or typing alone: no item, and no need for the members' names.
            let Some(events) = room["timeline"]["events"]
                .as_array()
                .filter(|events| !events.is_empty())
            else {
                continue;
            };
            let names = self.display_names(&room_id).await;
            for event in events {
                if let Some(item) = self.item(&room_id, event, &names).await {
                    self.emit(AppEvent::Timeline { item });
                }
            }
        }
        for (room_id, room) in rooms["invite"].as_object().into_iter().flatten() {
            if let Some(invite) = self.invite_of(room_id, room) {
                self.emit(AppEvent::Invite { invite });
            }
        }
        let joined_now = rooms["join"].as_object().is_some_and(|rooms| {
            rooms.values().any(|r| {
                r["state"]["events"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            })
        });
        if joined_now || rooms["leave"].as_object().is_some_and(|r| !r.is_empty()) {
            self.emit(AppEvent::Rooms);
        }
    }
}

fn encryption_state() -> Value {
    json!({
        "type": "m.room.encryption",
        "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
    })
}

pub(super) fn room_id_of(created: &Value) -> Result<OwnedRoomId, AppError> {
    created["room_id"]
        .as_str()
        .and_then(|r| RoomId::parse(r).ok())
        .ok_or_else(|| AppError::BadInput("createRoom answered without a room id".into()))
}

fn state_content<'a>(state: &'a Value, kind: &str) -> Option<&'a Value> {
    state
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == "")
        .map(|e| &e["content"])
}

fn members_of(state: &Value) -> Vec<Member> {
    state
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| {
            Some(Member {
                user_id: e["state_key"].as_str()?.to_owned(),
                display_name: e["content"]["displayname"].as_str().map(str::to_owned),
                membership: e["content"]["membership"].as_str()?.to_owned(),
            })
        })
        .collect()
}
