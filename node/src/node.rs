//! The running node: owns the store, the identity and the API server task. Dropping the last
//! `Node` handle stops the server; `shutdown` also waits for it and for the store to flush.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyphae_p2p::Identity;
use hyphae_store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use ruma::OwnedServerName;

use crate::client_api::{self, RateLimiter};
use crate::config::{Config, Registration};
use crate::credentials::LoginTokens;
use crate::error::NodeError;
use crate::federation::Federation;
use crate::rooms::Rooms;
use crate::signing::SigningKey;
use crate::typing::Typing;

const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle to a running node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    store: Store,
    client_addr: SocketAddr,
    login_tokens: Arc<LoginTokens>,
    /// What request handlers reach; the federation router is built on it too.
    state: AppState,
    transport: Option<hyphae_p2p::Transport>,
    /// Finished on shutdown between the transport and the store.
    peer_book: Mutex<Option<crate::peers::PeerBookWriter>>,
    /// The device owner's in-process client, when the node has an owner.
    app: Option<crate::app::AppClient>,
    // Dropping the sender (with the last handle) tells the server to stop.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    server: Mutex<Option<JoinHandle<()>>>,
    /// The backup server this device is subscribed to; the replica's waker follows it.
    backup_target: tokio::sync::watch::Sender<Option<OwnedServerName>>,
}

/// What every request handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) server_name: OwnedServerName,
    pub(crate) store: Store,
    pub(crate) registration: Arc<Registration>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) rooms: Rooms,
    pub(crate) typing: Typing,
    pub(crate) login_tokens: Arc<LoginTokens>,
    pub(crate) signing_key: SigningKey,
    pub(crate) federation: Federation,
    /// The device owner's localpart, when the node has one.
    pub(crate) owner: Option<String>,
    /// Where a backup server's invitations wait; `None` when the node is not one.
    pub(crate) backup_invites: Option<std::path::PathBuf>,
    /// The policy lists the node and its users subscribe to.
    pub(crate) policy: crate::policy::Policy,
    /// Other servers' room directories, as this node asked for them.
    pub(crate) directory: crate::federation::RoomDirectories,
    /// Other servers' users' profiles, people nearby, presence.
    pub(crate) people: crate::people::People,
    /// Evaluates push rules for unread counts and `/notifications`.
    pub(crate) notifier: crate::push::Notifier,
    /// What other servers may cost this node.
    pub(crate) limits: Arc<crate::limits::Limits>,
}

impl Node {
    pub async fn start(config: Config) -> Result<Node, NodeError> {
        let store = Store::open(config.data_dir.clone()).await?;
        let data_dir = config.data_dir.clone();
        let identity = tokio::task::spawn_blocking(move || Identity::load_or_create(&data_dir))
            .await
            .map_err(|e| NodeError::Startup(e.to_string()))??;
        let listener = tokio::net::TcpListener::bind(config.client_listen)
            .await
            .map_err(|source| NodeError::Listen {
                addr: config.client_listen,
                source,
            })?;
        let client_addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: config.client_listen,
            source,
        })?;

        let server_name = OwnedServerName::try_from(identity.server_name())
            .map_err(|e| NodeError::Startup(format!("server name: {e}")))?;
        let login_tokens = Arc::new(LoginTokens::default());
        let signing_key = SigningKey::new(server_name.clone(), &identity.secret_bytes());
        let federation = Federation::new(
            store.clone(),
            signing_key.clone(),
            crate::federation::OutboxLimits {
                per_destination: config.peer_limits.outbox_per_destination,
                ttl: config.peer_limits.outbox_ttl,
            },
        );
        let policy = crate::policy::Policy::new(store.clone(), server_name.clone());
        let limits = Arc::new(crate::limits::Limits::new(config.peer_limits.clone()));
        let rooms = Rooms::new(
            store.clone(),
            signing_key.clone(),
            federation.clone(),
            policy.clone(),
            limits.clone(),
        );
        rooms.spawn_retries();
        // Before the overlay starts: the node's bans apply to the first PDU that arrives.
        policy
            .start()
            .await
            .map_err(|e| NodeError::Startup(format!("policy lists: {e}")))?;
        let people = crate::people::People::start(&store, &federation, server_name.clone()).await?;
        let state = AppState {
            people: people.clone(),
            policy,
            directory: Default::default(),
            notifier: Default::default(),
            rooms,
            typing: Typing::new(),
            login_tokens: login_tokens.clone(),
            signing_key: signing_key.clone(),
            federation: federation.clone(),
            owner: config.owner.clone(),
            backup_invites: config
                .backup_server
                .then(|| config.data_dir.join(crate::backup::INVITES_DIR)),
            server_name,
            store: store.clone(),
            registration: Arc::new(config.registration()),
            limiter: Arc::new(RateLimiter::new(config.auth_rate_limit)),
            limits,
        };
        let (transport, peer_book) = match config.p2p.clone() {
            Some(p2p) => {
                let (transport, peer_book) = crate::peers::start_transport(
                    p2p,
                    &identity,
                    &store,
                    crate::federation::router(state.clone()),
                )
                .await?;
                (Some(transport), Some(peer_book))
            }
            None => (None, None),
        };
        if let Some(transport) = &transport {
            federation
                .attach(transport)
                .await
                .map_err(|e| NodeError::Startup(e.to_string()))?;
            people.attach(transport).await;
            if config.backup_server {
                if let Err(e) = transport
                    .start_providing(crate::backup::ANNOUNCE_KEY.to_vec())
                    .await
                {
                    tracing::warn!(error = %e, "cannot announce the backup server in the DHT");
                }
                crate::backup::mailbox::spawn_republisher(
                    store.clone(),
                    transport,
                    identity.server_name().to_owned(),
                );
            }
        }
        let subscription = store.backup_subscription().await?;
        let backup_server = subscription
            .as_ref()
            .and_then(|s| OwnedServerName::try_from(s.server.as_str()).ok());
        let (backup_target, backup_watch) = tokio::sync::watch::channel(backup_server);
        crate::backup::spawn_waker(&store, federation.clone(), backup_watch);
        if let Some(subscription) = subscription {
            crate::backup::resume(&state, transport.as_ref(), subscription).await;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let api = client_api::router(state.clone());
        let owner_client = match &config.owner {
            Some(localpart) => Some(
                crate::app::AppClient::start(
                    state.clone(),
                    api.clone(),
                    localpart,
                    &identity.secret_bytes(),
                )
                .await
                .map_err(|e| NodeError::Startup(format!("the app's client: {e}")))?,
            ),
            None => None,
        };
        let app = match config.extra_routes.clone() {
            Some(extra) => api.merge(extra),
            None => api,
        };
        let server = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "client API server failed");
            }
        });
        tracing::info!(server_name = identity.server_name(), %client_addr, "node started");
        Ok(Node {
            inner: Arc::new(Inner {
                identity,
                store,
                client_addr,
                login_tokens,
                state,
                transport,
                app: owner_client,
                peer_book: Mutex::new(peer_book),
                stop: Mutex::new(Some(stop)),
                server: Mutex::new(Some(server)),
                backup_target,
            }),
        })
    }

    /// The Matrix server name: the lowercase hex of the node's ed25519 key.
    pub fn server_name(&self) -> &str {
        self.inner.identity.server_name()
    }

    /// Where the Client-Server API actually listens.
    pub fn client_addr(&self) -> SocketAddr {
        self.inner.client_addr
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The device owner's in-process client, when the node has an owner (`Config::owner`).
    pub fn app(&self) -> Option<&crate::app::AppClient> {
        self.inner.app.as_ref()
    }

    /// The libp2p overlay, when the node runs one.
    pub fn transport(&self) -> Option<&hyphae_p2p::Transport> {
        self.inner.transport.as_ref()
    }

    /// The Server-Server API this node answers (served over libp2p by its transport).
    pub fn federation_router(&self) -> axum::Router {
        crate::federation::router(self.inner.state.clone())
    }

    pub(crate) fn app_state(&self) -> &AppState {
        &self.inner.state
    }

    pub(crate) fn backup_target(&self) -> &tokio::sync::watch::Sender<Option<OwnedServerName>> {
        &self.inner.backup_target
    }

    /// The Client-Server API as a router, for callers in this process (no socket).
    pub(crate) fn client_router(&self) -> axum::Router {
        client_api::router(self.inner.state.clone())
    }

    /// A single-use `m.login.token` for a local account, valid two minutes: how the embedding
    /// app's own client logs in without knowing a password.
    pub async fn login_token(&self, localpart: &str) -> Result<String, NodeError> {
        if self
            .inner
            .store
            .account(localpart.to_owned())
            .await?
            .is_none()
        {
            return Err(NodeError::NoSuchAccount(localpart.to_owned()));
        }
        self.inner
            .login_tokens
            .mint(localpart)
            .map_err(|e| NodeError::Startup(e.to_string()))
    }

    /// Subscribes the node itself (its operator's choice: a backup server, an event organiser's
    /// node) to a policy list, by room id or alias. From now on PDUs whose sender or sender's
    /// server the list bans are refused at this node's federation edge, kept as rejected with
    /// the rule and list as the reason, never shown and never passed on; so are transactions
    /// and invites from servers it bans. Their state events (an invite they send, a power
    /// level change they may make) are the room's state on every other server: they are taken,
    /// so honest events built on them still are, but the app does not show them and the node
    /// does not pass them on. The node's service account joins the list's room, so
    /// the list's changes keep arriving and apply as they do.
    ///
    /// `list` is the list room's alias, or its id with `via` naming servers in the room to join
    /// it through (as in a `matrix.to` link).
    pub async fn subscribe_policy_list_node(
        &self,
        list: &str,
        via: &[ruma::OwnedServerName],
    ) -> Result<ruma::OwnedRoomId, crate::policy::PolicyError> {
        let state = &self.inner.state;
        let room_id = match ruma::RoomId::parse(list) {
            Ok(room_id) if self.service_joined(&room_id).await? => room_id,
            _ => crate::policy::join_as_service(state, list, via).await?,
        };
        state.policy.add_node_subscription(&room_id).await?;
        tracing::info!(list = %room_id, "the node subscribes to a policy list");
        Ok(room_id)
    }

    /// Ends the node's subscription to a list (the service account leaves its room); what it
    /// refused stays refused. `false` when the node was not subscribed.
    pub async fn unsubscribe_policy_list_node(
        &self,
        list: &ruma::RoomId,
    ) -> Result<bool, crate::policy::PolicyError> {
        let state = &self.inner.state;
        let removed = state.policy.remove_node_subscription(list).await?;
        if self.service_joined(list).await? {
            let service = crate::policy::service_user(state)?;
            let leave = crate::rooms::EventDraft::state(
                ruma::events::StateEventType::RoomMember,
                service.as_str(),
                serde_json::json!({"membership": "leave"}),
            );
            if let Err(e) = state.rooms.send(list, &service, leave).await {
                tracing::warn!(%list, error = %e, "the service account could not leave a list");
            }
        }
        Ok(removed)
    }

    /// Whether the node's lists ban a user (or their server), and the refusal reason its
    /// federation edge would log: `(list, reason)`.
    pub fn node_policy_verdict(
        &self,
        user_id: &ruma::UserId,
    ) -> Option<(ruma::OwnedRoomId, String)> {
        self.inner
            .state
            .policy
            .node_verdict(&crate::policy::Subject::user(user_id))
    }

    /// The lists the node subscribes to, oldest first.
    pub fn node_policy_subscriptions(&self) -> Vec<ruma::OwnedRoomId> {
        self.inner.state.policy.node_subscriptions()
    }

    /// A list's ban rules as this node holds its room's state (any list the node is in).
    pub async fn node_policy_rules(
        &self,
        list: &ruma::RoomId,
    ) -> Result<Vec<crate::policy::PolicyRule>, crate::policy::PolicyError> {
        let state = self
            .inner
            .store
            .current_state_pdus(list.to_string())
            .await?;
        if state.is_empty() {
            return Err(crate::policy::PolicyError::NotFound(format!(
                "This node is not in {list}"
            )));
        }
        let events: Vec<serde_json::Value> = state
            .iter()
            .filter_map(|stored| serde_json::from_str(&stored.json).ok())
            .collect();
        Ok(crate::policy::rules_of_state(&events))
    }

    /// The rules of a subscribed list (the node's or a user's) that were refused when it was
    /// compiled, the first hundred, and how many in all; `None` when nobody here subscribes.
    pub fn policy_list_refusals(
        &self,
        list: &ruma::RoomId,
    ) -> Option<(Vec<crate::policy::Refusal>, usize)> {
        let compiled = self.inner.state.policy.list(list)?;
        let (refused, total) = compiled.refused();
        Some((refused.to_vec(), total))
    }

    async fn service_joined(
        &self,
        room_id: &ruma::RoomId,
    ) -> Result<bool, crate::policy::PolicyError> {
        let service = crate::policy::service_user(&self.inner.state)?;
        Ok(self
            .inner
            .store
            .membership(room_id.to_string(), service.to_string())
            .await?
            .is_some_and(|m| m.membership == "join"))
    }

    /// Stops serving (letting requests in flight finish), then flushes and closes the store.
    pub async fn shutdown(&self) {
        if let Some(app) = &self.inner.app {
            app.stop();
        }
        self.inner
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut server) = server {
            // Requests in flight get a moment to finish; a client holding a connection open must
            // not keep the node from stopping.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; stopping anyway");
                server.abort();
            }
        }
        // The overlay goes before the store: nothing may reach a closed database.
        if let Some(transport) = &self.inner.transport {
            transport.shutdown().await;
        }
        // The peers the transport learnt of last are written before the store closes.
        let peer_book = self
            .inner
            .peer_book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(peer_book) = peer_book {
            peer_book.finish().await;
        }
        self.inner.store.close().await;
        tracing::info!(server_name = self.server_name(), "node stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn config(dir: &std::path::Path) -> Config {
        Config {
            client_listen: "127.0.0.1:0".parse().unwrap(),
            p2p: None,
            ..Config::new(dir)
        }
    }

    async fn get(node: &Node, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("http://{}{path}", node.client_addr()))
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    #[tokio::test]
    async fn serves_versions_health_and_matrix_errors() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path())).await.unwrap();

        let (status, versions) = get(&node, "/_matrix/client/versions").await;
        assert_eq!(status, 200);
        assert!(
            versions["versions"]
                .as_array()
                .unwrap()
                .contains(&Value::from("v1.12")),
            "{versions}"
        );

        let (status, health) = get(&node, "/health").await;
        assert_eq!(status, 200);
        assert_eq!(health["status"], "ok");
        assert_eq!(health["server_name"], node.server_name());

        let (status, error) = get(&node, "/_matrix/client/v3/no_such_endpoint").await;
        assert_eq!(status, 404);
        assert_eq!(error["errcode"], "M_UNRECOGNIZED");

        let response = reqwest::Client::new()
            .post(format!(
                "http://{}/_matrix/client/versions",
                node.client_addr()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["errcode"], "M_UNRECOGNIZED");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn keeps_its_name_across_restarts_and_frees_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path())).await.unwrap();
        let name = node.server_name().to_owned();
        let addr = node.client_addr();
        node.store()
            .create_account("alice".into(), None)
            .await
            .unwrap();
        node.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );

        // Same data folder, same port: the same server, with what it stored.
        let node = Node::start(Config {
            client_listen: addr,
            p2p: None,
            ..Config::new(dir.path())
        })
        .await
        .unwrap();
        assert_eq!(node.server_name(), name);
        assert!(
            node.store()
                .account("alice".into())
                .await
                .unwrap()
                .is_some()
        );
        drop(node);
    }

    #[tokio::test]
    async fn a_client_holding_a_connection_does_not_block_shutdown() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path())).await.unwrap();
        // Half a request, never finished.
        let mut stalled = tokio::net::TcpStream::connect(node.client_addr())
            .await
            .unwrap();
        stalled
            .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(SHUTDOWN_GRACE * 3, node.shutdown())
            .await
            .expect("shutdown hung on an open connection");
        assert!(started.elapsed() < SHUTDOWN_GRACE * 2);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(config(dir.path())).await.unwrap();
        let addr = node.client_addr();
        let clone = node.clone();
        drop(node);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "a clone keeps it up"
        );
        drop(clone);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still listening 5 s after drop"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn start_up_problems_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let error = Node::start(config(&file)).await.err().expect("started");
        assert!(
            error.to_string().starts_with("cannot use data folder"),
            "{error}"
        );

        let first = Node::start(config(&dir.path().join("one"))).await.unwrap();
        let error = Node::start(Config {
            client_listen: first.client_addr(),
            p2p: None,
            ..Config::new(dir.path().join("two"))
        })
        .await
        .err()
        .expect("two nodes on one port");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot listen on {}", first.client_addr())),
            "{error}"
        );
    }
}
