//! The swarm task's memory of how to reach peers. An address is either known-good (this node
//! dialled it and got the peer, authenticated by its key) or heard of (from the config, mDNS,
//! identify, the DHT): anyone can say anything about where a peer is, so what is heard is kept
//! apart, bounded, and never evicts what is known-good. Bounded per peer and in peers, so no
//! one can make us store without end.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Newest known-good addresses kept per peer.
const MAX_GOOD: usize = 8;
/// Newest heard-of addresses kept per peer; older ones fall off.
const MAX_HEARD: usize = 16;
/// Peers remembered; past this the least recently told of goes, preferring one with no
/// known-good address.
const MAX_PEERS: usize = 4096;

#[derive(Default)]
struct Addresses {
    good: Vec<Multiaddr>,
    heard: Vec<Multiaddr>,
    /// When this peer was last added to or confirmed (a counter, not a clock).
    touched: u64,
}

#[derive(Default)]
pub(crate) struct AddressBook {
    peers: HashMap<PeerId, Addresses>,
    clock: u64,
}

fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// Appends `addr` as the newest of `list` (moving it if present), keeping at most `max`.
fn push_newest(list: &mut Vec<Multiaddr>, addr: Multiaddr, max: usize) {
    list.retain(|a| *a != addr);
    list.push(addr);
    if list.len() > max {
        let excess = list.len() - max;
        list.drain(..excess);
    }
}

impl AddressBook {
    fn entry(&mut self, peer: PeerId) -> &mut Addresses {
        self.clock += 1;
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, a)| (!a.good.is_empty(), a.touched))
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.peers.remove(&oldest);
            }
        }
        let entry = self.peers.entry(peer).or_default();
        entry.touched = self.clock;
        entry
    }

    /// Adds addresses heard of (without any `/p2p/..` suffix); returns those that were new.
    pub fn add(
        &mut self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Vec<Multiaddr> {
        let known = self.entry(peer);
        let mut new = Vec::new();
        for addr in addrs.into_iter().map(without_peer) {
            if addr.is_empty() || known.good.contains(&addr) || known.heard.contains(&addr) {
                continue;
            }
            push_newest(&mut known.heard, addr.clone(), MAX_HEARD);
            new.push(addr);
        }
        new
    }

    /// Notes that dialling `addr` reached `peer`: a known-good address from now on.
    pub fn confirm(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = without_peer(addr);
        if addr.is_empty() {
            return;
        }
        let known = self.entry(peer);
        known.heard.retain(|a| *a != addr);
        push_newest(&mut known.good, addr, MAX_GOOD);
    }

    /// Where to dial `peer`: known-good addresses first, newest first, then those heard of.
    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|a| {
                a.good
                    .iter()
                    .rev()
                    .chain(a.heard.iter().rev())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn keeps_new_addresses_once_and_bounded() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        let a = tcp(1);
        assert_eq!(book.add(peer, [a.clone()]), vec![a.clone()]);
        assert!(
            book.add(peer, [a.clone().with(Protocol::P2p(peer))])
                .is_empty()
        );
        for port in 2..40 {
            book.add(peer, [tcp(port)]);
        }
        let kept = book.get(&peer);
        assert_eq!(kept.len(), MAX_HEARD);
        assert!(!kept.contains(&a), "the oldest address falls off");
    }

    #[test]
    fn what_is_heard_never_evicts_an_address_that_reached_the_peer() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        book.confirm(peer, tcp(1).with(Protocol::P2p(peer)));
        for port in 100..200 {
            book.add(peer, [tcp(port)]);
        }
        let kept = book.get(&peer);
        assert_eq!(kept[0], tcp(1), "the known-good address is dialled first");
        assert_eq!(kept.len(), 1 + MAX_HEARD);
        assert!(book.add(peer, [tcp(1)]).is_empty(), "it is not news either");

        // A flood of made-up peers evicts peers with no known-good address first.
        for _ in 0..MAX_PEERS + 10 {
            book.add(PeerId::random(), [tcp(7)]);
        }
        assert_eq!(book.peers.len(), MAX_PEERS);
        assert_eq!(book.get(&peer)[0], tcp(1));
    }
}
