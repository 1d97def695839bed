//! The peer book: peers met before, their addresses and how they were found, so a restarted node
//! redials them at once.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, now_ms};

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
    /// Records that `peer_id` was seen now at `addresses`.
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
            for a in addresses {
                address.execute(params![peer_id, a, now])?;
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
