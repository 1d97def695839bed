//! Evaluating push rules: every timeline event once, in stream order, for each local user in
//! its room but its sender, remembering what notified whom. Whoever needs the result first (a
//! `/sync`, `/notifications`) brings evaluation up to its stream position; one evaluation runs
//! at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hyphae_store::{
    EvaluationBatch, MAIN_THREAD, PushAction, RoomNow, SentMark, Store, StoreError,
};
use ruma::events::AnySyncTimelineEvent;
use ruma::events::room::power_levels::{
    RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
};
use ruma::push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId};
use serde_json::Value;

use super::rules::user_ruleset;

/// Events evaluated per store read and write.
const BATCH: u32 = 256;
/// Notifications are listed for a month, as Synapse keeps them.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often old notifications are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Evaluation never covered anything yet in this process: read the mark from the store.
const UNKNOWN: i64 = i64::MIN;

/// Runs the evaluation; cheap to clone (one per node).
#[derive(Clone)]
pub(crate) struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// How far evaluation has come, once known.
    evaluated: AtomicI64,
    /// Held while evaluating; when old notifications were last dropped.
    running: tokio::sync::Mutex<Option<Instant>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            inner: Arc::new(Inner {
                evaluated: AtomicI64::new(UNKNOWN),
                running: tokio::sync::Mutex::new(None),
            }),
        }
    }
}

impl Notifier {
    /// Evaluates every timeline event up to stream position `upto` that was not yet.
    pub(crate) async fn catch_up(
        &self,
        store: &Store,
        server_name: &ruma::ServerName,
        upto: i64,
    ) -> Result<(), StoreError> {
        let evaluated = self.inner.evaluated.load(Ordering::Acquire);
        if evaluated != UNKNOWN && evaluated >= upto {
            return Ok(());
        }
        let mut last_prune = self.inner.running.lock().await;
        let mut mark = match self.inner.evaluated.load(Ordering::Acquire) {
            UNKNOWN => store.push_actions_mark().await?,
            mark => mark,
        };
        let local_suffix = format!(":{server_name}");
        while mark < upto {
            let batch = store
                .push_evaluation_batch(mark, upto, BATCH, local_suffix.clone())
                .await?;
            let (actions, sent) = evaluate(store, &batch, &local_suffix).await?;
            let prune = match *last_prune {
                Some(at) if at.elapsed() < PRUNE_EVERY => None,
                _ => {
                    *last_prune = Some(Instant::now());
                    Some(now_ms() - KEEP.as_millis() as i64)
                }
            };
            store
                .record_push_actions(actions, sent, batch.upto, prune)
                .await?;
            mark = batch.upto;
            self.inner.evaluated.store(mark, Ordering::Release);
        }
        self.inner.evaluated.fetch_max(mark, Ordering::AcqRel);
        Ok(())
    }
}

fn now_ms() -> i64 {
    i64::from(ruma::MilliSecondsSinceUnixEpoch::now().0)
}

/// The thread an event is in: the root of its `m.thread` relation, else the main timeline.
pub(crate) fn thread_of(content: &Value) -> String {
    let relation = &content["m.relates_to"];
    match (relation["rel_type"].as_str(), relation["event_id"].as_str()) {
        (Some("m.thread"), Some(root)) => root.to_owned(),
        _ => MAIN_THREAD.to_owned(),
    }
}

/// What the rules need of a room, built once per batch.
struct RoomContext {
    room_id: OwnedRoomId,
    member_count: UInt,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

impl RoomContext {
    fn new(room_id: OwnedRoomId, room: &RoomNow) -> RoomContext {
        RoomContext {
            room_id,
            member_count: UInt::try_from(room.joined_members).unwrap_or(UInt::MAX),
            power_levels: power_levels(room),
        }
    }
}

/// The room's power levels as push conditions read them (who may notify the whole room); `None`
/// when they cannot be read, so rules that need them do not match.
fn power_levels(room: &RoomNow) -> Option<PushConditionPowerLevelsCtx> {
    let version = RoomVersionId::try_from(room.room_version.as_deref()?).ok()?;
    let rules = version.rules()?;
    let mut creators: Vec<OwnedUserId> = Vec::new();
    if let Some((sender, content)) = &room.create {
        creators.extend(UserId::parse(sender.as_str()).ok());
        let content: Value = serde_json::from_str(content).unwrap_or_default();
        if let Some(additional) = content["additional_creators"].as_array() {
            creators.extend(
                additional
                    .iter()
                    .filter_map(|c| UserId::parse(c.as_str()?).ok()),
            );
        }
    }
    let source = match &room.power_levels {
        Some(content) => RoomPowerLevelsSource::Original(
            serde_json::from_str::<RoomPowerLevelsEventContent>(content).ok()?,
        ),
        None => RoomPowerLevelsSource::None,
    };
    Some(RoomPowerLevels::new(source, &rules.authorization, creators).into())
}

/// Evaluates one batch: who each event notified, and where local users sent events.
async fn evaluate(
    store: &Store,
    batch: &EvaluationBatch,
    local_suffix: &str,
) -> Result<(Vec<PushAction>, Vec<SentMark>), StoreError> {
    let mut actions = Vec::new();
    let mut sent = Vec::new();
    let mut rulesets: HashMap<String, Ruleset> = HashMap::new();
    let mut rooms: HashMap<&str, Option<RoomContext>> = HashMap::new();
    for event in &batch.events {
        let Some(stream_pos) = event.pdu.stream_pos else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<Value>(&event.pdu.json) else {
            tracing::error!(event_id = %event.pdu.event_id, "skipping a damaged stored event");
            continue;
        };
        let thread_id = thread_of(&json["content"]);
        if event.sender.ends_with(local_suffix) {
            sent.push(SentMark {
                user_id: event.sender.clone(),
                room_id: event.pdu.room_id.clone(),
                thread_id: thread_id.clone(),
                stream_pos,
            });
        }
        let room = rooms.entry(event.pdu.room_id.as_str()).or_insert_with(|| {
            let room_id = RoomId::parse(&event.pdu.room_id).ok()?;
            let now = batch.rooms.get(&event.pdu.room_id)?;
            Some(RoomContext::new(room_id, now))
        });
        let Some(room) = room else {
            continue;
        };
        let invitee = (json["type"] == "m.room.member"
            && json["content"]["membership"] == "invite")
            .then(|| json["state_key"].as_str())
            .flatten();
        let Ok(raw) = serde_json::value::RawValue::from_string(event.pdu.json.clone()) else {
            continue;
        };
        let raw: Raw<AnySyncTimelineEvent> = Raw::from_json(raw);
        for member in &event.local_members {
            let joined = member.membership.as_deref() == Some("join");
            // An invite notifies the invitee, who is not in the room yet.
            let invited = invitee == Some(member.user_id.as_str());
            if member.user_id == event.sender || !(joined || invited) {
                continue;
            }
            let Ok(user_id) = UserId::parse(member.user_id.as_str()) else {
                continue;
            };
            // The node's own service accounts read nothing.
            if user_id.localpart().starts_with("_hyphae") {
                continue;
            }
            let ruleset = match rulesets.get(&member.user_id) {
                Some(ruleset) => ruleset,
                None => {
                    let ruleset = user_ruleset(store, &user_id).await?;
                    rulesets.entry(member.user_id.clone()).or_insert(ruleset)
                }
            };
            let mut context = PushConditionRoomCtx::new(
                room.room_id.clone(),
                room.member_count,
                user_id.clone(),
                member.displayname.clone().unwrap_or_default(),
            );
            if let Some(power_levels) = &room.power_levels {
                context = context.with_power_levels(power_levels.clone());
            }
            let matched = ruleset.get_actions(&raw, &context).await;
            if !matched.iter().any(Action::should_notify) {
                continue;
            }
            actions.push(PushAction {
                user_id: member.user_id.clone(),
                stream_pos,
                room_id: event.pdu.room_id.clone(),
                event_id: event.pdu.event_id.clone(),
                thread_id: thread_id.clone(),
                highlight: matched.iter().any(Action::is_highlight),
                actions: serde_json::to_string(matched).unwrap_or_else(|_| "[]".into()),
            });
        }
    }
    Ok((actions, sent))
}
