//! A small libp2p behaviour for raw `/http/1.1` streams: opens outbound streams on request and
//! hands every inbound one to the swarm task.
//!
//! Why not libp2p-stream: its accept queue holds one stream and drops the next with only a
//! debug log, so bursts of requests were lost (measured 0.2–3 %). Here an inbound stream travels
//! as an ordinary handler event, through the swarm's bounded per-connection event channel: when
//! the swarm task is busy the connection task waits (back-pressure) instead of dropping, and the
//! muxer's stream limit bounds how many wait.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::oneshot;

pub(crate) const HTTP_PROTOCOL: StreamProtocol = StreamProtocol::new("/http/1.1");

/// Why an outbound stream could not be opened on an existing connection.
#[derive(Debug)]
pub(crate) enum OpenError {
    Unsupported,
    /// No address known and the DHT found none (set by the swarm task, not the handler).
    NotFound,
    Failed(String),
}

/// Where the opened stream (or the reason it failed) goes.
pub(crate) type StreamReply = oneshot::Sender<Result<Stream, OpenError>>;

#[derive(Debug)]
pub(crate) struct InboundStream {
    pub peer: PeerId,
    /// The IP address the connection comes from (a relay's, for a relayed one).
    pub ip: Option<IpAddr>,
    pub stream: Stream,
}

#[derive(Default)]
pub(crate) struct Behaviour {
    /// Open connections per peer, each marked relayed or not; streams go on the newest direct
    /// one, and over a relay circuit only when there is no direct connection (circuits are
    /// capped in bytes and time).
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// The IP address each connection comes from.
    ips: HashMap<ConnectionId, IpAddr>,
    pending: VecDeque<ToSwarm<InboundStream, StreamReply>>,
}

impl Behaviour {
    /// Asks a connection to `peer` for a new stream; gives the reply back if there is none.
    pub fn open(&mut self, peer: PeerId, reply: StreamReply) -> Result<(), StreamReply> {
        let connections = self.connections.get(&peer);
        let direct = connections.and_then(|c| c.iter().rev().find(|(_, relayed)| !relayed));
        match direct.or_else(|| connections.and_then(|c| c.last())) {
            Some((connection, _)) => {
                self.pending.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(*connection),
                    event: reply,
                });
                Ok(())
            }
            None => Err(reply),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = InboundStream;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let relayed = e.endpoint.is_relayed();
                let ip = e
                    .endpoint
                    .get_remote_address()
                    .iter()
                    .find_map(|p| match p {
                        libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpAddr::from(ip)),
                        libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpAddr::from(ip)),
                        _ => None,
                    });
                if let Some(ip) = ip {
                    self.ips.insert(e.connection_id, ip);
                }
                self.connections
                    .entry(e.peer_id)
                    .or_default()
                    .push((e.connection_id, relayed));
            }
            FromSwarm::ConnectionClosed(e) => {
                self.ips.remove(&e.connection_id);
                if let Some(list) = self.connections.get_mut(&e.peer_id) {
                    list.retain(|(c, _)| *c != e.connection_id);
                    if list.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: THandlerOutEvent<Self>,
    ) {
        let ip = self.ips.get(&connection).copied();
        self.pending
            .push_back(ToSwarm::GenerateEvent(InboundStream { peer, ip, stream }));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<InboundStream, THandlerInEvent<Self>>> {
        // The swarm task polls the swarm after every command it handles, so work queued by
        // `open` is picked up without a waker.
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

#[derive(Default)]
pub(crate) struct Handler {
    /// Stream requests not yet handed to the connection.
    to_open: VecDeque<StreamReply>,
    /// Negotiated inbound streams not yet handed to the behaviour.
    inbound: VecDeque<Stream>,
    /// Requests handed to the connection whose negotiation is still running.
    opening: usize,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = StreamReply;
    type ToBehaviour = Stream;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = StreamReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(HTTP_PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Open streams keep the connection by themselves; this covers the gap before one exists.
        !self.to_open.is_empty() || self.opening > 0 || !self.inbound.is_empty()
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, StreamReply, Stream>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(stream));
        }
        if let Some(reply) = self.to_open.pop_front() {
            self.opening += 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(HTTP_PROTOCOL), reply),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, reply: StreamReply) {
        self.to_open.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), StreamReply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.inbound.push_back(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                self.opening = self.opening.saturating_sub(1);
                // The caller may have given up (timeout): then the stream just closes.
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                self.opening = self.opening.saturating_sub(1);
                let error = match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => {
                        OpenError::Failed("stream negotiation timed out".into())
                    }
                    StreamUpgradeError::Io(e) => OpenError::Failed(e.to_string()),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}
