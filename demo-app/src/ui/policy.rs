//! Moderation settings (issue 8): the owner's policy lists (Matrix policy rooms of
//! `m.policy.rule.user|room|server` bans) and their subscriptions to lists, each at a level
//! (hide, blur or warn) that the app's views apply.
//!
//! `GET /policy` says how it all stands: the lists the owner subscribes to, and the lists the
//! owner can write rules to ("mine": rooms that are policy lists, by their rule state or the
//! topic `create_policy_list` gives them, where the owner is the creator or has the power to
//! write rules). Lists are named in paths by room id or alias, URL-encoded. Subscription changes
//! answer with the new `GET /policy`; changes to a list answer with that list. Changes take
//! one lock (two clicks cannot read and write the subscriptions over each other) and run to
//! their end even if the page goes away.
//!
//! - `POST /policy/lists` `{name, alias?}`: a new list (`alias` is the local part:
//!   `spam` becomes `#spam:<server>`).
//! - `GET /policy/lists/{list}`: a list the owner is in, with its rules.
//! - `POST /policy/lists/{list}/rules` `{kind, entity, reason?}`: adds (or replaces) a ban.
//! - `POST /policy/lists/{list}/rules/remove` `{kind, entity}`: removes one.
//! - `POST /policy/lists/{list}/invite` `{user_id}`: shares the list by invite.
//! - `POST /policy/subscriptions` `{list, level?, via?}`: subscribes (by alias or room id, with
//!   servers to join through), or changes the level of a subscription.
//! - `PUT /policy/subscriptions/{list}` `{level}`: changes the level of a subscription.
//! - `DELETE /policy/subscriptions/{list}`: unsubscribes.

use std::collections::HashSet;
use std::str::FromStr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyphae_node::policy::{Level, PolicyKind, PolicyRule};
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{Answer, Failure, bad, ok, ready};
use super::backup::{json_failure, to_the_end};
use super::{Ready, Ui};

/// What `AppClient::create_policy_list` names its rooms' topic; with rule state, how a list
/// of the owner's that has no rule yet is told from a chat.
const LIST_TOPIC: &str = "A policy list";
/// Longer than any list name, alias, glob or reason a person types; bounds what is written.
const MAX_NAME: usize = 256;
const MAX_ENTITY: usize = 512;
const MAX_REASON: usize = 1024;
const MAX_VIA: usize = 16;

pub(super) fn router() -> Router<Ui> {
    Router::new()
        .route("/policy", get(status))
        .route("/policy/lists", post(create))
        .route("/policy/lists/{list}", get(list))
        .route("/policy/lists/{list}/rules", post(add_rule))
        .route("/policy/lists/{list}/rules/remove", post(remove_rule))
        .route("/policy/lists/{list}/invite", post(invite))
        .route("/policy/subscriptions", post(subscribe))
        .route(
            "/policy/subscriptions/{list}",
            put(set_level).delete(unsubscribe),
        )
}

#[derive(Serialize)]
struct Status {
    subscriptions: Vec<Subscription>,
    /// The lists the owner can write rules to, with their rules.
    lists: Vec<ListView>,
}

#[derive(Serialize)]
struct Subscription {
    room_id: OwnedRoomId,
    level: Level,
    name: Option<String>,
    alias: Option<String>,
    /// One of the owner's own lists.
    mine: bool,
    /// How many ban rules the list has (as this device holds its state).
    rules: usize,
    /// Rules subscribers refuse (`*` alone, …), so they ban nothing.
    refused: usize,
}

#[derive(Serialize)]
struct ListView {
    room_id: OwnedRoomId,
    name: Option<String>,
    alias: Option<String>,
    mine: bool,
    /// The owner's level for it, when subscribed.
    subscribed: Option<Level>,
    rules: Vec<PolicyRule>,
    refused: usize,
}

/// What a room's state in the store says about it as a list.
struct RoomInfo {
    name: Option<String>,
    alias: Option<String>,
    /// It has rule state (even emptied rules) or a list's topic.
    is_list: bool,
    /// The owner may write rules to it.
    writable: bool,
}

/// Reads a room's current state from the node's store: `None` when the node is not in it.
async fn room_info(ready: &Ready, room_id: &RoomId) -> Result<Option<RoomInfo>, Failure> {
    let pdus = ready
        .node
        .store()
        .current_state_pdus(room_id.to_string())
        .await
        .map_err(internal)?;
    if pdus.is_empty() {
        return Ok(None);
    }
    let events: Vec<Value> = pdus
        .iter()
        .filter_map(|pdu| serde_json::from_str(&pdu.json).ok())
        .collect();
    let content = |kind: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == "")
            .map(|e| &e["content"])
    };
    let text = |kind: &str, field: &str| {
        content(kind)
            .and_then(|c| c[field].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let has_rules = events.iter().any(|e| {
        e["type"]
            .as_str()
            .and_then(PolicyKind::of_event_type)
            .is_some()
    });
    let listed_topic = text("m.room.topic", "topic").is_some_and(|t| t.starts_with(LIST_TOPIC));
    Ok(Some(RoomInfo {
        name: text("m.room.name", "name"),
        alias: text("m.room.canonical_alias", "alias"),
        is_list: has_rules || listed_topic,
        writable: can_write_rules(&events, ready.app.user_id().as_str()),
    }))
}

/// Whether `user` may send rule state: the room's creator (whose power is unlimited from room
/// version 12), or someone whose power level reaches what rules need.
fn can_write_rules(state: &[Value], user: &str) -> bool {
    let find = |kind: &str| {
        state
            .iter()
            .find(|e| e["type"] == kind && e["state_key"] == "")
    };
    if find("m.room.create").is_some_and(|create| create["sender"] == user) {
        return true;
    }
    let Some(levels) = find("m.room.power_levels").map(|e| &e["content"]) else {
        return false;
    };
    let power = levels["users"][user]
        .as_i64()
        .or_else(|| levels["users_default"].as_i64())
        .unwrap_or(0);
    let needed = levels["events"][PolicyKind::User.event_type()]
        .as_i64()
        .or_else(|| levels["state_default"].as_i64())
        .unwrap_or(50);
    power >= needed
}

/// The rooms the owner is joined to, as the store records them.
async fn joined_rooms(ready: &Ready) -> Result<Vec<OwnedRoomId>, Failure> {
    let memberships = ready
        .node
        .store()
        .memberships_of(ready.app.user_id().to_string())
        .await
        .map_err(internal)?;
    Ok(memberships
        .into_iter()
        .filter(|m| m.membership == "join")
        .filter_map(|m| RoomId::parse(&m.room_id).ok())
        .collect())
}

/// The rooms the page should show as policy lists rather than chats: the owner's own lists and
/// those subscribed to.
pub(super) async fn list_rooms(ready: &Ready) -> Result<HashSet<OwnedRoomId>, Failure> {
    let mut lists: HashSet<OwnedRoomId> = ready
        .app
        .policy_subscriptions()
        .await?
        .into_iter()
        .map(|s| s.room_id)
        .collect();
    for room_id in joined_rooms(ready).await? {
        if !lists.contains(&room_id)
            && room_info(ready, &room_id)
                .await?
                .is_some_and(|info| info.is_list)
        {
            lists.insert(room_id);
        }
    }
    Ok(lists)
}

async fn rules_of(ready: &Ready, room_id: &RoomId) -> Result<Vec<PolicyRule>, Failure> {
    ready.node.node_policy_rules(room_id).await.map_err(|e| {
        Failure::new(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            format!("this device is not in the list {room_id}: {e}"),
        )
    })
}

fn refused(ready: &Ready, room_id: &RoomId) -> usize {
    ready
        .node
        .policy_list_refusals(room_id)
        .map_or(0, |(_, total)| total)
}

async fn current(ready: &Ready) -> Result<Status, Failure> {
    let subscribed = ready.app.policy_subscriptions().await?;
    let mut subscriptions = Vec::with_capacity(subscribed.len());
    for s in &subscribed {
        let info = room_info(ready, &s.room_id).await?;
        let rules = match &info {
            Some(_) => rules_of(ready, &s.room_id).await?.len(),
            None => 0,
        };
        subscriptions.push(Subscription {
            room_id: s.room_id.clone(),
            level: s.level,
            name: info.as_ref().and_then(|i| i.name.clone()),
            alias: info.as_ref().and_then(|i| i.alias.clone()),
            mine: info.as_ref().is_some_and(|i| i.writable),
            rules,
            refused: refused(ready, &s.room_id),
        });
    }
    let mut lists = Vec::new();
    for room_id in joined_rooms(ready).await? {
        let Some(info) = room_info(ready, &room_id).await? else {
            continue;
        };
        if info.is_list && info.writable {
            lists.push(view(ready, &room_id, info, &subscribed).await?);
        }
    }
    Ok(Status {
        subscriptions,
        lists,
    })
}

async fn view(
    ready: &Ready,
    room_id: &RoomId,
    info: RoomInfo,
    subscribed: &[hyphae_node::policy::PolicySubscription],
) -> Result<ListView, Failure> {
    Ok(ListView {
        room_id: room_id.to_owned(),
        name: info.name,
        alias: info.alias,
        mine: info.writable,
        subscribed: subscribed
            .iter()
            .find(|s| s.room_id == room_id)
            .map(|s| s.level),
        rules: rules_of(ready, room_id).await?,
        refused: refused(ready, room_id),
    })
}

/// A list the owner is in, with its rules; 404 when the device is not in it.
async fn list_view(ready: &Ready, room_id: &RoomId) -> Result<ListView, Failure> {
    let Some(info) = room_info(ready, room_id).await? else {
        return Err(unknown(room_id.as_str()));
    };
    let subscribed = ready.app.policy_subscriptions().await?;
    view(ready, room_id, info, &subscribed).await
}

fn unknown(list: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
        format!("this device knows no policy list {list}"),
    )
}

fn internal(e: impl std::fmt::Display) -> Failure {
    tracing::warn!(error = %e, "reading a policy list failed");
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "M_UNKNOWN",
        e.to_string(),
    )
}

/// A list as a person names it: a room id, or an alias of a room this device is in (its local
/// aliases, and the canonical aliases of the rooms the owner is in).
async fn resolve(ready: &Ready, text: &str) -> Result<OwnedRoomId, Failure> {
    let text = text.trim();
    if !text.starts_with('#') {
        return RoomId::parse(text).map_err(|e| {
            bad(format!(
                "not a list's room id (!…) or alias (#name:server): {text}: {e}"
            ))
        });
    }
    let alias = RoomAliasId::parse(text)
        .map_err(|e| bad(format!("not an alias (#name:server): {text}: {e}")))?;
    if let Some(room_id) = ready
        .node
        .store()
        .alias_room(alias.to_string())
        .await
        .map_err(internal)?
        .and_then(|r| RoomId::parse(r).ok())
    {
        return Ok(room_id);
    }
    for room_id in joined_rooms(ready).await? {
        if let Some(info) = room_info(ready, &room_id).await?
            && info.alias.as_deref() == Some(alias.as_str())
        {
            return Ok(room_id);
        }
    }
    Err(unknown(text))
}

/// A list the owner edits: one this device is in that is a list (or that the owner subscribes
/// to), never a chat given by mistake.
async fn editable(ready: &Ready, text: &str) -> Result<OwnedRoomId, Failure> {
    let room_id = resolve(ready, text).await?;
    let is_list = room_info(ready, &room_id)
        .await?
        .is_some_and(|info| info.is_list)
        || ready
            .app
            .policy_subscriptions()
            .await?
            .iter()
            .any(|s| s.room_id == room_id);
    if !is_list {
        return Err(unknown(text));
    }
    Ok(room_id)
}

fn level(text: &str) -> Result<Level, Failure> {
    Level::from_str(text.trim()).map_err(|e| bad(e.to_string()))
}

fn kind(text: &str) -> Result<PolicyKind, Failure> {
    PolicyKind::from_str(text.trim()).map_err(bad)
}

fn entity(text: &str) -> Result<&str, Failure> {
    let entity = text.trim();
    if entity.is_empty() || entity.len() > MAX_ENTITY {
        return Err(bad(format!(
            "a rule's entity (a user id, room id or server name; * and ? match any characters) \
             has 1 to {MAX_ENTITY} bytes"
        )));
    }
    Ok(entity)
}

async fn status(State(ui): State<Ui>) -> Answer {
    ok(current(ready(&ui)?).await?)
}

async fn list(State(ui): State<Ui>, Path(list): Path<String>) -> Answer {
    let ready = ready(&ui)?;
    let room_id = resolve(ready, &list).await?;
    ok(list_view(ready, &room_id).await?)
}

#[derive(Deserialize)]
struct Create {
    name: String,
    #[serde(default)]
    alias: Option<String>,
}

async fn create(State(ui): State<Ui>, body: Result<Json<Create>, JsonRejection>) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad(format!("a list's name has 1 to {MAX_NAME} characters")));
    }
    let alias = match body.alias.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(alias) => {
            let alias = alias.strip_prefix('#').unwrap_or(alias);
            if alias.contains(':') {
                return Err(bad(
                    "give the alias's name only: spam-list becomes #spam-list:<this server>",
                ));
            }
            if alias.chars().count() > MAX_NAME
                || alias.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "an alias is one word of at most {MAX_NAME} characters"
                )));
            }
            Some(alias.to_owned())
        }
    };
    let worker = ui.clone();
    let view = to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        let room_id = ready
            .app
            .create_policy_list(&name, alias.as_deref())
            .await?;
        list_view(ready, &room_id).await
    })
    .await?;
    ok(view)
}

#[derive(Deserialize)]
struct Rule {
    kind: String,
    entity: String,
    #[serde(default)]
    reason: String,
}

async fn add_rule(
    State(ui): State<Ui>,
    Path(list): Path<String>,
    body: Result<Json<Rule>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let kind = kind(&body.kind)?;
    let entity = entity(&body.entity)?.to_owned();
    let reason = body.reason.trim().to_owned();
    if reason.len() > MAX_REASON {
        return Err(bad(format!("a reason has at most {MAX_REASON} bytes")));
    }
    let worker = ui.clone();
    let view = to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        let room_id = editable(ready, &list).await?;
        // Absurd globs (`*`, a thousand wildcards) come back as bad input, with why.
        ready
            .app
            .add_policy_rule(&room_id, kind, &entity, &reason)
            .await?;
        list_view(ready, &room_id).await
    })
    .await?;
    ok(view)
}

#[derive(Deserialize)]
struct RuleKey {
    kind: String,
    entity: String,
}

async fn remove_rule(
    State(ui): State<Ui>,
    Path(list): Path<String>,
    body: Result<Json<RuleKey>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let kind = kind(&body.kind)?;
    let entity = entity(&body.entity)?.to_owned();
    let worker = ui.clone();
    let view = to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        let room_id = editable(ready, &list).await?;
        if !ready
            .app
            .remove_policy_rule(&room_id, kind, &entity)
            .await?
        {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "M_NOT_FOUND",
                format!("the list {room_id} has no {kind} rule for {entity}"),
            ));
        }
        list_view(ready, &room_id).await
    })
    .await?;
    ok(view)
}

#[derive(Deserialize)]
struct Invite {
    user_id: String,
}

async fn invite(
    State(ui): State<Ui>,
    Path(list): Path<String>,
    body: Result<Json<Invite>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let user = body.user_id.trim();
    let user = UserId::parse(user)
        .map_err(|e| bad(format!("not a user id (@name:server): {user}: {e}")))?;
    let ready = ready(&ui)?;
    let room_id = editable(ready, &list).await?;
    ready.app.invite(&room_id, &user).await?;
    ok(json!({ "room_id": room_id, "invited": user }))
}

#[derive(Deserialize)]
struct Subscribe {
    /// An alias (`#name:server`) or a room id.
    list: String,
    /// hide, blur or warn; blur when not given.
    #[serde(default)]
    level: Option<String>,
    /// Servers in the list's room to join through (for a room id of a room not joined yet).
    #[serde(default)]
    via: Vec<String>,
}

async fn subscribe(State(ui): State<Ui>, body: Result<Json<Subscribe>, JsonRejection>) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let list = body.list.trim().to_owned();
    if !(list.starts_with('#') || list.starts_with('!')) || list.len() > MAX_NAME {
        return Err(bad(format!(
            "a list is named by its alias (#name:server) or its room id (!…): {list:?}"
        )));
    }
    let level = level(body.level.as_deref().unwrap_or("blur"))?;
    if body.via.len() > MAX_VIA {
        return Err(bad(format!("at most {MAX_VIA} servers to join through")));
    }
    let via = body
        .via
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| ServerName::parse(s).map_err(|e| bad(format!("not a server name: {s}: {e}"))))
        .collect::<Result<Vec<OwnedServerName>, _>>()?;
    let worker = ui.clone();
    to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        // A list this device is in already (an alias it knows) needs no join.
        let list = match resolve(ready, &list).await {
            Ok(room_id) if room_info(ready, &room_id).await?.is_some() => room_id.to_string(),
            _ => list,
        };
        ready
            .app
            .subscribe_policy_list(&list, &via, level)
            .await
            .map_err(Failure::from)
    })
    .await?;
    ok(current(ready(&ui)?).await?)
}

#[derive(Deserialize)]
struct SetLevel {
    level: String,
}

async fn set_level(
    State(ui): State<Ui>,
    Path(list): Path<String>,
    body: Result<Json<SetLevel>, JsonRejection>,
) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    let level = level(&body.level)?;
    let worker = ui.clone();
    to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        let room_id = subscribed(ready, &list).await?;
        ready
            .app
            .subscribe_policy_list(room_id.as_str(), &[], level)
            .await
            .map_err(Failure::from)
    })
    .await?;
    ok(current(ready(&ui)?).await?)
}

async fn unsubscribe(State(ui): State<Ui>, Path(list): Path<String>) -> Answer {
    let worker = ui.clone();
    to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.policy_busy.lock().await;
        let room_id = subscribed(ready, &list).await?;
        ready
            .app
            .unsubscribe_policy_list(&room_id)
            .await
            .map_err(Failure::from)
    })
    .await?;
    ok(current(ready(&ui)?).await?)
}

/// A list the owner subscribes to; 404 when not.
async fn subscribed(ready: &Ready, text: &str) -> Result<OwnedRoomId, Failure> {
    let room_id = resolve(ready, text).await?;
    if !ready
        .app
        .policy_subscriptions()
        .await?
        .iter()
        .any(|s| s.room_id == room_id)
    {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            format!("you do not subscribe to the list {}", text.trim()),
        ));
    }
    Ok(room_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_levels_are_checked() {
        assert_eq!(kind(" user ").ok(), Some(PolicyKind::User));
        assert_eq!(kind("server").ok(), Some(PolicyKind::Server));
        let wrong = kind("users").err().unwrap();
        assert_eq!(
            (wrong.status, wrong.errcode.as_str()),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
        );
        assert_eq!(level("warn").ok(), Some(Level::Warn));
        let wrong = level("mute").err().unwrap();
        assert_eq!(wrong.errcode, "M_INVALID_PARAM");
        assert!(
            wrong.message.contains("hide, blur or warn"),
            "{}",
            wrong.message
        );
        assert!(entity("  ").is_err());
    }

    #[test]
    fn the_creator_or_enough_power_writes_rules() {
        let state = |creator: &str, users: Value| {
            vec![
                json!({"type": "m.room.create", "state_key": "", "sender": creator, "content": {}}),
                json!({"type": "m.room.power_levels", "state_key": "", "sender": creator,
                       "content": {"users": users, "state_default": 50}}),
            ]
        };
        assert!(can_write_rules(&state("@me:x", json!({})), "@me:x"));
        assert!(!can_write_rules(&state("@them:x", json!({})), "@me:x"));
        assert!(can_write_rules(
            &state("@them:x", json!({"@me:x": 50})),
            "@me:x"
        ));
        assert!(!can_write_rules(
            &state("@them:x", json!({"@me:x": 49})),
            "@me:x"
        ));
    }
}
