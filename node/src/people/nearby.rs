//! People nearby: the owners of the nodes connected to this one, as each node says
//! (`io.hyphae/owner`), kept in the store so that the user directory answers from there
//! instead of asking every peer at every keystroke. Learnt when someone searches the
//! directory, in the background: the first keystrokes may miss a node that just connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyphae_store::Store;
use ruma::OwnedServerName;
use tokio::sync::Semaphore;

use super::now_ms;
use super::profiles::MAX_FIELD;
use crate::federation::Federation;

/// An owner learnt this recently is not asked for again.
const OWNER_FRESH: Duration = Duration::from_secs(5 * 60);
/// A node is asked at most this often, answer or not.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);
/// Nodes remembered as asked, at most (older entries are dropped first).
const MAX_ASKED: usize = 4096;
/// Nodes asked at once: a crowd is asked a few at a time.
const ASKING_AT_ONCE: usize = 4;

pub(crate) struct Nearby {
    asked: Mutex<HashMap<OwnedServerName, Instant>>,
    asking: Arc<Semaphore>,
}

impl Default for Nearby {
    fn default() -> Self {
        Nearby {
            asked: Mutex::new(HashMap::new()),
            asking: Arc::new(Semaphore::new(ASKING_AT_ONCE)),
        }
    }
}

impl Nearby {
    /// Has the nodes of `servers` asked in the background who owns them, those not asked in
    /// the last `ASK_AGAIN_AFTER` and whose owner was not learnt in the last `OWNER_FRESH`:
    /// a user typing in the directory makes the node ask each peer once in a while, not per
    /// keystroke, and nobody is asked while nobody searches.
    pub(crate) fn learn(
        &self,
        store: &Store,
        federation: &Federation,
        servers: Vec<OwnedServerName>,
    ) {
        let due: Vec<OwnedServerName> = {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if asked.len() >= MAX_ASKED {
                asked.retain(|_, at| now.duration_since(*at) < ASK_AGAIN_AFTER);
            }
            servers
                .into_iter()
                .filter(|server| {
                    let due = asked
                        .get(server)
                        .is_none_or(|at| now.duration_since(*at) >= ASK_AGAIN_AFTER);
                    if due && asked.len() < MAX_ASKED {
                        asked.insert(server.clone(), now);
                    }
                    due
                })
                .collect()
        };
        for server in due {
            let (store, federation) = (store.clone(), federation.clone());
            let asking = self.asking.clone();
            tokio::spawn(async move {
                let Ok(_permit) = asking.acquire().await else {
                    return;
                };
                learn_owner(&store, &federation, &server).await;
            });
        }
    }
}

async fn learn_owner(store: &Store, federation: &Federation, server: &OwnedServerName) {
    match store.peer_owner(server.to_string()).await {
        Ok(Some(known)) if now_ms() - known.learned_ms < OWNER_FRESH.as_millis() as i64 => return,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%server, error = %e, "could not read whom a node belongs to");
            return;
        }
    }
    // Bounded, and only a user of the node's own server. Not `owner_of`: what it remembers
    // would keep the app's list of people nearby from asking for a moment.
    let Ok(Some((user_id, displayname))) = federation.ask_owner(server.as_str()).await else {
        return;
    };
    let displayname = displayname.filter(|name| name.len() <= MAX_FIELD);
    if let Err(e) = store
        .put_peer_owner(server.to_string(), user_id, displayname)
        .await
    {
        tracing::warn!(%server, error = %e, "could not keep whom a node belongs to");
    }
}
