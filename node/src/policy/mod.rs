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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hyphae_store::{Store, StoreError};
use ruma::{OwnedRoomId, OwnedServerName, RoomId};
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
    /// Whose users' memberships say which of their subscriptions count.
    server_name: OwnedServerName,
    /// The lists and the subscriptions, behind one lock: a compile that finishes, a
    /// subscription that ends and the edge's view of the node's lists change together, so no
    /// interleaving leaves a list that is not needed, or an edge view older than the lists.
    registry: RwLock<Registry>,
    /// The node's lists as the federation edge reads them: one lock read per check. Written
    /// only with `registry` held for writing.
    node_lists: RwLock<Arc<Vec<Arc<CompiledList>>>>,
    /// Counts changes to subscribed rooms' state. A compile notes it before reading the
    /// state, and a compile noting less than the list in place was compiled with is dropped:
    /// an older read never replaces a newer one.
    changes: AtomicU64,
    /// Lists whose room state changed since they were compiled.
    dirty: Mutex<HashSet<OwnedRoomId>>,
    /// Held while compiling: one compile at a time, whether the worker's or a subscriber's
    /// waiting for their list (compiling is CPU work; two at once only race).
    compiling: tokio::sync::Mutex<()>,
    wake: Arc<tokio::sync::Notify>,
    worker: Mutex<Option<tokio::task::AbortHandle>>,
}

#[derive(Default)]
struct Registry {
    /// Every list some subscription in effect names, compiled, with the change count it was
    /// compiled at.
    lists: HashMap<OwnedRoomId, (u64, Arc<CompiledList>)>,
    /// The node's own subscriptions, in order.
    node_subscriptions: Vec<OwnedRoomId>,
    /// Each local user's subscriptions as their account data says, by localpart.
    requested: HashMap<String, Arc<Vec<PolicySubscription>>>,
    /// Of those, the ones in effect: lists whose room the user is joined to. Anyone can write
    /// any room id into their account data; only a member of a room may have this node read
    /// that room's state for them (and have its rules turn their joins down).
    users: HashMap<String, Arc<Vec<PolicySubscription>>>,
}

impl Registry {
    /// Every list some subscription in effect names.
    fn needed(&self) -> HashSet<OwnedRoomId> {
        let mut needed: HashSet<OwnedRoomId> = self.node_subscriptions.iter().cloned().collect();
        for subscriptions in self.users.values() {
            needed.extend(subscriptions.iter().map(|s| s.room_id.clone()));
        }
        needed
    }

    fn is_needed(&self, room_id: &RoomId) -> bool {
        self.node_subscriptions.iter().any(|r| r == room_id)
            || self
                .users
                .values()
                .any(|subs| subs.iter().any(|s| s.room_id == room_id))
    }

    /// Whether a change to the room's state matters: it is a list in effect, or one a user
    /// asked for (the change may be their joining it).
    fn watches(&self, room_id: &RoomId) -> bool {
        self.lists.contains_key(room_id)
            || self.is_needed(room_id)
            || self
                .requested
                .values()
                .any(|subs| subs.iter().any(|s| s.room_id == room_id))
    }

    /// The users who asked for the list.
    fn requesting(&self, room_id: &RoomId) -> Vec<String> {
        self.requested
            .iter()
            .filter(|(_, subs)| subs.iter().any(|s| s.room_id == room_id))
            .map(|(localpart, _)| localpart.clone())
            .collect()
    }
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
    pub(crate) fn new(store: Store, server_name: OwnedServerName) -> Policy {
        Policy {
            inner: Arc::new(Inner {
                store,
                server_name,
                registry: RwLock::default(),
                node_lists: RwLock::default(),
                changes: AtomicU64::new(0),
                dirty: Mutex::default(),
                compiling: tokio::sync::Mutex::default(),
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
        let mut requested = HashMap::new();
        for (localpart, content) in self
            .inner
            .store
            .global_account_data_of_type(SUBSCRIPTIONS_DATA.into())
            .await?
        {
            let subscriptions = parse_subscriptions(&localpart, &content);
            requested.insert(localpart, Arc::new(subscriptions));
        }
        {
            let mut registry = write(&self.inner.registry);
            registry.node_subscriptions = node;
            registry.requested = requested.clone();
        }
        for (localpart, subscriptions) in &requested {
            self.settle_user(localpart, subscriptions, true).await?;
        }
        let needed = read(&self.inner.registry).needed();
        for room_id in needed {
            self.ensure_list(&room_id).await?;
        }

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

    /// Whether the room is a list the node itself subscribes to. Only those are exempt from
    /// the node's bans (refusing a list's events would cut the node off from the very rules
    /// it follows); a list only some user subscribes to is a room like any other, or any
    /// user could switch the node's bans off in a room by naming it in their account data.
    pub(crate) fn is_node_list(&self, room_id: &RoomId) -> bool {
        read(&self.inner.registry)
            .node_subscriptions
            .iter()
            .any(|r| r == room_id)
    }

    /// A state event was accepted into `room_id` (built here or received), or a state event
    /// of it was redacted, or the node joined it: a subscribed list is compiled again, soon,
    /// off the caller's path.
    pub(crate) fn state_changed(&self, room_id: &RoomId) {
        // A list being compiled for the first time is not in `lists` yet, but it is watched:
        // its change must not be lost to that race. A room a user asked for but is not in
        // is watched too: the change may be their join, which puts the list in effect.
        if !read(&self.inner.registry).watches(room_id) {
            return;
        }
        // Counted before it is marked: a compile that started before this change notes a
        // smaller count than the one it causes.
        self.inner.changes.fetch_add(1, Ordering::SeqCst);
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
            // A member event may have put a user's subscription in or out of effect.
            let requesting = read(&self.inner.registry).requesting(&room_id);
            for localpart in requesting {
                let subscriptions = read(&self.inner.registry)
                    .requested
                    .get(&localpart)
                    .cloned()
                    .unwrap_or_default();
                if let Err(e) = self.settle_user(&localpart, &subscriptions, false).await {
                    tracing::warn!(localpart, error = %e, "could not check policy subscriptions");
                }
            }
            if !read(&self.inner.registry).is_needed(&room_id) {
                continue;
            }
            if let Err(e) = self.compile(&room_id).await {
                tracing::warn!(list = %room_id, error = %e, "could not compile a policy list");
            }
        }
        self.forget_unneeded();
    }

    /// Compiles the list from its room's current state in the store, and puts it in place
    /// unless it is no longer needed or a compile of a later state is in place already.
    async fn compile(&self, room_id: &RoomId) -> Result<Arc<CompiledList>, PolicyError> {
        let _one_at_a_time = self.inner.compiling.lock().await;
        let count = self.inner.changes.load(Ordering::SeqCst);
        let state = self
            .inner
            .store
            .current_state_pdus(room_id.to_string())
            .await?;
        let owned = room_id.to_owned();
        // Compiling a large list takes milliseconds of CPU: not on a runtime worker.
        let list = tokio::task::spawn_blocking(move || lists::compile(owned, &state))
            .await
            .map_err(|e| PolicyError::Room(format!("compiling the list: {e}")))?;
        let list = Arc::new(list);
        let mut registry = write(&self.inner.registry);
        if !registry.is_needed(room_id) {
            // Unsubscribed while it compiled: not reinstated.
            return Ok(list);
        }
        if let Some((newer, in_place)) = registry.lists.get(room_id)
            && *newer > count
        {
            return Ok(in_place.clone());
        }
        tracing::debug!(list = %room_id, rules = list.len(), "policy list compiled");
        registry
            .lists
            .insert(room_id.to_owned(), (count, list.clone()));
        self.refresh_node_lists(&registry);
        Ok(list)
    }

    async fn ensure_list(&self, room_id: &RoomId) -> Result<Arc<CompiledList>, PolicyError> {
        if let Some((_, list)) = read(&self.inner.registry).lists.get(room_id) {
            return Ok(list.clone());
        }
        self.compile(room_id).await
    }

    /// Puts in effect those of a user's subscriptions whose room they are joined to, unless
    /// the user's subscriptions changed meanwhile (then the change settles them).
    async fn settle_user(
        &self,
        localpart: &str,
        requested: &Arc<Vec<PolicySubscription>>,
        warn: bool,
    ) -> Result<(), PolicyError> {
        let user_id = format!("@{localpart}:{}", self.inner.server_name);
        let mut effective = Vec::new();
        for subscription in requested.iter() {
            let joined = self
                .inner
                .store
                .membership(subscription.room_id.to_string(), user_id.clone())
                .await?
                .is_some_and(|m| m.membership == "join");
            if joined {
                effective.push(subscription.clone());
            } else if warn {
                tracing::warn!(localpart, list = %subscription.room_id, "a policy subscription to a room the user is not in; ignored until they join it");
            }
        }
        let mut registry = write(&self.inner.registry);
        if registry
            .requested
            .get(localpart)
            .is_some_and(|now| Arc::ptr_eq(now, requested))
        {
            registry
                .users
                .insert(localpart.to_owned(), Arc::new(effective));
        }
        Ok(())
    }

    /// Drops compiled lists nobody subscribes to any more, and refreshes the edge's view.
    fn forget_unneeded(&self) {
        let mut registry = write(&self.inner.registry);
        let needed = registry.needed();
        registry.lists.retain(|room_id, _| needed.contains(room_id));
        self.refresh_node_lists(&registry);
    }

    /// Rebuilds the edge's view; the caller holds `registry` for writing, so views are
    /// written in the order the registry changed.
    fn refresh_node_lists(&self, registry: &Registry) {
        let lists = registry
            .node_subscriptions
            .iter()
            .filter_map(|room_id| registry.lists.get(room_id).map(|(_, list)| list.clone()))
            .collect();
        *write(&self.inner.node_lists) = Arc::new(lists);
    }

    /// The compiled list of a room someone subscribes to.
    pub(crate) fn list(&self, room_id: &RoomId) -> Option<Arc<CompiledList>> {
        read(&self.inner.registry)
            .lists
            .get(room_id)
            .map(|(_, list)| list.clone())
    }

    // ----- the node's own subscriptions -----

    pub(crate) fn node_subscriptions(&self) -> Vec<OwnedRoomId> {
        read(&self.inner.registry).node_subscriptions.clone()
    }

    pub(crate) async fn add_node_subscription(&self, room_id: &RoomId) -> Result<(), PolicyError> {
        self.inner
            .store
            .add_node_policy_subscription(room_id.to_string())
            .await?;
        {
            let mut registry = write(&self.inner.registry);
            if !registry.node_subscriptions.iter().any(|r| r == room_id) {
                registry.node_subscriptions.push(room_id.to_owned());
            }
            // A user's list the node now subscribes to too.
            self.refresh_node_lists(&registry);
        }
        self.ensure_list(room_id).await?;
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
        write(&self.inner.registry)
            .node_subscriptions
            .retain(|r| r != room_id);
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
    /// Whether the node's lists ban `sender` in `room_id`, which is not one of those lists (a
    /// list the node follows is exempt: refusing its events would cut the node off from the
    /// rules themselves): the list and the reason.
    pub(crate) fn node_ban_in(
        &self,
        room_id: &RoomId,
        sender: &ruma::UserId,
    ) -> Option<(OwnedRoomId, String)> {
        if !self.node_has_lists() || self.is_node_list(room_id) {
            return None;
        }
        self.node_verdict(&Subject::user(sender))
    }

    pub(crate) fn node_has_lists(&self) -> bool {
        !read(&self.inner.node_lists).is_empty()
    }

    // ----- users' subscriptions -----

    /// A user's subscriptions in effect (to lists whose room they are joined to).
    pub(crate) fn user_subscriptions(&self, localpart: &str) -> Arc<Vec<PolicySubscription>> {
        read(&self.inner.registry)
            .users
            .get(localpart)
            .cloned()
            .unwrap_or_default()
    }

    /// A user's subscriptions changed (their account data was written): their lists are
    /// compiled before this returns, so what they see next already follows them. Lists whose
    /// room they are not joined to are ignored (with a warning) until they join.
    pub(crate) async fn set_user_subscriptions(&self, localpart: &str, content: &str) {
        let requested = Arc::new(parse_subscriptions(localpart, content));
        write(&self.inner.registry)
            .requested
            .insert(localpart.to_owned(), requested.clone());
        if let Err(e) = self.settle_user(localpart, &requested, true).await {
            tracing::warn!(localpart, error = %e, "could not check policy subscriptions");
        }
        for subscription in self.user_subscriptions(localpart).iter() {
            if let Err(e) = self.ensure_list(&subscription.room_id).await {
                tracing::warn!(list = %subscription.room_id, error = %e, "could not compile a policy list");
            }
        }
        self.forget_unneeded();
    }

    /// The strongest verdict of a user's lists on `subject`, if any rule matches.
    pub(crate) fn user_verdict(&self, localpart: &str, subject: &Subject<'_>) -> Option<Verdict> {
        let registry = read(&self.inner.registry);
        let subscriptions = registry.users.get(localpart)?;
        let mut verdict: Option<Verdict> = None;
        for subscription in subscriptions.iter() {
            if verdict
                .as_ref()
                .is_some_and(|v| v.level.severity() >= subscription.level.severity())
            {
                continue;
            }
            let Some((_, list)) = registry.lists.get(&subscription.room_id) else {
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
