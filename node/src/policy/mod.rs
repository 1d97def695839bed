//! Decentralised moderation: policy lists (Matrix policy rooms of `m.policy.rule.*` state) that
//! users and the node itself subscribe to. Owns the subscriptions (the node's in the store, each
//! user's in their account data), the lists compiled for matching (rebuilt when a list room's
//! state changes, never per event), and the verdicts: per user, what the app hides, blurs or
//! flags and which joins are refused; per node, which PDUs the federation edge refuses.

pub mod glob;
pub mod index;
mod lists;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use hyphae_store::{Store, StoreError};
use ruma::{OwnedRoomId, RoomId};
use serde::{Deserialize, Serialize};

pub use index::{CompiledList, Hit, ListBuilder, PolicyKind, Refusal, RuleError, Subject};
pub(crate) use lists::{check_new_rule, join_as_service, rules_of_state, service_user};

/// The account data type holding a user's subscriptions:
/// `{"lists": [{"room_id": "!…", "level": "hide" | "blur" | "warn"}]}`.
pub const SUBSCRIPTIONS_DATA: &str = "io.hyphae.policy_subscriptions";

/// The local account that holds the node's own subscriptions: the node must be in a list's room
/// for the list's state to keep arriving, also on a node without an owner (a backup server),
/// and the owner's own (per-user) subscriptions must not depend on the operator's choices.
pub(crate) const SERVICE_LOCALPART: &str = "_hyphae.policy";

/// What a user's subscription does to what matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Left out of the user's view (nothing is deleted: unsubscribing shows it again).
    Hide,
    /// Shown collapsed with the reason; one click reveals it.
    Blur,
    /// Shown, flagged with the reason.
    Warn,
}

impl Level {
    /// Whether what this level covers is left out of the user's views altogether.
    pub fn hides(self) -> bool {
        self == Level::Hide
    }

    fn severity(self) -> u8 {
        match self {
            Level::Hide => 2,
            Level::Blur => 1,
            Level::Warn => 0,
        }
    }
}

impl std::str::FromStr for Level {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Level, PolicyError> {
        match s {
            "hide" => Ok(Level::Hide),
            "blur" => Ok(Level::Blur),
            "warn" => Ok(Level::Warn),
            _ => Err(PolicyError::BadInput(format!(
                "level {s:?}: use hide, blur or warn"
            ))),
        }
    }
}

/// One list a user subscribes to, and how strongly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySubscription {
    pub room_id: OwnedRoomId,
    pub level: Level,
}

/// Why something is hidden, blurred or flagged for a user: the rule, and the list it is from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub level: Level,
    pub list: OwnedRoomId,
    pub kind: PolicyKind,
    /// The rule's entity (a glob).
    pub entity: String,
    pub reason: String,
}

/// A rule of a list as its room's state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRule {
    pub kind: PolicyKind,
    pub entity: String,
    pub reason: String,
    /// The state key the rule is written under (what removing it empties).
    pub state_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    NotFound(String),
    /// Joining or writing to the list's room failed.
    #[error("{0}")]
    Room(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads a user's subscriptions from their account data; content that is not a list of
/// subscriptions is ignored (with a warning), and so are entries with a bad room id or level.
pub fn parse_subscriptions(localpart: &str, content: &str) -> Vec<PolicySubscription> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(content) else {
        tracing::warn!(localpart, "policy subscriptions are not JSON; ignored");
        return Vec::new();
    };
    let mut subscriptions: Vec<PolicySubscription> = Vec::new();
    for entry in value["lists"].as_array().into_iter().flatten() {
        match serde_json::from_value::<PolicySubscription>(entry.clone()) {
            Ok(s) if !subscriptions.iter().any(|t| t.room_id == s.room_id) => subscriptions.push(s),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(localpart, error = %e, "a policy subscription is malformed; ignored")
            }
        }
    }
    subscriptions
}

/// The node's policy lists and who subscribes to them; cheap to clone.
#[derive(Clone)]
pub(crate) struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Every list some subscription names, compiled.
    lists: RwLock<HashMap<OwnedRoomId, Arc<CompiledList>>>,
    /// The node's own subscriptions, in order.
    node_subscriptions: RwLock<Vec<OwnedRoomId>>,
    /// The node's lists as the federation edge reads them: one lock read per check.
    node_lists: RwLock<Arc<Vec<Arc<CompiledList>>>>,
    /// Each local user's subscriptions, by localpart (all of them, read at start).
    users: RwLock<HashMap<String, Arc<Vec<PolicySubscription>>>>,
    /// Lists whose room state changed since they were compiled.
    dirty: Mutex<HashSet<OwnedRoomId>>,
    wake: Arc<tokio::sync::Notify>,
    worker: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            worker.abort();
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Policy {
    pub(crate) fn new(store: Store) -> Policy {
        Policy {
            inner: Arc::new(Inner {
                store,
                lists: RwLock::default(),
                node_subscriptions: RwLock::default(),
                node_lists: RwLock::default(),
                users: RwLock::default(),
                dirty: Mutex::default(),
                wake: Arc::default(),
                worker: Mutex::default(),
            }),
        }
    }

    /// Reads every subscription (the node's and its users'), compiles their lists, and starts
    /// recompiling lists as their rooms change.
    pub(crate) async fn start(&self) -> Result<(), PolicyError> {
        let mut node = Vec::new();
        for room_id in self.inner.store.node_policy_subscriptions().await? {
            match RoomId::parse(&room_id) {
                Ok(room_id) => node.push(room_id),
                Err(e) => tracing::warn!(%room_id, error = %e, "stored policy subscription"),
            }
        }
        *write(&self.inner.node_subscriptions) = node;
        let mut users = HashMap::new();
        for (localpart, content) in self
            .inner
            .store
            .global_account_data_of_type(SUBSCRIPTIONS_DATA.into())
            .await?
        {
            let subscriptions = parse_subscriptions(&localpart, &content);
            users.insert(localpart, Arc::new(subscriptions));
        }
        *write(&self.inner.users) = users;
        for room_id in self.needed() {
            self.ensure_list(&room_id).await?;
        }
        self.refresh_node_lists();

        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        let worker = tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                // Changes that arrive while this runs wake it again: a burst of rule events
                // (a large list arriving) costs a few compiles, not one per event.
                Policy { inner }.recompile_dirty().await;
            }
        });
        *self.inner.worker.lock().unwrap_or_else(|e| e.into_inner()) = Some(worker.abort_handle());
        Ok(())
    }

    /// Whether the room is a list someone here subscribes to.
    pub(crate) fn is_list(&self, room_id: &RoomId) -> bool {
        read(&self.inner.lists).contains_key(room_id)
    }

    /// A state event was accepted into `room_id` (built here or received): a subscribed list
    /// is compiled again, soon, off the caller's path.
    pub(crate) fn state_changed(&self, room_id: &RoomId) {
        // A list being compiled for the first time is not in `lists` yet, but it is needed:
        // its change must not be lost to that race.
        if !self.is_list(room_id) && !self.needed().contains(room_id) {
            return;
        }
        self.inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room_id.to_owned());
        self.inner.wake.notify_one();
    }

    async fn recompile_dirty(&self) {
        let dirty: Vec<OwnedRoomId> = self
            .inner
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for room_id in dirty {
            if let Err(e) = self.compile(&room_id).await {
                tracing::warn!(list = %room_id, error = %e, "could not compile a policy list");
            }
        }
        self.refresh_node_lists();
    }

    /// Compiles the list from its room's current state in the store, and puts it in place.
    async fn compile(&self, room_id: &RoomId) -> Result<Arc<CompiledList>, PolicyError> {
        let state = self
            .inner
            .store
            .current_state_pdus(room_id.to_string())
            .await?;
        let room_id = room_id.to_owned();
        // Compiling a large list takes milliseconds of CPU: not on a runtime worker.
        let list = tokio::task::spawn_blocking(move || lists::compile(room_id, &state))
            .await
            .map_err(|e| PolicyError::Room(format!("compiling the list: {e}")))?;
        let list = Arc::new(list);
        tracing::debug!(list = %list.room_id(), rules = list.len(), "policy list compiled");
        write(&self.inner.lists).insert(list.room_id().clone(), list.clone());
        Ok(list)
    }

    async fn ensure_list(&self, room_id: &RoomId) -> Result<Arc<CompiledList>, PolicyError> {
        if let Some(list) = read(&self.inner.lists).get(room_id) {
            return Ok(list.clone());
        }
        self.compile(room_id).await
    }

    /// Every list some subscription names.
    fn needed(&self) -> HashSet<OwnedRoomId> {
        let mut needed: HashSet<OwnedRoomId> = read(&self.inner.node_subscriptions)
            .iter()
            .cloned()
            .collect();
        for subscriptions in read(&self.inner.users).values() {
            needed.extend(subscriptions.iter().map(|s| s.room_id.clone()));
        }
        needed
    }

    /// Drops compiled lists nobody subscribes to any more, and refreshes the edge's view.
    fn forget_unneeded(&self) {
        let needed = self.needed();
        write(&self.inner.lists).retain(|room_id, _| needed.contains(room_id));
        self.refresh_node_lists();
    }

    fn refresh_node_lists(&self) {
        let lists = {
            let compiled = read(&self.inner.lists);
            read(&self.inner.node_subscriptions)
                .iter()
                .filter_map(|room_id| compiled.get(room_id).cloned())
                .collect()
        };
        *write(&self.inner.node_lists) = Arc::new(lists);
    }

    /// The compiled list of a room someone subscribes to.
    pub(crate) fn list(&self, room_id: &RoomId) -> Option<Arc<CompiledList>> {
        read(&self.inner.lists).get(room_id).cloned()
    }

    // ----- the node's own subscriptions -----

    pub(crate) fn node_subscriptions(&self) -> Vec<OwnedRoomId> {
        read(&self.inner.node_subscriptions).clone()
    }

    pub(crate) async fn add_node_subscription(&self, room_id: &RoomId) -> Result<(), PolicyError> {
        self.inner
            .store
            .add_node_policy_subscription(room_id.to_string())
            .await?;
        {
            let mut subscriptions = write(&self.inner.node_subscriptions);
            if !subscriptions.iter().any(|r| r == room_id) {
                subscriptions.push(room_id.to_owned());
            }
        }
        self.ensure_list(room_id).await?;
        self.refresh_node_lists();
        Ok(())
    }

    pub(crate) async fn remove_node_subscription(
        &self,
        room_id: &RoomId,
    ) -> Result<bool, PolicyError> {
        let removed = self
            .inner
            .store
            .remove_node_policy_subscription(room_id.to_string())
            .await?;
        write(&self.inner.node_subscriptions).retain(|r| r != room_id);
        self.forget_unneeded();
        Ok(removed)
    }

    /// The node-level rule banning `subject`, and its list. The hot path of the federation
    /// edge: one lock read, then the lists' indexes.
    pub(crate) fn node_verdict(&self, subject: &Subject<'_>) -> Option<(OwnedRoomId, String)> {
        let lists = read(&self.inner.node_lists).clone();
        lists.iter().find_map(|list| {
            list.check(subject).map(|hit| {
                (
                    list.room_id().clone(),
                    format!(
                        "refused by policy list {}: {} rule {} ({})",
                        list.room_id(),
                        hit.kind,
                        hit.entity,
                        hit.reason
                    ),
                )
            })
        })
    }

    /// Whether the node subscribes to any list (the edge skips all checks when not).
    pub(crate) fn node_has_lists(&self) -> bool {
        !read(&self.inner.node_lists).is_empty()
    }

    // ----- users' subscriptions -----

    pub(crate) fn user_subscriptions(&self, localpart: &str) -> Arc<Vec<PolicySubscription>> {
        read(&self.inner.users)
            .get(localpart)
            .cloned()
            .unwrap_or_default()
    }

    /// A user's subscriptions changed (their account data was written): their lists are
    /// compiled before this returns, so what they see next already follows them.
    pub(crate) async fn set_user_subscriptions(&self, localpart: &str, content: &str) {
        let subscriptions = Arc::new(parse_subscriptions(localpart, content));
        write(&self.inner.users).insert(localpart.to_owned(), subscriptions.clone());
        for subscription in subscriptions.iter() {
            if let Err(e) = self.ensure_list(&subscription.room_id).await {
                tracing::warn!(list = %subscription.room_id, error = %e, "could not compile a policy list");
            }
        }
        self.forget_unneeded();
    }

    /// The strongest verdict of a user's lists on `subject`, if any rule matches.
    pub(crate) fn user_verdict(&self, localpart: &str, subject: &Subject<'_>) -> Option<Verdict> {
        let subscriptions = self.user_subscriptions(localpart);
        if subscriptions.is_empty() {
            return None;
        }
        let lists = read(&self.inner.lists);
        let mut verdict: Option<Verdict> = None;
        for subscription in subscriptions.iter() {
            if verdict
                .as_ref()
                .is_some_and(|v| v.level.severity() >= subscription.level.severity())
            {
                continue;
            }
            let Some(list) = lists.get(&subscription.room_id) else {
                continue;
            };
            if let Some(hit) = list.check(subject) {
                verdict = Some(Verdict {
                    level: subscription.level,
                    list: subscription.room_id.clone(),
                    kind: hit.kind,
                    entity: hit.entity.to_owned(),
                    reason: hit.reason.to_owned(),
                });
            }
        }
        verdict
    }
}
