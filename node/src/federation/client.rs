//! The `Federation` handle: this node's requests to other servers over the transport, and the
//! outbox senders (one task per destination) that it owns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use hyphae_p2p::{
    HttpError, RequestOptions, Transport, TransportEvent, WeakTransport, server_name_of_peer,
};
use hyphae_store::{OutboxKind, Store, StoreError};
use ruma::{OwnedServerName, ServerName};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;

use super::sender::{self, SenderHandle};
use crate::signing::SigningKey;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FederationError {
    #[error("this node runs without a peer-to-peer transport")]
    Offline,
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{server} answered {status}: {errcode} {error}")]
    Refused {
        server: OwnedServerName,
        status: StatusCode,
        errcode: String,
        error: String,
    },
    #[error("{server} sent an unreadable answer: {reason}")]
    BadResponse {
        server: OwnedServerName,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A handle on this node's side of federation; cheap to clone. The senders end when the last
/// handle drops.
#[derive(Clone)]
pub(crate) struct Federation {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) server_name: OwnedServerName,
    /// Signs transactions left in a mailbox.
    signing_key: SigningKey,
    pub(super) store: Store,
    /// Set once the transport runs. Weak: the transport serves a router that holds this
    /// handle, and must not be kept alive by it.
    transport: OnceLock<WeakTransport>,
    senders: Mutex<HashMap<OwnedServerName, SenderHandle>>,
    outbox_limits: sender::OutboxLimits,
    /// Owners of other nodes, as they said (see `owner_of`), and when they said it.
    owners: Mutex<HashMap<String, (std::time::Instant, Owner)>>,
}

/// A node's owner as it says: user id and display name.
type Owner = (String, Option<String>);

/// How long what a node said of its owner is taken as current: display names change.
const OWNER_FRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a Hyphae node says who owns it (an unstable, namespaced federation endpoint).
pub(crate) const OWNER_PATH: &str = "/_matrix/federation/unstable/io.hyphae/owner";

impl Federation {
    pub(crate) fn new(
        store: Store,
        signing_key: SigningKey,
        outbox_limits: sender::OutboxLimits,
    ) -> Self {
        Federation {
            inner: Arc::new(Inner {
                server_name: signing_key.server_name().clone(),
                signing_key,
                store,
                transport: OnceLock::new(),
                senders: Mutex::new(HashMap::new()),
                outbox_limits,
                owners: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts sending through `transport`: a sender for every destination with something in
    /// the outbox, and a watcher that flushes a destination's queue when its peer shows up.
    pub(crate) async fn attach(&self, transport: &Transport) -> Result<(), FederationError> {
        if self.inner.transport.set(transport.downgrade()).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(watch_peers(transport.events(), weak));
        for destination in self.inner.store.outbox_destinations().await? {
            match OwnedServerName::try_from(destination) {
                Ok(destination) => self.wake(&destination),
                Err(e) => tracing::warn!(error = %e, "outbox entry for a malformed destination"),
            }
        }
        Ok(())
    }

    pub(crate) fn transport(&self) -> Result<Transport, FederationError> {
        self.inner
            .transport
            .get()
            .and_then(WeakTransport::upgrade)
            .ok_or(FederationError::Offline)
    }

    /// Who owns the node `server`, as it says (`io.hyphae.owner`): (user id, display name).
    /// Remembered for `OWNER_FRESH`, and after that while the node does not answer; a node that
    /// has no owner, or never answered, gives `None`.
    pub(crate) async fn owner_of(&self, server: &str) -> Option<Owner> {
        let known = self
            .inner
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(server)
            .cloned();
        if let Some((learnt, owner)) = &known
            && learnt.elapsed() < OWNER_FRESH
        {
            return Some(owner.clone());
        }
        let known = known.map(|(_, owner)| owner);
        let owner = match self.ask_owner(server).await {
            Ok(owner) => owner?,
            Err(()) => return known,
        };
        self.inner
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                server.to_owned(),
                (std::time::Instant::now(), owner.clone()),
            );
        Some(owner)
    }

    /// Asks `server` who owns it, past what `owner_of` remembers: `Err` when it does not answer,
    /// `Ok(None)` when it has no owner or names someone else's user.
    pub(crate) async fn ask_owner(&self, server: &str) -> Result<Option<Owner>, ()> {
        let server_name = <&ServerName>::try_from(server).map_err(drop)?;
        let Ok(Ok(answer)) = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.request::<serde_json::Value>(server_name, Method::GET, OWNER_PATH, None),
        )
        .await
        else {
            return Err(());
        };
        let Some(user_id) = answer["user_id"]
            .as_str()
            .and_then(|user_id| ruma::UserId::parse(user_id).ok())
        else {
            return Ok(None);
        };
        // A node speaks only for its own users.
        if user_id.server_name() != server_name {
            return Ok(None);
        }
        if let Some(record) = answer.get("mailbox").filter(|r| r.is_object()) {
            let from = hyphae_store::RecordSource::Peer(server.to_owned());
            crate::backup::mailbox::learn_record(&self.inner.store, &record.to_string(), from)
                .await;
        }
        Ok(Some((
            user_id.to_string(),
            answer["displayname"].as_str().map(str::to_owned),
        )))
    }

    /// The servers this node has a connection to right now.
    pub(crate) async fn connected_servers(&self) -> std::collections::HashSet<String> {
        let Ok(transport) = self.transport() else {
            return Default::default();
        };
        transport
            .connected_peers()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|peer| server_name_of_peer(peer).ok())
            .collect()
    }

    /// Tells the destination's sender that its outbox has something new, starting the sender
    /// if there is none. Without a transport the entries wait in the store.
    pub(crate) fn wake(&self, destination: &ServerName) {
        self.sender(destination, |sender| sender.more.notify_one());
    }

    /// Runs `f` on the destination's sender, starting one first if needed.
    fn sender(&self, destination: &ServerName, f: impl FnOnce(&SenderHandle)) {
        if destination == self.inner.server_name {
            return;
        }
        let Some(transport) = self.inner.transport.get() else {
            return;
        };
        let mut senders = self.inner.senders.lock().unwrap_or_else(|e| e.into_inner());
        let sender = senders.entry(destination.to_owned()).or_insert_with(|| {
            sender::spawn(
                self.inner.store.clone(),
                self.inner.signing_key.clone(),
                destination.to_owned(),
                transport.clone(),
                self.inner.outbox_limits,
            )
        });
        f(sender);
    }

    /// Queues an EDU for each destination (written to the outbox first, so a restart keeps
    /// it) and wakes their senders.
    pub(crate) async fn queue_edu(
        &self,
        destinations: Vec<OwnedServerName>,
        edu: serde_json::Value,
    ) -> Result<(), FederationError> {
        let destinations: Vec<OwnedServerName> = destinations
            .into_iter()
            .filter(|d| *d != self.inner.server_name)
            .collect();
        if destinations.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .enqueue_outbox(
                destinations.iter().map(ToString::to_string).collect(),
                OutboxKind::Edu,
                edu.to_string(),
            )
            .await?;
        for destination in &destinations {
            self.wake(destination);
        }
        Ok(())
    }

    /// Sends one request to `destination` and parses its JSON answer. Errors from the other
    /// server come back as [`FederationError::Refused`] with its errcode.
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        destination: &ServerName,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, FederationError> {
        self.request_with(destination, method, path, body, None)
            .await
    }

    /// [`Federation::request`] with other limits than the transport's defaults (a shorter
    /// timeout, a smaller answer).
    pub(crate) async fn request_with<T: DeserializeOwned>(
        &self,
        destination: &ServerName,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        limits: Option<RequestOptions>,
    ) -> Result<T, FederationError> {
        let transport = self.transport()?;
        let body = match body {
            Some(body) => Bytes::from(body.to_string()),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| FederationError::BadResponse {
                server: destination.to_owned(),
                reason: format!("request: {e}"),
            })?;
        let response = match limits {
            Some(limits) => {
                transport
                    .request_with(destination.as_str(), request, limits)
                    .await?
            }
            None => transport.request(destination.as_str(), request).await?,
        };
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(FederationError::Refused {
                server: destination.to_owned(),
                status,
                errcode: error["errcode"].as_str().unwrap_or("M_UNKNOWN").to_owned(),
                error: error["error"].as_str().unwrap_or_default().to_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| FederationError::BadResponse {
            server: destination.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// Flushes a destination's queue at once when its peer is discovered again or connects,
/// instead of waiting out the back-off.
async fn watch_peers(
    mut events: tokio::sync::broadcast::Receiver<TransportEvent>,
    inner: Weak<Inner>,
) {
    loop {
        let peer = match events.recv().await {
            Ok(TransportEvent::Connected { peer, .. })
            | Ok(TransportEvent::PeerDiscovered { peer, .. }) => peer,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Ok(name) = server_name_of_peer(&peer) else {
            continue;
        };
        let senders = inner.senders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = OwnedServerName::try_from(name)
            .ok()
            .and_then(|name| senders.get(&name))
        {
            sender.reachable.notify_one();
        }
    }
}
