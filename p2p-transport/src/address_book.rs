//! The swarm task's memory of how to reach peers: addresses learnt from the config, the node,
//! mDNS, identify and the DHT. Bounded per peer so a peer cannot make us store without end.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Newest addresses kept per peer; older ones fall off.
const MAX_ADDRS_PER_PEER: usize = 16;

#[derive(Default)]
pub(crate) struct AddressBook {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// Adds addresses (without any `/p2p/..` suffix); returns those that were new.
    pub fn add(
        &mut self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Vec<Multiaddr> {
        let known = self.peers.entry(peer).or_default();
        let mut new = Vec::new();
        for mut addr in addrs {
            if let Some(Protocol::P2p(_)) = addr.iter().last() {
                addr.pop();
            }
            if addr.is_empty() || known.contains(&addr) {
                continue;
            }
            known.push(addr.clone());
            new.push(addr);
        }
        if known.len() > MAX_ADDRS_PER_PEER {
            let excess = known.len() - MAX_ADDRS_PER_PEER;
            known.drain(..excess);
        }
        new
    }

    pub fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_new_addresses_once_and_bounded() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert_eq!(book.add(peer, [a.clone()]), vec![a.clone()]);
        assert!(
            book.add(peer, [a.clone().with(Protocol::P2p(peer))])
                .is_empty()
        );
        for port in 2..40 {
            book.add(
                peer,
                [format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()],
            );
        }
        let kept = book.get(&peer);
        assert_eq!(kept.len(), MAX_ADDRS_PER_PEER);
        assert!(!kept.contains(&a), "the oldest address falls off");
    }
}
