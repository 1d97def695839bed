//! Typing notifications: who is typing in which room, in memory only (they mean nothing after
//! a restart). A task expires them on time, sleeping until the next expiry rather than polling;
//! it ends when the last `Typing` handle is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

/// Clients ask for 30 s; nobody is shown typing longer than this without renewing.
const MAX_TYPING: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Typing {
    inner: Arc<Inner>,
    // Dropped with the last handle, which stops the expiry task.
    _stop: Arc<oneshot::Sender<()>>,
}

struct Inner {
    rooms: Mutex<Rooms>,
    /// Bumped on every change; `/sync` waits on it and carries it in its token.
    serial: watch::Sender<u64>,
    expiry_changed: Notify,
}

#[derive(Default)]
struct Rooms {
    typing: HashMap<OwnedRoomId, HashMap<OwnedUserId, Instant>>,
    /// The serial at which each room's typing set last changed.
    changed_at: HashMap<OwnedRoomId, u64>,
}

impl Typing {
    pub(crate) fn new() -> Typing {
        let inner = Arc::new(Inner {
            rooms: Mutex::new(Rooms::default()),
            serial: watch::channel(0).0,
            expiry_changed: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(expire(inner.clone(), stopped));
        Typing {
            inner,
            _stop: Arc::new(stop),
        }
    }

    /// `user` types in `room` for `timeout`, or stopped (`None`).
    pub(crate) fn set(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) {
        let mut rooms = self.inner.lock();
        let users = rooms.typing.entry(room.to_owned()).or_default();
        let changed = match timeout {
            Some(timeout) => users
                .insert(user.to_owned(), Instant::now() + timeout.min(MAX_TYPING))
                .is_none(),
            None => users.remove(user).is_some(),
        };
        if changed {
            self.inner.bump(&mut rooms, [room.to_owned()]);
        }
        drop(rooms);
        self.inner.expiry_changed.notify_one();
    }

    /// Who is typing in `room` now, and whether that changed after serial `since`.
    pub(crate) fn in_room(&self, room: &RoomId, since: Option<u64>) -> (Vec<OwnedUserId>, bool) {
        let rooms = self.inner.lock();
        let users = rooms
            .typing
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        let changed_at = rooms.changed_at.get(room).copied().unwrap_or(0);
        let current = *self.inner.serial.borrow();
        // A serial from before a restart (larger than ours) means: tell everything.
        let changed = since.is_none_or(|s| changed_at > s || s > current);
        (users, changed)
    }

    pub(crate) fn serial(&self) -> watch::Receiver<u64> {
        self.inner.serial.subscribe()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, rooms: &mut Rooms, changed: impl IntoIterator<Item = OwnedRoomId>) {
        self.serial.send_modify(|serial| *serial += 1);
        let serial = *self.serial.borrow();
        for room in changed {
            rooms.changed_at.insert(room, serial);
        }
    }

    fn expire_due(&self) {
        let mut rooms = self.lock();
        let now = Instant::now();
        let mut expired = Vec::new();
        for (room, users) in rooms.typing.iter_mut() {
            let before = users.len();
            users.retain(|_, until| *until > now);
            if users.len() != before {
                expired.push(room.clone());
            }
        }
        if !expired.is_empty() {
            self.bump(&mut rooms, expired);
        }
    }
}

async fn expire(inner: Arc<Inner>, mut stopped: oneshot::Receiver<()>) {
    loop {
        // A change after this line still wakes the select: notify_one keeps a permit.
        let next = inner
            .lock()
            .typing
            .values()
            .flat_map(|users| users.values())
            .min()
            .copied();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => return,
            _ = inner.expiry_changed.notified() => {}
            _ = due => inner.expire_due(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn typing_starts_stops_and_expires_on_time() {
        let typing = Typing::new();
        let room = RoomId::parse("!r:example.org").unwrap();
        let user = UserId::parse("@a:example.org").unwrap();
        let mut serial = typing.serial();
        let start = *serial.borrow_and_update();

        typing.set(&room, &user, Some(Duration::from_millis(200)));
        let (users, changed) = typing.in_room(&room, Some(start));
        assert_eq!((users, changed), (vec![user.clone()], true));

        // Expiry wakes waiters by itself.
        let after_set = *serial.borrow_and_update();
        tokio::time::timeout(Duration::from_secs(5), serial.changed())
            .await
            .expect("expiry did not happen")
            .unwrap();
        let (users, changed) = typing.in_room(&room, Some(after_set));
        assert!(users.is_empty());
        assert!(changed);

        typing.set(&room, &user, Some(Duration::from_secs(30)));
        typing.set(&room, &user, None);
        assert!(typing.in_room(&room, None).0.is_empty());
    }
}
