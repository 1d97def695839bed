//! Creating a room: the create event (which, from room version 12, also names the room), then
//! the creator's membership, power levels, the preset's rules, initial state, name, topic and
//! invites. All are built and authorised in memory first and stored in one commit, so a refused
//! step leaves no half-made room behind.

use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::{DraftRef, EventDraft, RoomEntry, RoomError, RoomState, Rooms, rules};
use crate::credentials::new_session_id;

/// What the creator asked for, already checked for shape by the API layer.
pub(crate) struct NewRoom {
    pub(crate) version: RoomVersionId,
    /// Extra fields for the create event's content (`m.federate`, `type`, ...).
    pub(crate) creation_content: serde_json::Map<String, Value>,
    /// "private_chat", "trusted_private_chat" or "public_chat".
    pub(crate) preset: String,
    pub(crate) power_level_override: Option<serde_json::Map<String, Value>>,
    pub(crate) initial_state: Vec<(StateEventType, String, Value)>,
    pub(crate) name: Option<String>,
    pub(crate) topic: Option<String>,
    pub(crate) alias: Option<String>,
    pub(crate) invite: Vec<OwnedUserId>,
    pub(crate) is_direct: bool,
}

impl Rooms {
    pub(crate) async fn create_room(
        &self,
        creator: &UserId,
        room: NewRoom,
    ) -> Result<OwnedRoomId, RoomError> {
        let rules = rules(&room.version)?;
        let v12 = rules.authorization.explicitly_privilege_room_creators;

        let mut create_content = room.creation_content.clone();
        create_content.insert("room_version".into(), room.version.as_str().into());
        if !rules.authorization.use_room_create_sender {
            create_content.insert("creator".into(), creator.as_str().into());
        }
        let create_content = Value::Object(create_content);
        let create_kind = TimelineEventType::RoomCreate;
        let create_draft = DraftRef {
            kind: &create_kind,
            state_key: Some(""),
            content: &create_content,
            redacts: None,
        };
        let empty = RoomState::new();
        let (room_id, create) = if rules.room_id_format
            == ruma::room_version_rules::RoomIdFormatVersion::V2
        {
            // The create event's own id names the room.
            let create = self.build(
                &room.version,
                None,
                creator,
                create_draft,
                &empty,
                (Vec::new(), 1),
            )?;
            let room_id = create
                .room_id()
                .ok_or_else(|| RoomError::Internal("v12 room id".into()))?;
            (room_id, create)
        } else {
            let room_id = RoomId::parse(format!("!{}:{}", new_session_id()?, self.server_name()))
                .map_err(|e| RoomError::Internal(e.to_string()))?;
            let create = self.build(
                &room.version,
                Some(&room_id),
                creator,
                create_draft,
                &empty,
                (Vec::new(), 1),
            )?;
            (room_id, create)
        };
        self.authorise(&room.version, &create, &empty)?;

        let own = self.server_name().clone();
        let mut entry = RoomEntry::new(
            room_id.clone(),
            room.version.clone(),
            RoomState::new(),
            &own,
        );
        let before = entry.snapshot.clone();
        entry.apply(&create, &own);
        let mut events = vec![(create.clone(), before, entry.snapshot.clone())];
        let mut add = |entry: &mut RoomEntry, draft: EventDraft| -> Result<(), RoomError> {
            let pdu = self.build(
                &entry.version,
                Some(&room_id),
                creator,
                super::draft_ref(&draft),
                &entry.state,
                (entry.extremities.clone(), entry.depth + 1),
            )?;
            self.authorise(&entry.version, &pdu, &entry.state)?;
            let before = entry.snapshot.clone();
            entry.apply(&pdu, &own);
            events.push((pdu.clone(), before, entry.snapshot.clone()));
            Ok(())
        };
        let state = EventDraft::state;

        add(
            &mut entry,
            state(
                StateEventType::RoomMember,
                creator.as_str(),
                self.member_content(creator, "join").await?,
            ),
        )?;

        let trusted = room.preset == "trusted_private_chat";
        let mut users = serde_json::Map::new();
        if !v12 {
            users.insert(creator.to_string(), 100.into());
        }
        if trusted {
            for invitee in &room.invite {
                users.insert(invitee.to_string(), 100.into());
            }
        }
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                "m.room.server_acl": 100, "m.room.encryption": 100,
            },
            "events_default": 0, "state_default": 50,
            "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "notifications": {"room": 50},
        });
        if let (Some(overrides), Value::Object(levels)) =
            (room.power_level_override, &mut power_levels)
        {
            levels.extend(overrides);
        }
        add(
            &mut entry,
            state(StateEventType::RoomPowerLevels, "", power_levels),
        )?;
        if let Some(alias) = &room.alias {
            add(
                &mut entry,
                state(
                    StateEventType::RoomCanonicalAlias,
                    "",
                    json!({"alias": alias}),
                ),
            )?;
        }
        let (join_rule, guest_access) = match room.preset.as_str() {
            "public_chat" => ("public", "forbidden"),
            _ => ("invite", "can_join"),
        };
        add(
            &mut entry,
            state(
                StateEventType::RoomJoinRules,
                "",
                json!({"join_rule": join_rule}),
            ),
        )?;
        add(
            &mut entry,
            state(
                StateEventType::RoomHistoryVisibility,
                "",
                json!({"history_visibility": "shared"}),
            ),
        )?;
        add(
            &mut entry,
            state(
                StateEventType::RoomGuestAccess,
                "",
                json!({"guest_access": guest_access}),
            ),
        )?;
        for (kind, key, content) in room.initial_state {
            add(&mut entry, state(kind, &key, content))?;
        }
        if let Some(name) = room.name {
            add(
                &mut entry,
                state(StateEventType::RoomName, "", json!({"name": name})),
            )?;
        }
        if let Some(topic) = room.topic {
            add(
                &mut entry,
                state(StateEventType::RoomTopic, "", json!({"topic": topic})),
            )?;
        }
        // Another server's users are invited once the room exists: their server countersigns.
        let (local_invites, remote_invites): (Vec<_>, Vec<_>) = room
            .invite
            .iter()
            .partition(|invitee| invitee.server_name() == own);
        for invitee in local_invites {
            let mut content = self.member_content(invitee, "invite").await?;
            if room.is_direct {
                content["is_direct"] = true.into();
            }
            add(
                &mut entry,
                state(StateEventType::RoomMember, invitee.as_str(), content),
            )?;
        }

        // Everything was allowed: now the room, its events and its alias exist at once.
        let mut accepted = Vec::with_capacity(events.len());
        for (pdu, before, after) in &events {
            let mut pdu = self.accepted(pdu, None, Some(before.clone()), Vec::new())?;
            pdu.state_after = Some(after.clone());
            accepted.push(pdu);
        }
        self.store()
            .create_room_with(room_id.to_string(), room.version.to_string(), accepted)
            .await?;
        if let Some(alias) = &room.alias {
            self.store()
                .set_alias(alias.clone(), room_id.to_string(), creator.to_string())
                .await
                .map_err(|e| match e {
                    hyphae_store::StoreError::AlreadyExists(_) => {
                        RoomError::BadRequest(format!("The alias {alias} is taken"))
                    }
                    e => e.into(),
                })?;
        }
        for invitee in remote_invites {
            let mut content = self.member_content(invitee, "invite").await?;
            if room.is_direct {
                content["is_direct"] = true.into();
            }
            let draft = EventDraft::state(StateEventType::RoomMember, invitee.as_str(), content);
            if let Err(e) = self.send(&room_id, creator, draft).await {
                // The room exists either way; the creator can invite again.
                tracing::warn!(%room_id, %invitee, error = %e, "could not invite a user of another server");
            }
        }
        tracing::info!(%room_id, %creator, version = %room.version, events = events.len(), "room created");
        Ok(room_id)
    }
}
