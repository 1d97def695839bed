//! Other servers' users' presence: online while their node is connected here (the transport's
//! connections, followed by `people::attach`), or as their server says in an `m.presence` EDU;
//! and the EDUs that tell other servers of this node's users.

use std::collections::HashSet;

use ruma::api::federation::transactions::edu::PresenceUpdate;
use ruma::presence::PresenceState;
use ruma::{OwnedServerName, ServerName, UserId};
use serde_json::json;

use super::{Changed, Inner, MAX_STATUS_MSG, Presence, Record};
use crate::people::now_ms;

/// Updates taken from one `m.presence` EDU; the rest are dropped.
const MAX_UPDATES_PER_EDU: usize = 100;

impl Presence {
    /// `server`'s node connected: its users show online.
    pub(crate) fn server_connected(&self, server: OwnedServerName) {
        self.server_seen(server, true);
    }

    /// `server`'s node disconnected: its users show offline, last active now.
    pub(crate) fn server_disconnected(&self, server: OwnedServerName) {
        self.server_seen(server, false);
    }

    fn server_seen(&self, server: OwnedServerName, connected: bool) {
        let now = now_ms();
        {
            let mut book = self.inner.lock();
            let changed = if connected {
                book.connected.insert(server.clone())
            } else {
                book.connected.remove(&server)
            };
            book.last_seen.insert(server.clone(), now);
            if changed {
                self.inner.bump(&mut book, [Changed::Server(&server)]);
            }
        }
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.note_server_seen(server.to_string(), now).await {
                tracing::debug!(%server, error = %e, "could not note when a server was seen");
            }
        });
    }

    /// The servers whose node is connected here now.
    pub(crate) fn connected_servers(&self) -> Vec<OwnedServerName> {
        self.inner.lock().connected.iter().cloned().collect()
    }

    /// Takes an `m.presence` EDU's updates from `origin`: only for its own users, only for
    /// users in a room here, and only with a status message of a sane size.
    pub(crate) async fn take_edu(
        &self,
        origin: &ServerName,
        updates: Vec<PresenceUpdate>,
    ) -> Result<(), String> {
        let mut refused = None;
        for update in updates.into_iter().take(MAX_UPDATES_PER_EDU) {
            if let Err(reason) = self.take_update(origin, update).await {
                refused = Some(reason);
            }
        }
        refused.map_or(Ok(()), Err)
    }

    async fn take_update(&self, origin: &ServerName, update: PresenceUpdate) -> Result<(), String> {
        let user_id = update.user_id;
        if user_id.server_name() != origin {
            return Err(format!("{user_id} is not a user of the origin server"));
        }
        if update
            .status_msg
            .as_ref()
            .is_some_and(|m| m.len() > MAX_STATUS_MSG)
        {
            return Err(format!("{user_id}'s status message is too long"));
        }
        if !matches!(
            update.presence,
            PresenceState::Online | PresenceState::Unavailable | PresenceState::Offline
        ) {
            return Err(format!("unknown presence {}", update.presence));
        }
        let joined = self
            .inner
            .store
            .memberships_of(user_id.to_string())
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .any(|m| m.membership == "join");
        if !joined {
            return Err(format!("{user_id} is in no room here"));
        }
        let ago = i64::try_from(u64::from(update.last_active_ago)).unwrap_or(i64::MAX);
        let last_active_ms = now_ms().saturating_sub(ago).max(0);
        let record = Record {
            state: update.presence,
            explicit: false,
            status_msg: update.status_msg,
            last_active_ms,
            stored_active_ms: last_active_ms,
        };
        let kept = {
            let mut book = self.inner.lock();
            // Queued under the lock, as for local users: the store keeps the last one taken.
            let kept = self.inner.store.put_presence(record.row(&user_id));
            book.records.insert(user_id.clone(), record);
            self.inner.bump(&mut book, [Changed::User(&user_id)]);
            kept
        };
        kept.await.map_err(|e| e.to_string())
    }
}

impl Inner {
    /// Tells the servers `user_id` shares rooms with what their presence shows now.
    pub(super) async fn tell_servers(&self, user_id: &UserId) {
        let room_mates = match self.store.room_mates(user_id.to_string()).await {
            Ok(room_mates) => room_mates,
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "could not list whom to tell a presence");
                return;
            }
        };
        let servers: HashSet<OwnedServerName> = room_mates
            .iter()
            .filter_map(|user| UserId::parse(user).ok())
            .map(|user| user.server_name().to_owned())
            .filter(|server| *server != self.server_name)
            .collect();
        if servers.is_empty() {
            return;
        }
        let shown = self.shown(&self.lock(), user_id, now_ms());
        let mut update = shown.content();
        update["user_id"] = user_id.as_str().into();
        update["last_active_ago"] = update
            .get("last_active_ago")
            .cloned()
            .unwrap_or_else(|| 0.into());
        let edu = json!({"edu_type": "m.presence", "content": {"push": [update]}});
        if let Err(e) = self
            .federation
            .queue_edu(servers.into_iter().collect(), edu)
            .await
        {
            tracing::warn!(%user_id, error = %e, "could not queue a presence for other servers");
        }
    }
}
