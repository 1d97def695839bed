//! The peer book: peers met before, their addresses and how they were found, so a restarted node
//! redials them at once. Bounded: anyone can make up peer ids and addresses, so past the caps the
//! peers seen longest ago, and a peer's oldest addresses, go.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, now_ms};

/// Peers kept; a new one past this evicts the one seen longest ago.
pub const MAX_KNOWN_PEERS: usize = 1024;
/// How many peers one eviction makes room for.
const EVICT_BATCH: usize = 64;
/// Addresses kept per peer, the most recently seen.
pub const MAX_ADDRESSES_PER_PEER: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    pub peer_id: String,
    /// Newest first.
    pub addresses: Vec<String>,
    /// How the peer was last found: "mdns", "kad", "configured", ...
    pub found_via: String,
    pub last_seen_ms: i64,
}

impl Store {
    /// Records that `peer_id` was seen now at `addresses`, within the caps.
    pub async fn remember_peer(
        &self,
        peer_id: String,
        addresses: Vec<String>,
        found_via: String,
    ) -> Result<()> {
        self.write(move |conn| {
            let now = now_ms();
            conn.execute(
                "INSERT INTO peers (peer_id, found_via, last_seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_id) DO UPDATE
                 SET found_via = excluded.found_via, last_seen_ms = excluded.last_seen_ms",
                params![peer_id, found_via, now],
            )?;
            let mut address = conn.prepare_cached(
                "INSERT INTO peer_addresses (peer_id, address, last_seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_id, address) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            )?;
            for a in addresses.iter().take(MAX_ADDRESSES_PER_PEER) {
                address.execute(params![peer_id, a, now])?;
            }
            conn.prepare_cached(
                "DELETE FROM peer_addresses WHERE peer_id = ?1 AND address NOT IN
                 (SELECT address FROM peer_addresses WHERE peer_id = ?1
                  ORDER BY last_seen_ms DESC, address LIMIT ?2)",
            )?
            .execute(params![peer_id, MAX_ADDRESSES_PER_PEER as i64])?;
            let peers: i64 = conn
                .prepare_cached("SELECT count(*) FROM peers")?
                .query_row([], |row| row.get(0))?;
            if peers > MAX_KNOWN_PEERS as i64 {
                // Down to a little under the cap, so a flood of new peers evicts in batches.
                // Addresses go with their peer (ON DELETE CASCADE).
                conn.prepare_cached(
                    "DELETE FROM peers WHERE peer_id IN
                     (SELECT peer_id FROM peers ORDER BY last_seen_ms DESC, rowid DESC
                      LIMIT -1 OFFSET ?1)",
                )?
                .execute([(MAX_KNOWN_PEERS - EVICT_BATCH) as i64])?;
            }
            Ok(())
        })
        .await
    }

    /// Every known peer, most recently seen first.
    pub async fn known_peers(&self) -> Result<Vec<KnownPeer>> {
        self.read(|conn| {
            let mut peers = conn
                .prepare_cached(
                    "SELECT peer_id, found_via, last_seen_ms FROM peers
                     ORDER BY last_seen_ms DESC, peer_id",
                )?
                .query_map([], |row| {
                    Ok(KnownPeer {
                        peer_id: row.get(0)?,
                        addresses: Vec::new(),
                        found_via: row.get(1)?,
                        last_seen_ms: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut addresses = conn.prepare_cached(
                "SELECT address FROM peer_addresses WHERE peer_id = ?1
                 ORDER BY last_seen_ms DESC, address",
            )?;
            for peer in &mut peers {
                peer.addresses = addresses
                    .query_map([&peer.peer_id], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
            }
            Ok(peers)
        })
        .await
    }

    pub async fn forget_peer(&self, peer_id: String) -> Result<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM peers WHERE peer_id = ?1", [peer_id])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_peer_book_stays_within_its_caps_under_ten_thousand_made_up_peers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let addr = |n: usize| format!("/ip4/10.0.{}.{}/tcp/4001", n / 256, n % 256);
        store
            .remember_peer("real".into(), vec![addr(1)], "mdns".into())
            .await
            .unwrap();
        // One peer announcing many addresses keeps its newest ones.
        for round in 0..4 {
            let many = (round * 40..round * 40 + 40).map(addr).collect();
            store
                .remember_peer("chatty".into(), many, "identify".into())
                .await
                .unwrap();
        }
        // Ten thousand made-up peers, written as the node writes them: many at once.
        let fakes: Vec<_> = (0..10_000)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .remember_peer(format!("fake-{n:05}"), vec![addr(n)], "dht".into())
                        .await
                })
            })
            .collect();
        for fake in fakes {
            fake.await.unwrap().unwrap();
        }
        let peers = store.known_peers().await.unwrap();
        assert!(peers.len() <= MAX_KNOWN_PEERS, "{}", peers.len());
        assert!(
            peers.len() > MAX_KNOWN_PEERS - EVICT_BATCH,
            "{}",
            peers.len()
        );
        let addresses: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM peer_addresses", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(
            addresses,
            peers.len() as i64,
            "one address each, none orphaned"
        );
        // The oldest unseen went first: the peers met before the flood.
        assert!(peers.iter().all(|p| p.peer_id.starts_with("fake-")));

        // Seen again, a peer comes back with its newest addresses only.
        store
            .remember_peer(
                "chatty".into(),
                (0..40).map(addr).collect(),
                "identify".into(),
            )
            .await
            .unwrap();
        let chatty = store.known_peers().await.unwrap().remove(0);
        assert_eq!(chatty.peer_id, "chatty");
        assert_eq!(chatty.addresses.len(), MAX_ADDRESSES_PER_PEER);
    }

    #[tokio::test]
    async fn peer_book_merges_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let quic = "/ip4/127.0.0.1/udp/4001/quic-v1".to_string();
        let tcp = "/ip4/127.0.0.1/tcp/4001".to_string();
        store
            .remember_peer("peer-a".into(), vec![quic.clone()], "mdns".into())
            .await
            .unwrap();
        store
            .remember_peer(
                "peer-a".into(),
                vec![tcp.clone(), quic.clone()],
                "kad".into(),
            )
            .await
            .unwrap();
        let peers = store.known_peers().await.unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].found_via, "kad");
        let mut addresses = peers[0].addresses.clone();
        addresses.sort();
        assert_eq!(addresses, vec![tcp, quic]);

        store.forget_peer("peer-a".into()).await.unwrap();
        assert!(store.known_peers().await.unwrap().is_empty());
        let orphans: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM peer_addresses", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(orphans, 0, "addresses go with their peer");
    }
}
