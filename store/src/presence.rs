//! Presence as users and other servers last set it, and when other servers were last connected.
//! The node keeps the live view in memory and writes here only when something is set, so a
//! restart shows the same.

use rusqlite::params;

use crate::Store;
use crate::error::Result;

/// Servers whose last connection is remembered, at most; the longest unseen go first.
pub const MAX_SERVERS_SEEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow {
    pub user_id: String,
    /// "online", "unavailable" or "offline".
    pub state: String,
    /// Set with `PUT /presence` (a sync does not override it).
    pub explicit: bool,
    pub status_msg: Option<String>,
    pub last_active_ms: i64,
}

impl Store {
    /// Every presence held.
    pub async fn presence_rows(&self) -> Result<Vec<PresenceRow>> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT user_id, state, explicit, status_msg, last_active_ms FROM presence",
                )?
                .query_map([], |row| {
                    Ok(PresenceRow {
                        user_id: row.get(0)?,
                        state: row.get(1)?,
                        explicit: row.get(2)?,
                        status_msg: row.get(3)?,
                        last_active_ms: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Keeps a presence. Queued at the call, so calls commit in call order: a caller holding
    /// its own lock around the call keeps the store in the order of its changes.
    pub fn put_presence(&self, row: PresenceRow) -> impl Future<Output = Result<()>> + use<> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO presence (user_id, state, explicit, status_msg, last_active_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,
                     explicit = excluded.explicit, status_msg = excluded.status_msg,
                     last_active_ms = excluded.last_active_ms",
            )?
            .execute(params![
                row.user_id,
                row.state,
                row.explicit,
                row.status_msg,
                row.last_active_ms
            ])?;
            Ok(())
        })
    }

    /// When each server was last connected, as (server name, ms since the epoch).
    pub async fn servers_last_seen(&self) -> Result<Vec<(String, i64)>> {
        self.read(|conn| {
            let rows = conn
                .prepare_cached("SELECT server_name, last_seen_ms FROM server_last_seen")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records that `server_name` was connected at `at_ms`, keeping at most
    /// [`MAX_SERVERS_SEEN`] servers.
    pub async fn note_server_seen(&self, server_name: String, at_ms: i64) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO server_last_seen (server_name, last_seen_ms) VALUES (?1, ?2)
                 ON CONFLICT (server_name) DO UPDATE
                 SET last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
            )?
            .execute(params![server_name, at_ms])?;
            conn.prepare_cached(
                "DELETE FROM server_last_seen WHERE server_name IN (
                     SELECT server_name FROM server_last_seen
                     ORDER BY last_seen_ms DESC, server_name LIMIT -1 OFFSET ?1)",
            )?
            .execute([MAX_SERVERS_SEEN as i64])?;
            Ok(())
        })
        .await
    }
}
