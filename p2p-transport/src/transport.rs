//! The `Transport` handle and the swarm task behind it. The swarm lives in one tokio task that
//! owns every piece of libp2p state; handles talk to it over a command channel and hear from it
//! on a broadcast channel. The task ends when the last handle is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Request, Response};
use axum::BoxError;
use axum::body::{Body, HttpBody};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::transport::ListenerId;
use libp2p::kad::{self, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, Swarm, SwarmBuilder, autonat, identify, noise, relay, tcp, yamux,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::Identity;
use crate::address_book::AddressBook;
use crate::behaviour::{
    Behaviour, BehaviourEvent, KAD_PROTOCOL, MAX_RECORD_KEY, MAX_RECORD_VALUE,
    MAX_STREAMS_PER_CONNECTION, QUIC_CONNECTION_WINDOW, QUIC_STREAM_WINDOW,
};
use crate::config::{HttpConfig, RecordPolicyHandle, TransportConfig};
use crate::discovery::mdns::{Mdns, MdnsEvent};
use crate::error::{HttpError, TransportError};
use crate::events::{Discovery, Reachability, TransportEvent};
use crate::http::{self, Destination, RequestOptions};
use crate::records::{self, RecordPolicy, evict_foreign_record};
use crate::streams::{OpenError, StreamReply};

/// Events buffered per subscriber; a subscriber that lags further misses the oldest.
const EVENT_BUFFER: usize = 1024;
const COMMAND_BUFFER: usize = 1024;
/// How long `start` waits for every listener to report its bound address.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// A cheap-to-clone handle on the running swarm.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// A [`Transport`] that does not keep the swarm alive; `upgrade` while it runs.
#[derive(Clone)]
pub struct WeakTransport {
    inner: std::sync::Weak<Inner>,
}

impl WeakTransport {
    pub fn upgrade(&self) -> Option<Transport> {
        self.inner.upgrade().map(|inner| Transport { inner })
    }
}

struct Inner {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<TransportEvent>,
    local_peer: PeerId,
    server_name: String,
    server: Arc<http::Server>,
    client_slots: http::ClientSlots,
    http: HttpConfig,
    dial_timeout: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, TransportError>>;

enum Command {
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<()>,
    },
    /// A dial with addresses someone else vouches for, tried but not remembered.
    DialVia {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: Reply<()>,
    },
    KnownAddresses {
        peer: PeerId,
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ListenOn {
        addr: Multiaddr,
        reply: Reply<()>,
    },
    OpenStream {
        peer: PeerId,
        reply: StreamReply,
    },
    FindPeer {
        peer: PeerId,
        reply: Reply<Vec<Multiaddr>>,
    },
    Bootstrap {
        reply: Reply<()>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: Reply<usize>,
    },
    GetRecords {
        key: Vec<u8>,
        reply: Reply<Vec<Vec<u8>>>,
    },
    StartProviding {
        key: Vec<u8>,
        reply: Reply<()>,
    },
    Providers {
        key: Vec<u8>,
        reply: Reply<Vec<PeerId>>,
    },
    /// Ends the swarm task: connections close, mDNS says goodbye.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

impl Transport {
    /// Builds the swarm (QUIC v1 and TCP+noise+yamux, relay client), listens on the configured
    /// addresses, waits until they are bound, starts mDNS if enabled, dials the known and
    /// bootstrap peers, and hands the swarm to its task.
    pub async fn start(
        config: TransportConfig,
        identity: &Identity,
    ) -> Result<Transport, TransportError> {
        let build = |e: &dyn std::fmt::Display| TransportError::Build(e.to_string());
        let muxer = || {
            let mut yamux = yamux::Config::default();
            yamux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
            yamux
        };
        let mut swarm = SwarmBuilder::with_existing_identity(identity.libp2p_keypair())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                muxer,
            )
            .map_err(|e| build(&e))?
            .with_quic_config(|mut quic| {
                quic.max_concurrent_stream_limit = MAX_STREAMS_PER_CONNECTION as u32;
                quic.max_stream_data = QUIC_STREAM_WINDOW;
                quic.max_connection_data = QUIC_CONNECTION_WINDOW;
                quic
            })
            .with_relay_client(noise::Config::new, muxer)
            .map_err(|e| build(&e))?
            .with_behaviour(|key, relay_client| Behaviour::new(key, relay_client, &config))
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
            .build();

        let mut listeners = Vec::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| TransportError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            listeners.push((id, addr.clone()));
        }

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (commands, command_rx) = mpsc::channel(COMMAND_BUFFER);
        let server = Arc::new(http::Server::new(config.http.clone()));
        let local_peer = *swarm.local_peer_id();
        let mut task = SwarmTask {
            swarm,
            connection_addrs: HashMap::new(),
            our_dials: HashMap::new(),
            commands: command_rx,
            events: events.clone(),
            server: server.clone(),
            book: AddressBook::default(),
            waiting_streams: HashMap::new(),
            waiting_dials: HashMap::new(),
            lookups: HashMap::new(),
            record_queries: HashMap::new(),
            lookup_deadlines: FuturesUnordered::new(),
            record_lookup_timeout: config.record_lookup_timeout,
            mdns: None,
            mdns_events: None,
            listen_as_external: config.relay_server && config.external_addrs.is_empty(),
            // Loopback addresses are announced only by a node that listens on nothing else
            // (tests on one machine); anywhere else they would point peers at themselves.
            announce_loopback: config.listen.iter().all(is_loopback),
            verify_interval: config.mdns.verify_interval,
            relays: HashMap::new(),
            relay_candidates: Vec::new(),
            relay_reservations: config.relay_reservations,
            record_policy: config.record_policy.clone(),
        };
        for addr in &config.external_addrs {
            task.swarm.add_external_address(addr.clone());
        }

        // Wait for the bound addresses, so `listen_addrs` and the mDNS advert are right at once.
        let mut pending: Vec<_> = listeners.iter().map(|(id, _)| *id).collect();
        let deadline = tokio::time::sleep(LISTEN_WAIT);
        tokio::pin!(deadline);
        while !pending.is_empty() {
            tokio::select! {
                event = task.swarm.select_next_some() => {
                    match &event {
                        SwarmEvent::NewListenAddr { listener_id, .. } => {
                            pending.retain(|id| id != listener_id);
                        }
                        SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                            let addr = listeners.iter().find(|(id, _)| id == listener_id)
                                .map(|(_, a)| a.clone());
                            if let Some(addr) = addr {
                                return Err(TransportError::Listen {
                                    addr,
                                    reason: match reason {
                                        Ok(()) => "the listener closed".to_owned(),
                                        Err(e) => e.to_string(),
                                    },
                                });
                            }
                        }
                        _ => {}
                    }
                    task.on_swarm_event(event);
                }
                _ = &mut deadline => {
                    tracing::warn!(?pending, "some listeners reported no address in time");
                    break;
                }
            }
        }

        if config.mdns.enabled {
            let (mut mdns, browse) = Mdns::start(&config.mdns, identity.server_name(), local_peer)?;
            mdns.advertise(&task.swarm.listeners().cloned().collect::<Vec<_>>());
            task.mdns = Some(mdns);
            task.mdns_events = Some(browse);
        }

        for (peer, addr) in &config.bootstrap {
            task.book.add(*peer, [addr.clone()]);
        }
        if !config.bootstrap.is_empty() {
            // Connects to the seeds and fills the routing table; kad repeats it periodically.
            if let Err(e) = task.swarm.behaviour_mut().kad.bootstrap() {
                tracing::warn!(error = %e, "DHT bootstrap could not start");
            }
        }

        tokio::spawn(task.run());
        Ok(Transport {
            inner: Arc::new(Inner {
                commands,
                events,
                local_peer,
                server_name: identity.server_name().to_owned(),
                server,
                client_slots: http::ClientSlots::default(),
                http: config.http,
                dial_timeout: config.dial_timeout,
            }),
        })
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    /// A handle that does not keep the swarm alive: for the service the transport itself
    /// serves, which would otherwise own the transport that owns it.
    pub fn downgrade(&self) -> WeakTransport {
        WeakTransport {
            inner: Arc::downgrade(&self.inner),
        }
    }

    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    /// Subscribes to transport events from now on.
    pub fn events(&self) -> broadcast::Receiver<TransportEvent> {
        self.inner.events.subscribe()
    }

    /// Registers the service that answers inbound HTTP requests (the node's federation
    /// router); it replaces any earlier one. Until one is registered peers get 503. Each
    /// request carries the authenticated remote peer as `axum::extract::ConnectInfo<PeerId>`.
    pub fn serve<S, B>(&self, service: S)
    where
        S: Service<Request<Body>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let service = service.map_response(|response: Response<B>| response.map(Body::new));
        self.inner
            .server
            .set_service(BoxCloneSyncService::new(service));
    }

    /// Connects to `peer`, trying `addrs` and any address already known; returns once a
    /// connection is up.
    pub async fn dial(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Dial { peer, addrs, reply }).await?;
        match tokio::time::timeout(self.inner.dial_timeout, rx).await {
            Ok(result) => result.map_err(|_| TransportError::Stopped)?,
            Err(_) => Err(TransportError::Dial {
                peer,
                reason: format!("no connection within {:?}", self.inner.dial_timeout),
            }),
        }
    }

    /// Remembers an address of `peer` (for example from the node's peer book) without dialling.
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), TransportError> {
        self.command(Command::AddAddress { peer, addr }).await
    }

    /// Connects to `peer` (unless connected), trying `addrs` besides the addresses known, but
    /// without remembering them: for addresses a third party vouches for (a mailbox record),
    /// which must not change how the peer is reached afterwards. An address that does reach
    /// the peer is remembered, as with any dial.
    pub async fn dial_via(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::DialVia { peer, addrs, reply })
            .await?;
        match tokio::time::timeout(self.inner.dial_timeout, rx).await {
            Ok(result) => result.map_err(|_| TransportError::Stopped)?,
            Err(_) => Err(TransportError::Dial {
                peer,
                reason: format!("no connection within {:?}", self.inner.dial_timeout),
            }),
        }
    }

    /// The addresses `peer` would be dialled at now, in order.
    pub async fn known_addresses(&self, peer: PeerId) -> Result<Vec<Multiaddr>, TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::KnownAddresses { peer, reply })
            .await?;
        rx.await.map_err(|_| TransportError::Stopped)
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ConnectedPeers { reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)
    }

    /// The addresses the listeners are bound to now (real ports, one per interface).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::ListenAddrs { reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)
    }

    /// Listens on one more address, for example `<relay addr>/p2p/<relay>/p2p-circuit` to
    /// reserve a slot on a relay and be reachable through it (the relay is connected first).
    /// A relay that already holds (or was already asked for) a reservation is not asked again.
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<(), TransportError> {
        // libp2p's relay client reserves over a connection to the relay that exists, or else
        // dials one; that dial is refused while another one to the relay is under way (the
        // DHT bootstrap, mDNS), and the listener then just closes, with no reservation and no
        // error. Connecting first leaves it only the first case.
        if let Some((relay, relay_addrs)) = relay_of_circuit(&addr) {
            self.dial(relay, relay_addrs).await?;
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::ListenOn { addr, reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Asks the DHT for `peer`'s addresses.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>, TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::FindPeer { peer, reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Stops the overlay now, whatever other handles exist: connections close and the mDNS
    /// record is withdrawn. Later calls on any handle fail with `Stopped`.
    pub async fn shutdown(&self) {
        let (done, stopped) = oneshot::channel();
        if self.command(Command::Shutdown { done }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Starts a DHT bootstrap (it also runs by itself periodically and at start).
    pub async fn bootstrap(&self) -> Result<(), TransportError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Bootstrap { reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Stores `value` under `key` in our own record store and on the peers closest to the key,
    /// and returns how many remote peers acknowledged it. With no peer to take it (an offline
    /// mesh of one), or none answering within kad's query timeout (20 s), it is still stored
    /// locally: that is `Ok(0)`, not an error. As long as this transport runs, kad republishes
    /// the record hourly (so peers that join later get it) and peers hold a copy for 24 h after
    /// its last publication. A later put under the same key replaces the value; old values may
    /// linger at peers that missed the update, so readers must pick the newest valid one.
    /// Values over [`MAX_RECORD_VALUE`] bytes and keys over [`MAX_RECORD_KEY`] are refused.
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<usize, TransportError> {
        check_key(&key)?;
        if value.len() > MAX_RECORD_VALUE {
            return Err(TransportError::RecordTooLarge {
                size: value.len(),
                limit: MAX_RECORD_VALUE,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.command(Command::PutRecord { key, value, reply })
            .await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Every distinct value stored under `key`: ours first (if we hold one), then those other
    /// peers answer with, as the DHT lookup finds them. The lookup stops after
    /// [`TransportConfig::record_lookup_timeout`] (10 s by default) at most and answers with what
    /// it found by then. No value anywhere is an empty list, not an error.
    /// Values are not checked here: they may be old versions, or anything a peer chose to send.
    pub async fn get_records(&self, key: Vec<u8>) -> Result<Vec<Vec<u8>>, TransportError> {
        check_key(&key)?;
        let (reply, rx) = oneshot::channel();
        self.command(Command::GetRecords { key, reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Announces this node as a provider of `key` to the peers closest to it, and keeps doing so
    /// hourly while the transport runs; peers forget a provider 6 h after its last announcement.
    /// Succeeds once stored locally, also with no peer to tell (they hear at the next round).
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), TransportError> {
        check_key(&key)?;
        let (reply, rx) = oneshot::channel();
        self.command(Command::StartProviding { key, reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// The peers that announced themselves as providers of `key`, this node excluded, as found
    /// within [`TransportConfig::record_lookup_timeout`] (10 s by default); none is an empty
    /// list. Their addresses are not returned: a request by peer id looks one up as usual.
    pub async fn providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, TransportError> {
        check_key(&key)?;
        let (reply, rx) = oneshot::channel();
        self.command(Command::Providers { key, reply }).await?;
        rx.await.map_err(|_| TransportError::Stopped)?
    }

    /// Sends one HTTP request to a peer (by server name or peer id) with the configured
    /// timeouts and response cap, and returns the whole response.
    pub async fn request(
        &self,
        to: impl Into<Destination>,
        req: Request<Bytes>,
    ) -> Result<Response<Bytes>, HttpError> {
        let options = RequestOptions::from(&self.inner.http);
        self.request_with(to, req, options).await
    }

    pub async fn request_with(
        &self,
        to: impl Into<Destination>,
        req: Request<Bytes>,
        options: RequestOptions,
    ) -> Result<Response<Bytes>, HttpError> {
        let peer = to.into().peer()?;
        if peer == self.inner.local_peer {
            return Err(HttpError::ToSelf);
        }
        let req = http::prepare(&peer, req)?;
        let per_peer = self.inner.http.max_requests_to_peer;
        let turn = self.inner.client_slots.acquire(peer, per_peer);
        let _turn = tokio::time::timeout(options.request_timeout, turn)
            .await
            .map_err(|_| HttpError::Timeout {
                peer,
                after: options.request_timeout,
            })?
            .ok_or(HttpError::Stopped)?;
        let stream = tokio::time::timeout(options.connect_timeout, self.open_stream(peer))
            .await
            .map_err(|_| HttpError::ConnectTimeout {
                peer,
                after: options.connect_timeout,
            })??;
        tokio::time::timeout(
            options.request_timeout,
            http::send(peer, stream, req, options.max_response_body),
        )
        .await
        .map_err(|_| HttpError::Timeout {
            peer,
            after: options.request_timeout,
        })?
    }

    /// A raw `/http/1.1` stream to `peer` (futures-io), for tools and tests that speak
    /// HTTP themselves or must misbehave on purpose; [`Transport::request`] is the normal way.
    pub async fn open_http_stream(&self, to: impl Into<Destination>) -> Result<Stream, HttpError> {
        let peer = to.into().peer()?;
        let after = self.inner.http.connect_timeout;
        tokio::time::timeout(after, self.open_stream(peer))
            .await
            .map_err(|_| HttpError::ConnectTimeout { peer, after })?
    }

    /// A new `/http/1.1` stream to `peer`, connecting first (known addresses, else a DHT
    /// lookup) if needed.
    async fn open_stream(&self, peer: PeerId) -> Result<Stream, HttpError> {
        // A connection may close while a stream is being opened on it: one of two connections
        // dialled at once is dropped, or a relay circuit is replaced. Nothing was sent yet, so
        // asking again (on the connection that stays, or a new one) is safe.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (reply, rx) = oneshot::channel();
            self.inner
                .commands
                .send(Command::OpenStream { peer, reply })
                .await
                .map_err(|_| HttpError::Stopped)?;
            return match rx.await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(OpenError::Unsupported)) => Err(HttpError::UnsupportedProtocol { peer }),
                Ok(Err(OpenError::NotFound)) => Err(HttpError::PeerNotFound(peer)),
                Ok(Err(OpenError::Failed(reason))) => Err(HttpError::Unreachable { peer, reason }),
                Err(_) if attempts < 3 => continue,
                Err(_) => Err(HttpError::Unreachable {
                    peer,
                    reason: "the connection closed before the stream opened".to_owned(),
                }),
            };
        }
    }

    async fn command(&self, command: Command) -> Result<(), TransportError> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| TransportError::Stopped)
    }
}

fn check_key(key: &[u8]) -> Result<(), TransportError> {
    if key.len() > MAX_RECORD_KEY {
        return Err(TransportError::KeyTooLarge {
            size: key.len(),
            limit: MAX_RECORD_KEY,
        });
    }
    Ok(())
}

/// The relay's peer id and address (if given) in a circuit address
/// `<relay addr>/p2p/<relay>/p2p-circuit`.
fn relay_of_circuit(addr: &Multiaddr) -> Option<(PeerId, Vec<Multiaddr>)> {
    let mut relay_addr = Multiaddr::empty();
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2pCircuit => {
                let addrs = (!relay_addr.is_empty()).then_some(relay_addr);
                return relay.map(|peer| (peer, addrs.into_iter().collect()));
            }
            Protocol::P2p(peer) => relay = Some(peer),
            other => {
                relay = None;
                relay_addr.push(other);
            }
        }
    }
    None
}

/// Where to reserve on a relay reached over a connection to `via`: the relay's listen address
/// that connection uses, else one on the same IP address, so the circuit address names a way to
/// the relay that works from our network. None over a relayed connection (a reservation must be
/// direct) or when no listen address matches.
fn relay_address(via: &Multiaddr, listen_addrs: &[Multiaddr]) -> Option<Multiaddr> {
    fn ip_of(addr: &Multiaddr) -> Option<Protocol<'_>> {
        addr.iter()
            .next()
            .filter(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)))
    }
    if via.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    let without_peer = |addr: &Multiaddr| {
        let mut addr = addr.clone();
        if let Some(Protocol::P2p(_)) = addr.iter().last() {
            addr.pop();
        }
        addr
    };
    let via = without_peer(via);
    let direct: Vec<Multiaddr> = (listen_addrs.iter())
        .filter(|addr| !addr.iter().any(|p| p == Protocol::P2pCircuit))
        .map(without_peer)
        .collect();
    (direct.iter().find(|addr| **addr == via))
        .or_else(|| {
            (direct.iter()).find(|addr| ip_of(addr).is_some() && ip_of(addr) == ip_of(&via))
        })
        .cloned()
}

/// A DHT lookup of one peer and who waits for it.
struct Lookup {
    target: PeerId,
    finders: Vec<Reply<Vec<Multiaddr>>>,
}

/// A DHT record or provider query and who waits for it. Lookups gather what each step finds
/// and answer at the last step or at their deadline, whichever comes first.
enum RecordQuery {
    Put(Reply<usize>),
    Provide(Reply<()>),
    Get {
        key: kad::RecordKey,
        values: Vec<Vec<u8>>,
        reply: Reply<Vec<Vec<u8>>>,
    },
    Providers {
        found: Vec<PeerId>,
        reply: Reply<Vec<PeerId>>,
    },
}

impl RecordQuery {
    /// Answers a lookup with what it found so far; a put or an announcement has no partial
    /// answer and is handed back.
    fn answer_lookup(self) -> Option<RecordQuery> {
        match self {
            RecordQuery::Get { values, reply, .. } => {
                let _ = reply.send(Ok(values));
                None
            }
            RecordQuery::Providers { found, reply } => {
                let _ = reply.send(Ok(found));
                None
            }
            other @ (RecordQuery::Put(_) | RecordQuery::Provide(_)) => Some(other),
        }
    }
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    /// The remote address of each open connection: what a peer says of its own addresses is
    /// weighed against how it reached us.
    connection_addrs: HashMap<ConnectionId, Multiaddr>,
    /// Dials this task started for callers: only their failure fails the callers (a DHT or
    /// relay dial to the same peer failing says nothing about our addresses).
    our_dials: HashMap<ConnectionId, PeerId>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<TransportEvent>,
    server: Arc<http::Server>,
    book: AddressBook,
    /// Stream requests waiting for a connection to their peer.
    waiting_streams: HashMap<PeerId, Vec<StreamReply>>,
    /// `dial` calls waiting for a connection.
    waiting_dials: HashMap<PeerId, Vec<Reply<()>>>,
    lookups: HashMap<QueryId, Lookup>,
    record_queries: HashMap<QueryId, RecordQuery>,
    /// Fire when a record or provider lookup has run for `record_lookup_timeout`; one whose
    /// query already answered finds nothing to do.
    lookup_deadlines: FuturesUnordered<BoxFuture<'static, QueryId>>,
    record_lookup_timeout: Duration,
    mdns: Option<Mdns>,
    mdns_events: Option<mdns_sd::Receiver<mdns_sd::ServiceEvent>>,
    /// A relay with no configured external address announces its listen addresses instead.
    listen_as_external: bool,
    announce_loopback: bool,
    verify_interval: Duration,
    /// Relays holding, or asked for, a reservation for us: the listener of each circuit.
    relays: HashMap<PeerId, ListenerId>,
    /// Connected peers that offer the relay, in the order they identified, with the address to
    /// reserve at.
    relay_candidates: Vec<(PeerId, Multiaddr)>,
    /// How many reservations to hold by ourselves (`TransportConfig::relay_reservations`).
    relay_reservations: usize,
    record_policy: Option<RecordPolicyHandle>,
}

/// An address on the loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|part| match part {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Loopback or unspecified: an address that only reaches the machine it is said on.
fn is_local_only(addr: &Multiaddr) -> bool {
    addr.iter().any(|part| match part {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    })
}

impl SwarmTask {
    async fn run(mut self) {
        // interval(0) panics; nobody needs checks more often than once a second.
        let mut verify = tokio::time::interval(self.verify_interval.max(Duration::from_secs(1)));
        verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = verify.tick(), if self.mdns.is_some() => self.verify_mdns_peers(),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        // Dropping the task's state (swarm, mDNS daemon) is the shutdown; say
                        // so once it is gone.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(id) = self.lookup_deadlines.next(), if !self.lookup_deadlines.is_empty() => {
                    self.on_lookup_deadline(id);
                }
                event = next_mdns(&self.mdns_events) => self.on_mdns(event),
            }
        }
        tracing::debug!("last transport handle dropped; the swarm stops");
    }

    fn emit(&self, event: TransportEvent) {
        // No subscriber is fine: events are news, not obligations.
        let _ = self.events.send(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { peer, addrs, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let new = self.book.add(peer, addrs);
                if !new.is_empty() {
                    // The node's own peer book learns of peers it dials by address too.
                    self.emit(TransportEvent::PeerDiscovered {
                        peer,
                        addrs: new,
                        how: Discovery::Dialled,
                    });
                }
                self.waiting_dials.entry(peer).or_default().push(reply);
                self.dial(peer, PeerCondition::Disconnected);
            }
            Command::DialVia { peer, addrs, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.waiting_dials.entry(peer).or_default().push(reply);
                self.dial_with(peer, addrs, PeerCondition::Disconnected);
            }
            Command::KnownAddresses { peer, reply } => {
                let _ = reply.send(self.book.get(&peer));
            }
            Command::AddAddress { peer, addr } => {
                self.book.add(peer, [addr]);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ListenOn { addr, reply } => {
                let relay = relay_of_circuit(&addr).map(|(relay, _)| relay);
                // A second listener on the same relay connection would replace the first one's
                // reservation inside libp2p's relay client.
                if relay.is_some_and(|relay| self.relays.contains_key(&relay)) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let result = match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => {
                        if let Some(relay) = relay {
                            self.relays.insert(relay, id);
                        }
                        Ok(())
                    }
                    Err(e) => Err(TransportError::Listen {
                        addr,
                        reason: e.to_string(),
                    }),
                };
                let _ = reply.send(result);
            }
            Command::OpenStream { peer, reply } => {
                let Err(reply) = self.swarm.behaviour_mut().streams.open(peer, reply) else {
                    return;
                };
                let first = !self.waiting_streams.contains_key(&peer);
                self.waiting_streams.entry(peer).or_default().push(reply);
                if first {
                    self.connect(peer);
                }
            }
            Command::FindPeer { peer, reply } => self.lookup(peer, Some(reply)),
            Command::Bootstrap { reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .bootstrap()
                    .map(|_| ())
                    .map_err(|_| TransportError::NoKnownPeers);
                let _ = reply.send(result);
            }
            Command::PutRecord { key, value, reply } => self.put_record(key, value, reply),
            Command::GetRecords { key, reply } => {
                let key = kad::RecordKey::new(&key);
                let id = self.swarm.behaviour_mut().kad.get_record(key.clone());
                self.start_lookup(
                    id,
                    RecordQuery::Get {
                        key,
                        values: Vec::new(),
                        reply,
                    },
                );
            }
            Command::StartProviding { key, reply } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                match kad.start_providing(kad::RecordKey::new(&key)) {
                    Ok(id) => {
                        self.record_queries.insert(id, RecordQuery::Provide(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(TransportError::RecordStore(e.to_string())));
                    }
                }
            }
            Command::Providers { key, reply } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let id = kad.get_providers(kad::RecordKey::new(&key));
                self.start_lookup(
                    id,
                    RecordQuery::Providers {
                        found: Vec::new(),
                        reply,
                    },
                );
            }
            // Handled by the run loop, which owns the task's state.
            Command::Shutdown { done } => {
                let _ = done.send(());
            }
        }
    }

    fn put_record(&mut self, key: Vec<u8>, value: Vec<u8>, reply: Reply<usize>) {
        let record = kad::Record::new(key, value);
        let local = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        // Quorum::All only decides when the query ends (after every closest peer answered, so
        // the count is complete); a failed quorum is not a failure here, since the record is
        // stored locally and republished.
        let mut result = kad.put_record(record.clone(), kad::Quorum::All);
        if let Err(kad::store::Error::MaxRecords) = result
            && evict_foreign_record(kad.store_mut(), &local)
        {
            result = kad.put_record(record, kad::Quorum::All);
        }
        match result {
            Ok(id) => {
                self.record_queries.insert(id, RecordQuery::Put(reply));
            }
            Err(e) => {
                let _ = reply.send(Err(TransportError::RecordStore(e.to_string())));
            }
        }
    }

    fn start_lookup(&mut self, id: QueryId, query: RecordQuery) {
        self.record_queries.insert(id, query);
        let timeout = self.record_lookup_timeout;
        self.lookup_deadlines.push(Box::pin(async move {
            tokio::time::sleep(timeout).await;
            id
        }));
    }

    /// A record or provider lookup ran out of time: answer with what it found, and stop it
    /// (kad would go on asking peers until its own, longer, timeout).
    fn on_lookup_deadline(&mut self, id: QueryId) {
        let Some(query) = self.record_queries.remove(&id) else {
            return;
        };
        if let Some(query) = query.answer_lookup() {
            self.record_queries.insert(id, query);
            return;
        }
        tracing::debug!(?id, "DHT lookup stopped at its deadline");
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
    }

    fn on_record_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        let local = *self.swarm.local_peer_id();
        let Some(query) = self.record_queries.get_mut(&id) else {
            return;
        };
        match (query, result) {
            (
                RecordQuery::Get { key, values, .. },
                QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))),
            ) => {
                let record = found.record;
                // A peer may answer anything: only values for this key, of a size we would
                // store ourselves, are handed on.
                if record.key != *key || record.value.len() > MAX_RECORD_VALUE {
                    tracing::debug!(peer = ?found.peer, "ignoring a DHT record that does not fit");
                } else if !values.contains(&record.value) {
                    values.push(record.value);
                }
            }
            (
                RecordQuery::Providers { found, .. },
                QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })),
            ) => {
                for peer in providers {
                    if peer != local && !found.contains(&peer) {
                        found.push(peer);
                    }
                }
            }
            (RecordQuery::Put(_), QueryResult::PutRecord(result)) => {
                let stored = match result {
                    // Quorum::All met: every one of the replication factor's closest peers.
                    Ok(_) => kad::K_VALUE.get(),
                    Err(
                        kad::PutRecordError::QuorumFailed { success, .. }
                        | kad::PutRecordError::Timeout { success, .. },
                    ) => success.len(),
                };
                if let Some(RecordQuery::Put(reply)) = self.record_queries.remove(&id) {
                    let _ = reply.send(Ok(stored));
                }
                return;
            }
            (RecordQuery::Provide(_), QueryResult::StartProviding(result)) => {
                if let Err(e) = result {
                    // Stored locally and announced again at the next round.
                    tracing::debug!(error = %e, "provider announcement incomplete");
                }
                if let Some(RecordQuery::Provide(reply)) = self.record_queries.remove(&id) {
                    let _ = reply.send(Ok(()));
                }
                return;
            }
            // The end of a lookup (nothing more found, not found, kad's timeout): the answer
            // is what was gathered.
            _ => {}
        }
        if last
            && let Some(query) = self.record_queries.remove(&id)
            && let Some(query) = query.answer_lookup()
        {
            // Not a lookup: it waits for its own result.
            self.record_queries.insert(id, query);
        }
    }

    /// Connects with known addresses, or looks the peer up in the DHT first.
    fn connect(&mut self, peer: PeerId) {
        if self.book.get(&peer).is_empty() {
            self.lookup(peer, None);
        } else {
            self.dial(peer, PeerCondition::DisconnectedAndNotDialing);
        }
    }

    /// Dials with every known address given explicitly: libp2p keeps no address book of its
    /// own for our streams, and a dial left to the behaviours can find none.
    fn dial(&mut self, peer: PeerId, condition: PeerCondition) {
        self.dial_with(peer, Vec::new(), condition);
    }

    /// Dials with the known addresses and `extra` ones, which are not remembered.
    fn dial_with(&mut self, peer: PeerId, extra: Vec<Multiaddr>, condition: PeerCondition) {
        let mut addrs = self.book.get(&peer);
        for addr in extra {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(condition)
            .extend_addresses_through_behaviour()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.our_dials.insert(id, peer);
            }
            // Another dial is under way; if it fails, ours starts then (see
            // OutgoingConnectionError).
            Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(DialError::NoAddresses) => self.lookup(peer, None),
            Err(e) => self.fail_peer(peer, &e.to_string()),
        }
    }

    /// Starts (or joins) a DHT lookup of `peer`; those waiting to connect dial what it finds.
    fn lookup(&mut self, peer: PeerId, finder: Option<Reply<Vec<Multiaddr>>>) {
        let existing = self
            .lookups
            .iter_mut()
            .find(|(_, lookup)| lookup.target == peer);
        let lookup = match existing {
            Some((_, lookup)) => lookup,
            None => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups.entry(id).or_insert(Lookup {
                    target: peer,
                    finders: Vec::new(),
                })
            }
        };
        lookup.finders.extend(finder);
    }

    fn on_lookup_done(&mut self, id: QueryId, peers: Vec<kad::PeerInfo>) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        let target = lookup.target;
        let mut addrs: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs)
            .map(|mut addr| {
                if let Some(Protocol::P2p(_)) = addr.iter().last() {
                    addr.pop();
                }
                addr
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            for finder in lookup.finders {
                let _ = finder.send(Err(TransportError::PeerNotFound(target)));
            }
            for reply in self.waiting_streams.remove(&target).unwrap_or_default() {
                let _ = reply.send(Err(OpenError::NotFound));
            }
            for reply in self.waiting_dials.remove(&target).unwrap_or_default() {
                let _ = reply.send(Err(TransportError::PeerNotFound(target)));
            }
            return;
        }
        let new = self.book.add(target, addrs.iter().cloned());
        if !new.is_empty() {
            self.emit(TransportEvent::PeerDiscovered {
                peer: target,
                addrs: new,
                how: Discovery::Dht,
            });
        }
        for finder in lookup.finders {
            let _ = finder.send(Ok(addrs.clone()));
        }
        if self.waiting_streams.contains_key(&target) || self.waiting_dials.contains_key(&target) {
            if self.swarm.is_connected(&target) {
                // The lookup itself may have connected (kad dials the peers it asks).
                self.on_connected(target);
            } else {
                self.dial(target, PeerCondition::DisconnectedAndNotDialing);
            }
        }
    }

    /// A connection to `peer` is up: whoever waited for it gets on.
    fn on_connected(&mut self, peer: PeerId) {
        for reply in self.waiting_dials.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Ok(()));
        }
        for reply in self.waiting_streams.remove(&peer).unwrap_or_default() {
            if let Err(reply) = self.swarm.behaviour_mut().streams.open(peer, reply) {
                let _ = reply.send(Err(OpenError::Failed("the connection closed".into())));
            }
        }
    }

    fn fail_peer(&mut self, peer: PeerId, reason: &str) {
        for reply in self.waiting_dials.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(TransportError::Dial {
                peer,
                reason: reason.to_owned(),
            }));
        }
        for reply in self.waiting_streams.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(OpenError::Failed(reason.to_owned())));
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // A relay circuit of ours is not an address of our own to relay at; the relay
                // client announces it itself once the reservation is accepted.
                let circuit = address.iter().any(|p| p == Protocol::P2pCircuit);
                if self.listen_as_external
                    && !circuit
                    && (self.announce_loopback || !is_local_only(&address))
                {
                    self.swarm.add_external_address(address.clone());
                }
                self.emit(TransportEvent::ListenAddr { addr: address });
                self.readvertise();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if self.listen_as_external {
                    self.swarm.remove_external_address(&address);
                }
                self.emit(TransportEvent::ListenAddrExpired { addr: address });
                self.readvertise();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                self.our_dials.remove(&connection_id);
                self.connection_addrs
                    .insert(connection_id, endpoint.get_remote_address().clone());
                if endpoint.is_dialer() && !endpoint.is_relayed() {
                    // Dialled and answered by the peer's own key: known to work.
                    self.book
                        .confirm(peer_id, endpoint.get_remote_address().clone());
                } else if endpoint.is_dialer() {
                    self.book
                        .add(peer_id, [endpoint.get_remote_address().clone()]);
                }
                if num_established.get() == 1 {
                    self.emit(TransportEvent::Connected {
                        peer: peer_id,
                        addr: endpoint.get_remote_address().clone(),
                    });
                }
                self.on_connected(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                num_established,
                ..
            } if num_established > 0 => {
                self.connection_addrs.remove(&connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established: 0,
                ..
            } => {
                self.connection_addrs.remove(&connection_id);
                self.relay_candidates.retain(|(p, _)| *p != peer_id);
                self.emit(TransportEvent::Disconnected { peer: peer_id });
                if let Some(mdns) = &self.mdns {
                    mdns.verify(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                connection_id,
                error,
            } => {
                tracing::debug!(%peer, %error, "dial failed");
                let ours = self.our_dials.remove(&connection_id).is_some();
                if self.swarm.is_connected(&peer) || matches!(error, DialError::Aborted) {
                    // Nothing to report: another connection is up, or the dial was cancelled.
                } else if ours {
                    self.fail_peer(peer, &error.to_string());
                } else if self.waiting_dials.contains_key(&peer)
                    || self.waiting_streams.contains_key(&peer)
                {
                    // Someone else's dial failed while callers wait: try our own addresses.
                    self.dial(peer, PeerCondition::DisconnectedAndNotDialing);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                // A relay that refused a reservation ends up here with an error.
                if let Err(error) = &reason {
                    tracing::warn!(?addresses, %error, "a listener failed");
                }
                let relay = (self.relays.iter())
                    .find(|(_, id)| **id == listener_id)
                    .map(|(relay, _)| *relay);
                if let Some(relay) = relay {
                    self.relays.remove(&relay);
                    if reason.is_err() {
                        // Not asked again until it identifies anew (a reconnection, or a change
                        // of its addresses): a relay that refuses would otherwise be asked
                        // without end.
                        self.relay_candidates.retain(|(p, _)| *p != relay);
                    }
                    self.reserve_relays();
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Streams(inbound) => {
                tokio::spawn(http::serve(
                    self.server.clone(),
                    inbound.peer,
                    inbound.ip,
                    inbound.stream,
                ));
            }
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                mut info,
                ..
            }) => {
                // A peer's loopback (or unspecified) addresses mean something only to a peer on
                // the same machine: from anyone else they would have us dial ourselves.
                let same_machine = self
                    .connection_addrs
                    .get(&connection_id)
                    .is_some_and(is_local_only);
                if !same_machine {
                    info.listen_addrs.retain(|addr| !is_local_only(addr));
                }
                self.consider_relay(peer_id, connection_id, &info);
                // Kad learns inbound peers' addresses only from us: without this a peer that
                // dialled in never enters the routing table and cannot be found.
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in &info.listen_addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                let new = self.book.add(peer_id, info.listen_addrs);
                if !new.is_empty() {
                    self.emit(TransportEvent::PeerDiscovered {
                        peer: peer_id,
                        addrs: new,
                        how: Discovery::Identify,
                    });
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                let new = self.book.add(peer, addresses.into_vec());
                if !new.is_empty() {
                    self.emit(TransportEvent::PeerDiscovered {
                        peer,
                        addrs: new,
                        how: Discovery::Dht,
                    });
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => match result {
                QueryResult::GetClosestPeers(Ok(ok)) => self.on_lookup_done(id, ok.peers),
                QueryResult::GetClosestPeers(Err(kad::GetClosestPeersError::Timeout {
                    peers,
                    ..
                })) => self.on_lookup_done(id, peers),
                QueryResult::Bootstrap(Err(e)) => {
                    tracing::debug!(error = %e, "DHT bootstrap step failed");
                }
                result @ (QueryResult::GetRecord(_)
                | QueryResult::PutRecord(_)
                | QueryResult::StartProviding(_)
                | QueryResult::GetProviders(_)) => self.on_record_query(id, result, step.last),
                _ => {}
            },
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let reachability = match new {
                    autonat::NatStatus::Public(addr) => Reachability::Public(addr),
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                self.emit(TransportEvent::ReachabilityChanged { reachability });
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal: false,
                ..
            }) => {
                self.emit(TransportEvent::RelayReservation {
                    relay: relay_peer_id,
                });
            }
            BehaviourEvent::Kad(kad::Event::InboundRequest { request }) => {
                self.on_inbound_record(request);
            }
            BehaviourEvent::Dcutr(event) => {
                tracing::debug!(peer = %event.remote_peer_id, result = ?event.result, "hole punch");
            }
            _ => {}
        }
    }

    /// Notes whether an identified peer offers the relay, and reserves on it if we hold fewer
    /// reservations than configured.
    fn consider_relay(&mut self, peer: PeerId, connection: ConnectionId, info: &identify::Info) {
        if self.relay_reservations == 0 {
            return;
        }
        let offered = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
        let at = (self.connection_addrs.get(&connection))
            .and_then(|via| relay_address(via, &info.listen_addrs));
        self.relay_candidates.retain(|(p, _)| *p != peer);
        if let (true, Some(at)) = (offered, at) {
            self.relay_candidates.push((peer, at));
            self.reserve_relays();
        }
    }

    /// Asks candidates for reservations until `relay_reservations` relays hold (or were asked
    /// for) one.
    fn reserve_relays(&mut self) {
        while self.relays.len() < self.relay_reservations {
            let Some((relay, at)) = (self.relay_candidates.iter())
                .find(|(p, _)| !self.relays.contains_key(p))
                .cloned()
            else {
                return;
            };
            let circuit = at.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(%circuit, "asking a relay for a reservation");
                    self.relays.insert(relay, id);
                }
                Err(error) => {
                    tracing::warn!(%circuit, %error, "cannot listen through a relay");
                    self.relay_candidates.retain(|(p, _)| *p != relay);
                }
            }
        }
    }

    /// A record or provider announcement a peer sent (kad's record filtering hands each one
    /// here instead of storing it): stored only if it may be (see `records`).
    fn on_inbound_record(&mut self, request: kad::InboundRequest) {
        let local = *self.swarm.local_peer_id();
        let policy = self
            .record_policy
            .as_ref()
            .map(|p| &*p.0 as &dyn RecordPolicy);
        let store = self.swarm.behaviour_mut().kad.store_mut();
        match request {
            kad::InboundRequest::PutRecord {
                source,
                record: Some(record),
                ..
            } => {
                let key = record.key.clone();
                if let Err(why) = records::put_inbound(store, &local, source, record, policy) {
                    tracing::debug!(peer = %source, key = ?key, ?why, "DHT record from a peer not stored");
                }
            }
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => {
                let peer = record.provider;
                if let Err(why) = records::add_provider_inbound(store, record, policy) {
                    tracing::debug!(%peer, ?why, "provider announcement not stored");
                }
            }
            _ => {}
        }
    }

    fn readvertise(&mut self) {
        if let Some(mdns) = &mut self.mdns {
            let listen: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
            mdns.advertise(&listen);
        }
    }

    /// Peers found on mDNS but not connected may have left without a goodbye: ask.
    fn verify_mdns_peers(&self) {
        if let Some(mdns) = &self.mdns {
            for peer in mdns.found_peers() {
                if !self.swarm.is_connected(&peer) {
                    mdns.verify(&peer);
                }
            }
        }
    }

    fn on_mdns(&mut self, event: mdns_sd::ServiceEvent) {
        let Some(mdns) = &mut self.mdns else {
            return;
        };
        match mdns.on_event(event) {
            Some(MdnsEvent::Discovered { peer, addrs }) => {
                self.book.add(peer, addrs.iter().cloned());
                self.emit(TransportEvent::PeerDiscovered {
                    peer,
                    addrs,
                    how: Discovery::Mdns,
                });
                if !self.swarm.is_connected(&peer) {
                    self.dial(peer, PeerCondition::DisconnectedAndNotDialing);
                }
            }
            Some(MdnsEvent::Lost { peer }) => {
                self.emit(TransportEvent::PeerLost {
                    peer,
                    how: Discovery::Mdns,
                });
            }
            None => {}
        }
    }
}

/// The next mDNS browse event, or never when mDNS is off or its daemon has stopped.
async fn next_mdns(
    events: &Option<mdns_sd::Receiver<mdns_sd::ServiceEvent>>,
) -> mdns_sd::ServiceEvent {
    if let Some(events) = events
        && let Ok(event) = events.recv_async().await
    {
        return event;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A transport on loopback with its identity's folder, which must outlive it.
    struct Node {
        transport: Transport,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for Node {
        type Target = Transport;
        fn deref(&self) -> &Transport {
            &self.transport
        }
    }

    async fn start_node(bootstrap: Vec<(PeerId, Multiaddr)>) -> Node {
        start_with(TransportConfig {
            bootstrap,
            ..TransportConfig::loopback()
        })
        .await
    }

    async fn start_with(config: TransportConfig) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let transport = Transport::start(config, &identity).await.unwrap();
        Node {
            transport,
            _dir: dir,
        }
    }

    /// A and C know only B, as DHT seed: A - B - C.
    async fn line_of_three() -> (Node, Node, Node) {
        let b = start_node(Vec::new()).await;
        let tcp = (b.listen_addrs().await.unwrap().into_iter())
            .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
            .unwrap();
        let seed = vec![(b.local_peer_id(), tcp)];
        let a = start_node(seed.clone()).await;
        let c = start_node(seed).await;
        (a, b, c)
    }

    #[tokio::test]
    async fn a_record_put_by_one_peer_is_found_by_another_and_so_is_its_update() {
        let (a, _b, c) = line_of_three().await;
        let key = b"/hyphae/mailbox/a.example".to_vec();

        let stored = a.put_record(key.clone(), b"v1".to_vec()).await.unwrap();
        assert!(stored >= 1, "no peer took the record");
        let found = c.get_records(key.clone()).await.unwrap();
        assert_eq!(found, vec![b"v1".to_vec()]);

        a.put_record(key.clone(), b"v2".to_vec()).await.unwrap();
        let found = c.get_records(key.clone()).await.unwrap();
        assert!(found.contains(&b"v2".to_vec()), "{found:?}");

        // A value at the limit travels too (kad's default packet size would cut it off).
        let big_key = b"/hyphae/mailbox/big.example".to_vec();
        let big: Vec<u8> = (0..MAX_RECORD_VALUE).map(|i| (i % 251) as u8).collect();
        assert!(a.put_record(big_key.clone(), big.clone()).await.unwrap() >= 1);
        assert_eq!(c.get_records(big_key).await.unwrap(), vec![big]);
    }

    #[tokio::test]
    async fn a_missing_key_gives_no_values_within_the_lookup_bound() {
        let (_a, _b, c) = line_of_three().await;
        let started = Instant::now();
        let found = c
            .get_records(b"/hyphae/mailbox/nobody.example".to_vec())
            .await
            .unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert!(
            started.elapsed() < TransportConfig::default().record_lookup_timeout,
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_provider_is_found_by_others_and_never_by_itself() {
        let (a, b, c) = line_of_three().await;
        let key = b"/hyphae/backup".to_vec();
        b.start_providing(key.clone()).await.unwrap();
        assert_eq!(
            c.providers(key.clone()).await.unwrap(),
            vec![b.local_peer_id()]
        );
        assert_eq!(
            a.providers(key.clone()).await.unwrap(),
            vec![b.local_peer_id()]
        );
        assert_eq!(b.providers(key).await.unwrap(), Vec::<PeerId>::new());
        assert!((c.providers(b"/hyphae/nothing".to_vec()).await.unwrap()).is_empty());
    }

    #[tokio::test]
    async fn alone_a_record_is_kept_locally_and_oversized_ones_are_refused() {
        let a = start_node(Vec::new()).await;
        let key = b"/hyphae/mailbox/alone.example".to_vec();
        assert_eq!(
            a.put_record(key.clone(), b"mine".to_vec()).await.unwrap(),
            0
        );
        assert_eq!(
            a.get_records(key.clone()).await.unwrap(),
            vec![b"mine".to_vec()]
        );
        a.start_providing(key.clone()).await.unwrap();
        assert!(a.providers(key.clone()).await.unwrap().is_empty());

        let too_big = vec![0; MAX_RECORD_VALUE + 1];
        match a.put_record(key.clone(), too_big).await {
            Err(TransportError::RecordTooLarge { size, limit }) => {
                assert_eq!((size, limit), (MAX_RECORD_VALUE + 1, MAX_RECORD_VALUE));
            }
            other => panic!("an oversized value was not refused: {other:?}"),
        }
        let long_key = vec![b'k'; MAX_RECORD_KEY + 1];
        assert!(matches!(
            a.put_record(long_key.clone(), b"x".to_vec()).await,
            Err(TransportError::KeyTooLarge { .. })
        ));
        assert!(matches!(
            a.get_records(long_key).await,
            Err(TransportError::KeyTooLarge { .. })
        ));
        // The refused put left the stored value alone.
        assert_eq!(a.get_records(key).await.unwrap(), vec![b"mine".to_vec()]);
    }

    #[tokio::test]
    async fn a_lookup_stalled_by_a_silent_peer_answers_with_what_it_has_at_its_deadline() {
        // A seed that accepts TCP connections and never says a word: each dial to it hangs for
        // the connection timeout (10 s), far past the lookup bound set here.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let seed: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let bound = Duration::from_secs(2);
        let a = start_with(TransportConfig {
            bootstrap: vec![(PeerId::random(), seed)],
            record_lookup_timeout: bound,
            ..TransportConfig::loopback()
        })
        .await;
        let key = b"/hyphae/mailbox/stalled.example".to_vec();

        // The put waits on the silent seed too, but its first poll hands the command over and
        // the record is stored locally when that is handled: commands are handled in order, so
        // the lookup below sees the value.
        let mut put = Box::pin(a.put_record(key.clone(), b"mine".to_vec()));
        assert!(futures::poll!(&mut put).is_pending());
        let started = Instant::now();
        assert_eq!(
            a.get_records(key.clone()).await.unwrap(),
            vec![b"mine".to_vec()]
        );
        let took = started.elapsed();
        assert!(took >= bound && took < bound * 2, "took {took:?}");

        let started = Instant::now();
        assert!(a.providers(key).await.unwrap().is_empty());
        let took = started.elapsed();
        assert!(took >= bound && took < bound * 2, "took {took:?}");

        // No peer took it, which is not an error.
        assert_eq!(put.await.unwrap(), 0);
        held.abort();
    }

    #[test]
    fn the_relay_is_read_from_a_circuit_address() {
        let relay = PeerId::random();
        let tcp: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let circuit = tcp
            .clone()
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        assert_eq!(relay_of_circuit(&circuit), Some((relay, vec![tcp.clone()])));
        let bare = Multiaddr::empty()
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        assert_eq!(relay_of_circuit(&bare), Some((relay, vec![])));
        assert_eq!(relay_of_circuit(&tcp), None);
    }

    #[test]
    fn a_relay_is_reserved_on_at_the_listen_address_the_connection_uses() {
        let addr = |s: &str| -> Multiaddr { s.parse().unwrap() };
        let listen = [
            addr("/ip4/10.0.1.254/udp/4001/quic-v1"),
            addr("/ip4/10.0.2.254/tcp/4001"),
            addr("/ip4/10.0.2.254/udp/4001/quic-v1"),
        ];
        // Dialled: exactly the address used.
        let dialled = addr("/ip4/10.0.2.254/udp/4001/quic-v1");
        assert_eq!(relay_address(&dialled, &listen), Some(dialled.clone()));
        // Dialled in from an ephemeral port: a listen address on the same IP.
        let inbound = addr("/ip4/10.0.2.254/tcp/53124");
        assert_eq!(
            relay_address(&inbound, &listen),
            Some(addr("/ip4/10.0.2.254/tcp/4001"))
        );
        // Unknown IP, or a relayed connection: nowhere.
        assert_eq!(relay_address(&addr("/ip4/10.0.3.1/tcp/1"), &listen), None);
        let relayed = dialled
            .with(Protocol::P2p(PeerId::random()))
            .with(Protocol::P2pCircuit);
        assert_eq!(relay_address(&relayed, &listen), None);
    }

    #[test]
    fn loopback_and_unspecified_addresses_reach_only_their_own_machine() {
        for local in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip6/::1/tcp/4001",
        ] {
            assert!(is_local_only(&local.parse().unwrap()), "{local}");
        }
        for remote in ["/ip4/10.199.2.7/tcp/4001", "/ip6/fd00::7/udp/4001/quic-v1"] {
            assert!(!is_local_only(&remote.parse().unwrap()), "{remote}");
        }
    }
}
