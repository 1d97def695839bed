//! Presence: online, unavailable or offline. This node's users are online while they sync and
//! as they set it; other servers' users are online while their node is connected here, unless
//! their server said otherwise in an `m.presence` EDU. Changes have a serial of their own (the
//! `_p` part of the sync token), and a waiting `/sync` wakes only for the people it shares a
//! room with, so a crowd of peers coming and going does not wake every long-poll on the node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyphae_store::{PresenceRow, Store, StoreError};
use ruma::presence::PresenceState;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::json;
use tokio::sync::{Notify, oneshot, watch};

use super::now_ms;
use crate::federation::Federation;

mod remote;

/// A local user who has not synced for this long shows as unavailable (idle). Longer than the
/// longest `/sync` long-poll (120 s), so a client that keeps polling never looks idle.
pub(crate) const UNAVAILABLE_AFTER: Duration = Duration::from_secs(3 * 60);
/// A local user who has not synced for this long shows as offline: the client is gone.
pub(crate) const OFFLINE_AFTER: Duration = Duration::from_secs(10 * 60);
/// While a user syncs, their last activity is written to the store at most this often.
const STORE_ACTIVITY_EVERY_MS: i64 = 60_000;
/// The longest status message taken, from a client or another server (bytes).
pub(crate) const MAX_STATUS_MSG: usize = 1024;

/// What a user's presence shows to others.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shown {
    pub(crate) presence: PresenceState,
    pub(crate) last_active_ago: Option<Duration>,
    pub(crate) currently_active: bool,
    pub(crate) status_msg: Option<String>,
}

impl Shown {
    /// As an `m.presence` event's content.
    pub(crate) fn content(&self) -> serde_json::Value {
        let mut content = json!({
            "presence": self.presence.as_str(),
            "currently_active": self.currently_active,
        });
        if let Some(ago) = self.last_active_ago {
            content["last_active_ago"] = (ago.as_millis() as u64).into();
        }
        if let Some(message) = &self.status_msg {
            content["status_msg"] = message.clone().into();
        }
        content
    }
}

/// A presence as set: by a local user, or by another server for its user.
#[derive(Debug, Clone)]
struct Record {
    state: PresenceState,
    explicit: bool,
    status_msg: Option<String>,
    last_active_ms: i64,
    /// `last_active_ms` as the store has it.
    stored_active_ms: i64,
}

impl Record {
    fn row(&self, user_id: &UserId) -> PresenceRow {
        PresenceRow {
            user_id: user_id.to_string(),
            state: self.state.as_str().to_owned(),
            explicit: self.explicit,
            status_msg: self.status_msg.clone(),
            last_active_ms: self.last_active_ms,
        }
    }
}

/// What a local user's presence is at `now`, from how they set it and when they were last
/// active.
fn local_state(record: &Record, now: i64) -> PresenceState {
    let idle = now.saturating_sub(record.last_active_ms);
    match record.state {
        PresenceState::Offline => PresenceState::Offline,
        _ if idle >= OFFLINE_AFTER.as_millis() as i64 => PresenceState::Offline,
        PresenceState::Unavailable => PresenceState::Unavailable,
        _ if idle >= UNAVAILABLE_AFTER.as_millis() as i64 => PresenceState::Unavailable,
        _ => PresenceState::Online,
    }
}

/// When a local user's presence changes next by itself (goes idle, then offline), if it does.
fn next_change(record: &Record, now: i64) -> Option<i64> {
    let at = |after: Duration| record.last_active_ms + after.as_millis() as i64;
    match local_state(record, now) {
        PresenceState::Online => Some(at(UNAVAILABLE_AFTER)),
        PresenceState::Unavailable => Some(at(OFFLINE_AFTER)),
        _ => None,
    }
}

#[derive(Clone)]
pub(crate) struct Presence {
    inner: Arc<Inner>,
    // Dropped with the last handle, which stops the timer task.
    _stop: Arc<oneshot::Sender<()>>,
}

struct Inner {
    server_name: OwnedServerName,
    store: Store,
    federation: Federation,
    book: Mutex<Book>,
    /// Bumped on every change; `/sync` carries it in its token.
    serial: watch::Sender<u64>,
    /// The serial at start: a token from before it (an earlier run) is told everything.
    started: u64,
    timer_changed: Notify,
}

#[derive(Default)]
struct Book {
    records: HashMap<OwnedUserId, Record>,
    /// Local users' presence as last counted as a change (and told to other servers).
    announced: HashMap<OwnedUserId, (PresenceState, Option<String>)>,
    connected: HashSet<OwnedServerName>,
    last_seen: HashMap<OwnedServerName, i64>,
    changed_users: HashMap<OwnedUserId, u64>,
    changed_servers: HashMap<OwnedServerName, u64>,
}

/// A change to count: one user's presence, or that of every user of a server.
enum Changed<'a> {
    User(&'a UserId),
    Server(&'a ServerName),
}

impl Presence {
    /// Loads what the store holds and starts the timer that moves idle users to unavailable
    /// and offline.
    pub(crate) async fn start(
        store: Store,
        federation: Federation,
        server_name: OwnedServerName,
    ) -> Result<Presence, StoreError> {
        let mut book = Book::default();
        let now = now_ms();
        for row in store.presence_rows().await? {
            let Ok(user_id) = UserId::parse(&row.user_id) else {
                continue;
            };
            let record = Record {
                state: PresenceState::from(row.state.as_str()),
                explicit: row.explicit,
                status_msg: row.status_msg,
                last_active_ms: row.last_active_ms,
                stored_active_ms: row.last_active_ms,
            };
            if user_id.server_name() == server_name {
                let shown = (local_state(&record, now), record.status_msg.clone());
                book.announced.insert(user_id.clone(), shown);
            }
            book.records.insert(user_id, record);
        }
        for (server, seen) in store.servers_last_seen().await? {
            if let Ok(server) = OwnedServerName::try_from(server) {
                book.last_seen.insert(server, seen);
            }
        }
        // Milliseconds since the epoch: larger than any serial of an earlier run, as long as
        // a run counts fewer changes than it lasts milliseconds.
        let started = u64::try_from(now).unwrap_or_default();
        let inner = Arc::new(Inner {
            server_name,
            store,
            federation,
            book: Mutex::new(book),
            serial: watch::channel(started).0,
            started,
            timer_changed: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(expire(inner.clone(), stopped));
        Ok(Presence {
            inner,
            _stop: Arc::new(stop),
        })
    }

    pub(crate) fn serial(&self) -> watch::Receiver<u64> {
        self.inner.serial.subscribe()
    }

    pub(crate) fn current(&self) -> u64 {
        *self.inner.serial.borrow()
    }

    /// What `user_id`'s presence shows now.
    pub(crate) fn shown(&self, user_id: &UserId) -> Shown {
        self.inner.shown(&self.inner.lock(), user_id, now_ms())
    }

    /// The serial now, and the presence of those of `users` that changed after `since`. With no
    /// `since` (a first sync): everyone who is not offline. A serial from an earlier run, or
    /// one this node never gave, gets everyone.
    pub(crate) fn changes(
        &self,
        users: &[OwnedUserId],
        since: Option<u64>,
    ) -> (u64, Vec<(OwnedUserId, Shown)>) {
        let book = self.inner.lock();
        let current = self.current();
        let now = now_ms();
        let mut changed = Vec::new();
        for user in users {
            let shown = self.inner.shown(&book, user, now);
            let include = match since {
                None => shown.presence != PresenceState::Offline,
                Some(since) if since < self.inner.started || since > current => true,
                Some(since) => book.changed_after(user, since),
            };
            if include {
                changed.push((user.clone(), shown));
            }
        }
        (current, changed)
    }

    /// Whether any of `users` changed after serial `since`.
    pub(crate) fn any_changed(&self, users: &HashSet<OwnedUserId>, since: u64) -> bool {
        let book = self.inner.lock();
        users.iter().any(|user| book.changed_after(user, since))
    }

    /// A local user syncs, with `set_presence` as the sync says: online (the default) marks
    /// them active, but does not override unavailable or offline set with `PUT /presence`;
    /// unavailable or offline sets that.
    pub(crate) async fn syncing(&self, user_id: &UserId, set_presence: &PresenceState) {
        let now = now_ms();
        self.update_local(user_id, |record| match set_presence {
            PresenceState::Offline => {
                record.state = PresenceState::Offline;
                record.explicit = false;
            }
            PresenceState::Unavailable => {
                record.state = PresenceState::Unavailable;
                record.explicit = false;
                record.last_active_ms = now;
            }
            // Appearing offline (set so): nothing shows that the client is here.
            _ if record.explicit && record.state == PresenceState::Offline => {}
            // Online, or a state this server does not know: the client is here.
            _ => {
                if !record.explicit {
                    record.state = PresenceState::Online;
                }
                record.last_active_ms = now;
            }
        })
        .await;
    }

    /// A local user sets their presence (`PUT /presence/{userId}/status`).
    pub(crate) async fn set(
        &self,
        user_id: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
    ) {
        let now = now_ms();
        self.update_local(user_id, move |record| {
            record.explicit = state != PresenceState::Online;
            if state != PresenceState::Offline {
                record.last_active_ms = now;
            }
            record.state = state;
            record.status_msg = status_msg;
        })
        .await;
    }

    /// Changes a local user's record; counts and tells the change if what shows changed, and
    /// writes what the store must keep.
    async fn update_local(&self, user_id: &UserId, change: impl FnOnce(&mut Record)) {
        let now = now_ms();
        let (kept, changed) = {
            let mut book = self.inner.lock();
            let record = book
                .records
                .entry(user_id.to_owned())
                .or_insert_with(|| Record {
                    state: PresenceState::Offline,
                    explicit: false,
                    status_msg: None,
                    last_active_ms: 0,
                    stored_active_ms: -1,
                });
            let before = (
                record.state.clone(),
                record.explicit,
                record.status_msg.clone(),
            );
            change(record);
            let set_differs = before
                != (
                    record.state.clone(),
                    record.explicit,
                    record.status_msg.clone(),
                );
            // Queued under the lock: the store keeps the changes in the order they were made.
            let kept = (set_differs
                || record.stored_active_ms < 0
                || record.last_active_ms - record.stored_active_ms >= STORE_ACTIVITY_EVERY_MS)
                .then(|| {
                    record.stored_active_ms = record.last_active_ms;
                    self.inner.store.put_presence(record.row(user_id))
                });
            let shown = (local_state(record, now), record.status_msg.clone());
            let changed = book.announced.get(user_id) != Some(&shown);
            if changed {
                book.announced.insert(user_id.to_owned(), shown);
                self.inner.bump(&mut book, [Changed::User(user_id)]);
            }
            (kept, changed)
        };
        self.inner.timer_changed.notify_one();
        if let Some(kept) = kept
            && let Err(e) = kept.await
        {
            tracing::warn!(%user_id, error = %e, "could not keep a presence");
        }
        if changed {
            self.inner.tell_servers(user_id).await;
        }
    }
}

impl Book {
    fn changed_after(&self, user: &UserId, since: u64) -> bool {
        self.changed_users.get(user).is_some_and(|at| *at > since)
            || self
                .changed_servers
                .get(user.server_name())
                .is_some_and(|at| *at > since)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump<'a>(&self, book: &mut Book, changed: impl IntoIterator<Item = Changed<'a>>) {
        self.serial.send_modify(|serial| *serial += 1);
        let serial = *self.serial.borrow();
        for change in changed {
            match change {
                Changed::User(user) => book.changed_users.insert(user.to_owned(), serial),
                Changed::Server(server) => book.changed_servers.insert(server.to_owned(), serial),
            };
        }
    }

    fn shown(&self, book: &Book, user_id: &UserId, now: i64) -> Shown {
        let record = book.records.get(user_id);
        // 0: never active as far as this node knows.
        let ago =
            |at: i64| (at > 0).then(|| Duration::from_millis(now.saturating_sub(at).max(0) as u64));
        let status_msg = record.and_then(|r| r.status_msg.clone());
        if user_id.server_name() == self.server_name {
            let Some(record) = record else {
                return Shown {
                    presence: PresenceState::Offline,
                    last_active_ago: None,
                    currently_active: false,
                    status_msg: None,
                };
            };
            let presence = local_state(record, now);
            return Shown {
                currently_active: presence == PresenceState::Online,
                presence,
                last_active_ago: ago(record.last_active_ms),
                status_msg,
            };
        }
        let server = user_id.server_name();
        if !book.connected.contains(server) {
            return Shown {
                presence: PresenceState::Offline,
                last_active_ago: book.last_seen.get(server).and_then(|at| ago(*at)),
                currently_active: false,
                status_msg,
            };
        }
        match record {
            // Connected, but its server said the user is away or appears offline.
            Some(record) if record.state != PresenceState::Online => Shown {
                presence: record.state.clone(),
                last_active_ago: ago(record.last_active_ms),
                currently_active: false,
                status_msg,
            },
            _ => Shown {
                presence: PresenceState::Online,
                last_active_ago: ago(now),
                currently_active: true,
                status_msg,
            },
        }
    }

    /// Counts (and tells) the local users whose presence changed by itself by `now`.
    async fn expire_due(&self) {
        let now = now_ms();
        let changed: Vec<OwnedUserId> = {
            let mut book = self.lock();
            let changed: Vec<(OwnedUserId, (PresenceState, Option<String>))> = book
                .records
                .iter()
                .filter(|(user, _)| user.server_name() == self.server_name)
                .map(|(user, record)| {
                    let shown = (local_state(record, now), record.status_msg.clone());
                    (user.clone(), shown)
                })
                .filter(|(user, shown)| book.announced.get(user) != Some(shown))
                .collect();
            if !changed.is_empty() {
                self.bump(
                    &mut book,
                    changed.iter().map(|(user, _)| Changed::User(user)),
                );
            }
            changed
                .into_iter()
                .map(|(user, shown)| {
                    book.announced.insert(user.clone(), shown);
                    user
                })
                .collect()
        };
        for user in changed {
            self.tell_servers(&user).await;
        }
    }

    /// When the next local user goes idle or offline by themselves.
    fn next_due(&self) -> Option<i64> {
        let now = now_ms();
        self.lock()
            .records
            .iter()
            .filter(|(user, _)| user.server_name() == self.server_name)
            .filter_map(|(_, record)| next_change(record, now))
            .min()
    }
}

/// Moves local users to unavailable and offline on time, sleeping until the next change rather
/// than polling; ends when the last `Presence` handle is dropped.
async fn expire(inner: Arc<Inner>, mut stopped: oneshot::Receiver<()>) {
    loop {
        // A change after this line still wakes the select: notify_one keeps a permit.
        let next = inner.next_due();
        let due = async {
            match next {
                Some(at) => {
                    let wait = at.saturating_sub(now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = inner.timer_changed.notified() => {}
            _ = due => inner.expire_due().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: PresenceState, last_active_ms: i64) -> Record {
        Record {
            state,
            explicit: false,
            status_msg: None,
            last_active_ms,
            stored_active_ms: last_active_ms,
        }
    }

    #[test]
    fn a_local_user_goes_idle_then_offline_without_syncing() {
        let minute = 60_000;
        let online = record(PresenceState::Online, 0);
        assert_eq!(local_state(&online, 0), PresenceState::Online);
        assert_eq!(next_change(&online, 0), Some(3 * minute));
        assert_eq!(local_state(&online, 3 * minute - 1), PresenceState::Online);
        assert_eq!(local_state(&online, 3 * minute), PresenceState::Unavailable);
        assert_eq!(next_change(&online, 3 * minute), Some(10 * minute));
        assert_eq!(local_state(&online, 10 * minute), PresenceState::Offline);
        assert_eq!(next_change(&online, 10 * minute), None);

        let away = record(PresenceState::Unavailable, 0);
        assert_eq!(local_state(&away, 0), PresenceState::Unavailable);
        assert_eq!(local_state(&away, 10 * minute), PresenceState::Offline);
        let gone = record(PresenceState::Offline, 0);
        assert_eq!(local_state(&gone, 0), PresenceState::Offline);
        assert_eq!(next_change(&gone, 0), None);
    }
}
