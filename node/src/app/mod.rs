//! The app's own client for the device owner, in-process: the owner's account (made on first
//! start), a sync loop, rooms, a decrypted timeline with delivery state, and live updates. It
//! speaks the node's Client-Server API in memory (`cs.rs`), the same API standard clients use,
//! and does end-to-end encryption itself (`crypto/`).

pub(crate) mod crypto;
pub(crate) mod cs;
mod key_backup;
mod password;
mod policy;
mod rooms;
#[cfg(test)]
mod tests;
mod timeline;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use crate::node::AppState;
pub use crypto::{KeyBackupStatus, RecoveryKey};
pub use cs::ApiError;
use cs::CsApi;
pub use password::MIN_PASSWORD_CHARS;
pub use rooms::{Invite, Member, NearbyPeer, RoomSummary};
pub use timeline::{Delivery, ItemKind, TimelineItem};

/// The account data type where the app remembers its device, so a restart keeps its keys.
pub(crate) const DEVICE_DATA: &str = "io.hyphae.app_device";
/// How long a /sync waits for something new.
const SYNC_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] hyphae_store::StoreError),
    #[error("end-to-end encryption: {0}")]
    Crypto(String),
    #[error("{0}")]
    BadInput(String),
    /// A recovery key that is mistyped or belongs to another key backup.
    #[error("{0}")]
    RecoveryKey(String),
    /// Something on this device failed (no randomness, a hash that could not be made).
    #[error("{0}")]
    Internal(String),
    /// The room came back from the backup and no server of its members could be reached yet to
    /// bring it up to date: no room key is shared in it until one can.
    #[error("{0}")]
    Unconfirmed(String),
}

/// What changed, for a UI that shows it live.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppEvent {
    /// A new or updated timeline item (an item that could not be decrypted before may now be).
    Timeline { item: TimelineItem },
    /// How far one of the owner's messages got.
    Delivery {
        room_id: OwnedRoomId,
        event_id: OwnedEventId,
        delivery: Delivery,
    },
    /// An invite arrived.
    Invite { invite: Invite },
    /// Rooms were joined or left, or their names changed.
    Rooms,
}

/// The in-process client of the device owner; cheap to clone. Its sync task ends when the last
/// handle drops.
#[derive(Clone)]
pub struct AppClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The node's identity secret: backed up (sealed) with the identity on a backup server.
    identity_secret: zeroize::Zeroizing<[u8; 32]>,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    cs: CsApi,
    state: AppState,
    crypto: crypto::Crypto,
    events: broadcast::Sender<AppEvent>,
    /// Encrypted events this client could not decrypt yet, by (room, session id): shown again
    /// when the key arrives.
    undecrypted: Mutex<HashMap<(OwnedRoomId, String), HashSet<OwnedEventId>>>,
    /// The owner's own messages whose delivery to other servers is still under way.
    in_flight: Mutex<HashMap<OwnedEventId, (OwnedRoomId, Delivery)>>,
    /// Whether a task follows `in_flight`.
    delivery_watcher: std::sync::atomic::AtomicBool,
    sync_task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .sync_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl AppClient {
    /// Signs the owner in (making the account on first start) and starts syncing.
    pub(crate) async fn start(
        state: AppState,
        router: axum::Router,
        localpart: &str,
        identity_secret: &[u8; 32],
    ) -> Result<AppClient, AppError> {
        let store = state.store.clone();
        if store.account(localpart.to_owned()).await?.is_none() {
            // No password: the owner signs in with login tokens only, from this process.
            store.create_account(localpart.to_owned(), None).await?;
            tracing::info!(localpart, "created the owner's account");
        }
        let device: Option<Value> = store
            .account_data(localpart.to_owned(), None, DEVICE_DATA.into())
            .await?
            .and_then(|json| serde_json::from_str(&json).ok());
        let known_device = device
            .as_ref()
            .and_then(|d| d["device_id"].as_str())
            .map(str::to_owned);
        let token = state
            .login_tokens
            .mint(localpart)
            .map_err(|e| AppError::Crypto(format!("login token: {e}")))?;
        let cs = CsApi::new(router);
        let mut login = json!({
            "type": "m.login.token",
            "token": token,
            "initial_device_display_name": "Hyphae app",
        });
        if let Some(device_id) = &known_device {
            login["device_id"] = device_id.clone().into();
        }
        let session: Value = cs.post("/v3/login", &login).await?;
        let (Some(access_token), Some(device_id), Some(user_id)) = (
            session["access_token"].as_str(),
            session["device_id"].as_str(),
            session["user_id"].as_str(),
        ) else {
            return Err(AppError::BadInput(
                "login answered without a session".into(),
            ));
        };
        let user_id = UserId::parse(user_id).map_err(|e| AppError::BadInput(e.to_string()))?;
        let device_id = OwnedDeviceId::from(device_id);
        if known_device.as_deref() != Some(device_id.as_str()) {
            store
                .set_account_data(
                    localpart.to_owned(),
                    None,
                    DEVICE_DATA.into(),
                    json!({"device_id": device_id}).to_string(),
                )
                .await?;
        }
        let cs = cs.with_token(access_token.to_owned());
        let crypto = crypto::Crypto::load_or_create(
            store.clone(),
            user_id.clone(),
            device_id.clone(),
            pickle_key(identity_secret),
        )
        .await
        .map_err(|e| AppError::Crypto(e.to_string()))?;
        let (events, _) = broadcast::channel(1024);
        let client = AppClient {
            inner: Arc::new(Inner {
                identity_secret: zeroize::Zeroizing::new(*identity_secret),
                user_id,
                device_id,
                cs,
                state,
                crypto,
                events,
                undecrypted: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                delivery_watcher: Default::default(),
                sync_task: Mutex::new(None),
            }),
        };
        let weak = Arc::downgrade(&client.inner);
        let task = tokio::spawn(sync_loop(weak)).abort_handle();
        *client
            .inner
            .sync_task
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(task);
        tracing::info!(user_id = %client.inner.user_id, device_id = %client.inner.device_id, "the app's client is signed in");
        Ok(client)
    }

    pub fn user_id(&self) -> &UserId {
        &self.inner.user_id
    }

    pub fn device_id(&self) -> &str {
        self.inner.device_id.as_str()
    }

    /// Live updates from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AppEvent> {
        self.inner.events.subscribe()
    }

    /// Stops syncing (the node is shutting down).
    pub(crate) fn stop(&self) {
        if let Some(task) = self
            .inner
            .sync_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    fn emit(&self, event: AppEvent) {
        // Nobody listening is fine.
        let _ = self.inner.events.send(event);
    }
}

/// The key the client's crypto state is encrypted with at rest: derived from the node's
/// identity secret, so the database alone reads nothing.
fn pickle_key(identity_secret: &[u8; 32]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"hyphae app client: crypto pickle key");
    hash.update(identity_secret);
    hash.finalize().into()
}

/// Syncs for as long as the client exists: to-device messages and device lists feed the crypto,
/// new timeline events and invites go out as live updates.
async fn sync_loop(inner: std::sync::Weak<Inner>) {
    let mut since: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let Some(client) = inner.upgrade().map(|inner| AppClient { inner }) else {
            return;
        };
        let path = match &since {
            Some(since) => format!("/v3/sync?timeout={SYNC_TIMEOUT_MS}&since={since}"),
            None => "/v3/sync?timeout=0".to_owned(),
        };
        let cs = client.inner.cs.clone();
        // Not holding the client while the long-poll waits, so dropping it ends the loop.
        drop(client);
        let response: Result<Value, _> = cs.get(&path).await;
        let Some(client) = inner.upgrade().map(|inner| AppClient { inner }) else {
            return;
        };
        match response {
            Ok(response) => {
                failures = 0;
                let first = since.is_none();
                client.handle_sync(&response, first).await;
                // Room keys that arrived (or that this device made to send) go to the key
                // backup, if it is on.
                client.back_up_new_keys().await;
                since = response["next_batch"].as_str().map(str::to_owned);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "the app's sync failed");
                drop(client);
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(20)))).await;
            }
        }
    }
}
