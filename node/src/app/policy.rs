//! The owner's policy lists: making and editing their own lists (policy rooms), subscribing to
//! others' with a level each (kept in the owner's account data), and the verdicts the app's
//! views apply. Everything goes through the Client-Server API, as a standard client would.

use ruma::{OwnedRoomId, OwnedServerName, RoomId, UserId};
use serde_json::{Value, json};

use super::{AppClient, AppError, AppEvent};
use crate::policy::{
    Level, PolicyKind, PolicyRule, PolicySubscription, SUBSCRIPTIONS_DATA, Subject, Verdict,
};
use crate::rooms::urlencode;

impl AppClient {
    /// Makes a new policy list: a public room (so anyone given its alias can subscribe) where
    /// only the owner may write rules. `alias` is a local alias name (`spam-list` becomes
    /// `#spam-list:<this server>`).
    pub async fn create_policy_list(
        &self,
        name: &str,
        alias: Option<&str>,
    ) -> Result<OwnedRoomId, AppError> {
        let mut request = json!({
            "preset": "public_chat",
            "name": name,
            "topic": "A policy list: subscribe to it to turn down what it bans",
            // Rules are state; nobody but the owner reaches the state level.
            "power_level_content_override": {"state_default": 50, "events_default": 50},
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "world_readable"},
            }],
        });
        if let Some(alias) = alias {
            request["room_alias_name"] = alias.into();
        }
        let created: Value = self.inner.cs.post("/v3/createRoom", &request).await?;
        let room_id = super::rooms::room_id_of(&created)?;
        self.emit(AppEvent::Rooms);
        Ok(room_id)
    }

    /// Adds (or replaces) a ban rule in a list the owner may write to. Rules subscribers would
    /// refuse (`*` alone, a thousand wildcards, …) are refused here first.
    pub async fn add_policy_rule(
        &self,
        list: &RoomId,
        kind: PolicyKind,
        entity: &str,
        reason: &str,
    ) -> Result<(), AppError> {
        crate::policy::check_new_rule(kind, entity)
            .map_err(|e| AppError::BadInput(format!("The rule is refused: {e}")))?;
        let content = json!({"entity": entity, "recommendation": "m.ban", "reason": reason});
        self.put_rule(list, kind, &format!("rule:{entity}"), &content)
            .await
    }

    /// Writes one rule's state event (empty content removes it).
    async fn put_rule(
        &self,
        list: &RoomId,
        kind: PolicyKind,
        state_key: &str,
        content: &Value,
    ) -> Result<(), AppError> {
        let path = format!(
            "/v3/rooms/{}/state/{}/{}",
            urlencode(list.as_str()),
            kind.event_type(),
            urlencode(state_key)
        );
        let _: Value = self.inner.cs.put(&path, content).await?;
        Ok(())
    }

    /// Removes the list's rules of `kind` for exactly `entity` (by emptying them, as the spec
    /// says); `false` when there was none.
    pub async fn remove_policy_rule(
        &self,
        list: &RoomId,
        kind: PolicyKind,
        entity: &str,
    ) -> Result<bool, AppError> {
        let rules = self.policy_rules(list).await?;
        let mut removed = false;
        for rule in rules
            .iter()
            .filter(|r| r.kind == kind && r.entity == entity)
        {
            self.put_rule(list, kind, &rule.state_key, &json!({}))
                .await?;
            removed = true;
        }
        Ok(removed)
    }

    /// The ban rules of a list the owner is in, by kind then entity.
    pub async fn policy_rules(&self, list: &RoomId) -> Result<Vec<PolicyRule>, AppError> {
        let state: Value = self
            .inner
            .cs
            .get(&format!("/v3/rooms/{}/state", urlencode(list.as_str())))
            .await?;
        Ok(crate::policy::rules_of_state(
            state.as_array().map(Vec::as_slice).unwrap_or_default(),
        ))
    }

    /// Subscribes the owner to a list at `level` (subscribing again changes the level), and
    /// joins its room so its rules keep arriving. `list` is the list's alias, or its room id:
    /// shared by an invite (then the inviter's server is asked), or with `via` naming servers in
    /// the room (as a `matrix.to` link does). What the list bans is hidden, blurred or flagged
    /// in the owner's views from now on, and rooms it bans are refused on join.
    pub async fn subscribe_policy_list(
        &self,
        list: &str,
        via: &[OwnedServerName],
        level: Level,
    ) -> Result<OwnedRoomId, AppError> {
        let known = RoomId::parse(list).ok();
        let room_id = match known {
            Some(room_id) if self.is_joined(&room_id).await => room_id,
            _ => {
                let query: String = via
                    .iter()
                    .enumerate()
                    .map(|(n, server)| {
                        format!(
                            "{}via={}",
                            if n == 0 { '?' } else { '&' },
                            urlencode(server.as_str())
                        )
                    })
                    .collect();
                let joined: Value = self
                    .inner
                    .cs
                    .post(&format!("/v3/join/{}{query}", urlencode(list)), &json!({}))
                    .await?;
                self.emit(AppEvent::Rooms);
                joined["room_id"]
                    .as_str()
                    .and_then(|r| RoomId::parse(r).ok())
                    .ok_or_else(|| AppError::BadInput("join answered without a room id".into()))?
            }
        };
        let mut subscriptions = self.policy_subscriptions().await?;
        match subscriptions.iter_mut().find(|s| s.room_id == room_id) {
            Some(existing) => existing.level = level,
            None => subscriptions.push(PolicySubscription {
                room_id: room_id.clone(),
                level,
            }),
        }
        self.save_subscriptions(&subscriptions).await?;
        Ok(room_id)
    }

    /// Ends the owner's subscription to a list: what it hid shows again (nothing was deleted).
    /// The owner stays in the list's room (it may be their own). `false` when not subscribed.
    pub async fn unsubscribe_policy_list(&self, list: &RoomId) -> Result<bool, AppError> {
        let mut subscriptions = self.policy_subscriptions().await?;
        let before = subscriptions.len();
        subscriptions.retain(|s| s.room_id != list);
        if subscriptions.len() == before {
            return Ok(false);
        }
        self.save_subscriptions(&subscriptions).await?;
        Ok(true)
    }

    /// The lists the owner subscribes to, with their levels.
    pub async fn policy_subscriptions(&self) -> Result<Vec<PolicySubscription>, AppError> {
        let path = format!(
            "/v3/user/{}/account_data/{SUBSCRIPTIONS_DATA}",
            urlencode(self.inner.user_id.as_str())
        );
        match self.inner.cs.get::<Value>(&path).await {
            Ok(content) => Ok(crate::policy::parse_subscriptions(
                self.inner.user_id.localpart(),
                &content.to_string(),
            )),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    async fn save_subscriptions(
        &self,
        subscriptions: &[PolicySubscription],
    ) -> Result<(), AppError> {
        let path = format!(
            "/v3/user/{}/account_data/{SUBSCRIPTIONS_DATA}",
            urlencode(self.inner.user_id.as_str())
        );
        let _: Value = self
            .inner
            .cs
            .put(&path, &json!({ "lists": subscriptions }))
            .await?;
        Ok(())
    }

    /// What the owner's lists say of a user (and their server), if anything.
    pub fn policy_verdict(&self, user_id: &UserId) -> Option<Verdict> {
        self.inner
            .state
            .policy
            .user_verdict(self.inner.user_id.localpart(), &Subject::user(user_id))
    }

    /// Whether the node's own lists ban a sender (never the owner). Their non-state events
    /// are refused at the node's edge; their state events are taken, because the room's state
    /// on every server holds them, and the owner's views leave them out instead.
    pub(super) fn node_bans(&self, sender: &str) -> bool {
        let policy = &self.inner.state.policy;
        if !policy.node_has_lists() {
            return false;
        }
        let Ok(sender) = UserId::parse(sender) else {
            return false;
        };
        sender != self.inner.user_id && policy.node_verdict(&Subject::user(&sender)).is_some()
    }

    /// What the owner's lists say of a sender (a user id as an event names it) in a room.
    pub(super) fn verdict_on(&self, sender: &str, room_id: Option<&RoomId>) -> Option<Verdict> {
        let sender = UserId::parse(sender).ok()?;
        if sender == self.inner.user_id {
            return None;
        }
        let subject = Subject {
            room: room_id.map(|r| r.as_str()),
            ..Subject::user(&sender)
        };
        self.inner
            .state
            .policy
            .user_verdict(self.inner.user_id.localpart(), &subject)
    }
}
