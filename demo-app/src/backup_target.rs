//! A backup server as people give it, on the command line (`--backup`) and in the web UI: its
//! multiaddr ending in `/p2p/<peer id>` (as `hyphae backup-server` prints it), a bare peer id,
//! or a bare server name (the 64 hex characters of its key). One parser for both, so the two
//! accept and refuse the same things with the same words.

use std::str::FromStr;

use hyphae_node::multiaddr::Protocol;
use hyphae_node::{Multiaddr, PeerId};

/// Said whenever an address is not understood, so people learn the forms that work.
const FORMS: &str = "give the backup server's address ending in /p2p/<peer id> (as `hyphae \
                     backup-server` prints it), its peer id, or its server name (64 hex \
                     characters)";

/// Where to subscribe: the server's name and the addresses to dial it at. The bare forms carry
/// no address: the transport then tries what it already knows of the peer (mDNS, the peer
/// book) and else asks the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTarget {
    /// The server name (lowercase hex of its ed25519 key), as `Node::subscribe_backup` takes it.
    pub server: String,
    pub addrs: Vec<Multiaddr>,
}

impl FromStr for BackupTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<BackupTarget, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("no backup server given: {FORMS}"));
        }
        if text.starts_with('/') {
            let addr: Multiaddr = text
                .parse()
                .map_err(|e| format!("{:?} is not a multiaddr ({e}): {FORMS}", shorten(text)))?;
            let server = server_name_of_addr(&addr)?;
            return Ok(BackupTarget {
                server,
                addrs: vec![addr],
            });
        }
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Server names are lower case (the spec asks it); a name copied in upper case is
            // still the same key.
            return Ok(BackupTarget {
                server: text.to_ascii_lowercase(),
                addrs: Vec::new(),
            });
        }
        match PeerId::from_str(text) {
            Ok(peer) => Ok(BackupTarget {
                server: hyphae_node::server_name_of_peer(&peer).map_err(|e| e.to_string())?,
                addrs: Vec::new(),
            }),
            Err(_) => Err(format!(
                "{:?} is not a backup server address: {FORMS}",
                shorten(text)
            )),
        }
    }
}

/// The server name of the peer at `addr`, which must end in `/p2p/<peer id>`: the last
/// component names the server even in a relayed address (`…/p2p/<relay>/p2p-circuit/p2p/<it>`),
/// where the first `/p2p/` is the relay's.
pub fn server_name_of_addr(addr: &Multiaddr) -> Result<String, String> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            hyphae_node::server_name_of_peer(&peer).map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "backup address {addr} does not end in /p2p/<peer id>: {FORMS}"
        )),
    }
}

/// Long input is cut in messages: an error should not echo a pasted page back.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ed25519 peer id (libp2p's own documentation uses it).
    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    fn name_of_peer() -> String {
        hyphae_node::server_name_of_peer(&PEER.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_multiaddr_names_the_server_and_is_dialled() {
        let text = format!("/ip4/203.0.113.5/tcp/4001/p2p/{PEER}");
        let target: BackupTarget = format!("  {text} ").parse().unwrap();
        assert_eq!(target.server, name_of_peer());
        assert_eq!(target.server.len(), 64);
        assert_eq!(target.addrs, vec![text.parse::<Multiaddr>().unwrap()]);
    }

    #[test]
    fn a_relayed_address_names_the_server_behind_the_relay() {
        let relay = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";
        let text = format!("/ip4/203.0.113.5/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{PEER}");
        let target: BackupTarget = text.parse().unwrap();
        assert_eq!(target.server, name_of_peer());
        let unfinished = format!("/ip4/203.0.113.5/tcp/4001/p2p/{relay}/p2p-circuit");
        let error = unfinished.parse::<BackupTarget>().unwrap_err();
        assert!(error.contains("does not end in /p2p/<peer id>"), "{error}");
    }

    #[test]
    fn bare_peer_ids_and_server_names_carry_no_address() {
        let by_peer: BackupTarget = PEER.parse().unwrap();
        assert_eq!(by_peer.server, name_of_peer());
        assert!(by_peer.addrs.is_empty());
        let by_name: BackupTarget = name_of_peer().to_uppercase().parse().unwrap();
        assert_eq!(by_name, by_peer);
    }

    #[test]
    fn anything_else_is_refused_saying_what_works() {
        for text in [
            "",
            "   ",
            "/ip4/203.0.113.5/tcp/4001",
            "/not/a/multiaddr",
            "backup.example.org",
            "12D3KooW-not-a-peer",
            &"a".repeat(63),
            &"g".repeat(64),
        ] {
            let error = text.parse::<BackupTarget>().unwrap_err();
            assert!(error.contains("/p2p/<peer id>"), "{text:?}: {error}");
        }
        let long = "x".repeat(5000);
        assert!(long.parse::<BackupTarget>().unwrap_err().len() < 400);
    }
}
