//! LAN discovery with standard DNS-SD (mdns-sd, its own thread): advertises this node as
//! `<first 16 hex of the key>._hyphae._udp.local.` with TXT `key=<full hex key>` and one
//! `addrN=<multiaddr>` per listen address, and browses for the same service.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, Receiver, ServiceDaemon, ServiceEvent, ServiceInfo, TxtProperties};

use crate::config::MdnsConfig;

pub(crate) const SERVICE_TYPE: &str = "_hyphae._udp.local.";

pub(crate) enum MdnsEvent {
    Discovered { peer: PeerId, addrs: Vec<Multiaddr> },
    Lost { peer: PeerId },
}

pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    local_peer: PeerId,
    server_name: String,
    instance: String,
    /// What we advertise now, so unchanged addresses are not re-announced.
    advertised: Vec<Multiaddr>,
    /// Browse results by DNS-SD full name: the peer and the addresses last reported.
    found: HashMap<String, (PeerId, Vec<Multiaddr>)>,
}

impl Mdns {
    /// Starts the daemon on the configured interfaces and browses for peers.
    pub fn start(
        config: &MdnsConfig,
        server_name: &str,
        local_peer: PeerId,
    ) -> Result<(Mdns, Receiver<ServiceEvent>), mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        // Selections apply in order, so "none, then these" limits multicast to the named ones.
        if !config.interfaces.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            for name in &config.interfaces {
                daemon.enable_interface(IfKind::Name(name.clone()))?;
            }
        }
        if !config.ipv6 {
            daemon.disable_interface(IfKind::IPv6)?;
        }
        let browse = daemon.browse(SERVICE_TYPE)?;
        let mdns = Mdns {
            daemon,
            local_peer,
            server_name: server_name.to_owned(),
            instance: server_name.chars().take(16).collect(),
            advertised: Vec::new(),
            found: HashMap::new(),
        };
        Ok((mdns, browse))
    }

    /// (Re-)registers the service with these listen addresses; registering the same name again
    /// updates the records.
    pub fn advertise(&mut self, listen: &[Multiaddr]) {
        let addrs = advertised_addrs(listen);
        if addrs == self.advertised || addrs.is_empty() {
            return;
        }
        // SRV needs a port; peers dial the TXT multiaddrs, so any listener's port will do.
        let port = addrs.iter().find_map(port_of).unwrap_or(9);
        let mut txt = vec![("key".to_owned(), self.server_name.clone())];
        txt.extend(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("addr{i}"), a.to_string())),
        );
        let host = format!("{}.local.", self.instance);
        let info = match ServiceInfo::new(SERVICE_TYPE, &self.instance, &host, "", port, &txt[..]) {
            Ok(info) => info.enable_addr_auto(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the mDNS service record");
                return;
            }
        };
        match self.daemon.register(info) {
            Ok(()) => {
                tracing::debug!(?addrs, "advertising on mDNS");
                self.advertised = addrs;
            }
            Err(e) => tracing::warn!(error = %e, "cannot register the mDNS service"),
        }
    }

    /// Asks the LAN whether `peer` (found here) is still there, as RFC 6762 §10.4 suggests
    /// when a peer stops answering: if nobody answers, its records are flushed and the browse
    /// reports it removed. Without this a peer that vanished without a goodbye (link down,
    /// battery out) would stay "found" for the records' TTL, over an hour.
    pub fn verify(&self, peer: &PeerId) {
        for (fullname, _) in self.found.iter().filter(|(_, (p, _))| p == peer) {
            if let Err(e) = self
                .daemon
                .verify(fullname.clone(), mdns_sd::VERIFY_TIMEOUT_DEFAULT)
            {
                tracing::debug!(%fullname, error = %e, "cannot verify an mDNS peer");
            }
        }
    }

    /// The peers found here, for the periodic check of those not connected.
    pub fn found_peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.found.values().map(|(p, _)| *p).collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Turns a browse event into a discovery, ignoring ourselves and anything malformed.
    pub fn on_event(&mut self, event: ServiceEvent) -> Option<MdnsEvent> {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let resolved: HashSet<IpAddr> = service
                    .get_addresses()
                    .iter()
                    .map(|ip| ip.to_ip_addr())
                    .collect();
                let (peer, addrs) = match peer_of_record(&service.txt_properties, &resolved) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::debug!(fullname = %service.fullname, error = %e,
                            "ignoring an mDNS record with a bad key");
                        return None;
                    }
                };
                if peer == self.local_peer {
                    return None;
                }
                if !self.found.contains_key(&service.fullname) && self.found.len() >= MAX_FOUND {
                    tracing::debug!(fullname = %service.fullname, "too many mDNS adverts; ignored");
                    return None;
                }
                // mdns-sd resolves again on every refresh: report only what is news.
                let previous = self
                    .found
                    .insert(service.fullname.clone(), (peer, addrs.clone()));
                if addrs.is_empty() || previous == Some((peer, addrs.clone())) {
                    return None;
                }
                Some(MdnsEvent::Discovered { peer, addrs })
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let (peer, _) = self.found.remove(&fullname)?;
                Some(MdnsEvent::Lost { peer })
            }
            _ => None,
        }
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        // Goodbye packets tell browsers at once instead of after the records' TTL.
        if !self.advertised.is_empty() {
            let _ = self
                .daemon
                .unregister(&format!("{}.{SERVICE_TYPE}", self.instance));
        }
        let _ = self.daemon.shutdown();
    }
}

/// Reads a peer's TXT record: the peer its `key` names, and the addresses of its `addrN`
/// entries that name no other peer and are on `resolved` (the IPs the responder itself answered
/// from: a LAN host must not make every node dial wherever its TXT record says), at most
/// [`MAX_TXT_ADDRS`], sorted. An error when the key is missing or not a server name.
pub(crate) fn peer_of_record(
    txt: &TxtProperties,
    resolved: &HashSet<IpAddr>,
) -> Result<(PeerId, Vec<Multiaddr>), String> {
    let key = txt
        .get_property_val_str("key")
        .ok_or_else(|| "no key".to_owned())?;
    let peer = crate::peer_id_for_server_name(key).map_err(|e| e.to_string())?;
    let mut addrs: Vec<Multiaddr> = txt
        .iter()
        .filter(|p| p.key().starts_with("addr"))
        .filter_map(|p| p.val_str().parse::<Multiaddr>().ok())
        .filter_map(|a| for_peer(a, &peer))
        .filter(|a| ip_of(a).is_some_and(|ip| resolved.contains(&ip)))
        .take(MAX_TXT_ADDRS)
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok((peer, addrs))
}

/// Listen addresses worth telling the LAN: loopback ones only when there is nothing else
/// (a test on one host), since a peer elsewhere would reach its own host with them.
fn advertised_addrs(listen: &[Multiaddr]) -> Vec<Multiaddr> {
    let (loopback, other): (Vec<_>, Vec<_>) = listen
        .iter()
        .filter(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
        .cloned()
        .partition(is_loopback);
    let mut addrs = if other.is_empty() { loopback } else { other };
    addrs.sort();
    addrs.dedup();
    addrs
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn port_of(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) | Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

/// At most this many addresses are taken from one mDNS record.
const MAX_TXT_ADDRS: usize = 8;
/// Adverts remembered at once: any LAN host can publish as many as it likes. What they say
/// reaches the address book as heard-of addresses, which never evict known-good ones.
const MAX_FOUND: usize = 256;

fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|part| match part {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Keeps an advertised address only if it names no other peer; strips the `/p2p` suffix.
fn for_peer(mut addr: Multiaddr, peer: &PeerId) -> Option<Multiaddr> {
    if let Some(Protocol::P2p(named)) = addr.iter().last() {
        if named != *peer {
            return None;
        }
        addr.pop();
    }
    Some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_advertised_only_when_alone() {
        let lan: Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert_eq!(advertised_addrs(&[lo.clone(), lan.clone()]), vec![lan]);
        assert_eq!(advertised_addrs(std::slice::from_ref(&lo)), vec![lo]);
    }

    #[test]
    fn an_address_naming_another_peer_is_dropped() {
        let me = PeerId::random();
        let other = PeerId::random();
        let base: Multiaddr = "/ip4/10.1.2.3/udp/4001/quic-v1".parse().unwrap();
        assert_eq!(
            for_peer(base.clone().with(Protocol::P2p(me)), &me),
            Some(base.clone())
        );
        assert_eq!(for_peer(base.clone().with(Protocol::P2p(other)), &me), None);
        assert_eq!(for_peer(base.clone(), &me), Some(base));
    }
}
