//! What this node learnt of other servers' users: their profiles as their servers answered, the
//! owners of the nodes that connected here, and, when their server cannot be asked, the name
//! and avatar their latest membership event here carries.

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::{Store, now_ms};

/// Cached profiles kept at most; the ones fetched longest ago go first.
pub const MAX_REMOTE_PROFILES: usize = 10_000;
/// Owners of nodes kept at most; the ones learnt longest ago go first.
pub const MAX_PEER_OWNERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedProfile {
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    /// When the user's server answered.
    pub fetched_ms: i64,
}

/// A node's owner, as the node said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOwner {
    pub user_id: String,
    pub displayname: Option<String>,
    pub learned_ms: i64,
}

impl Store {
    pub async fn remote_profile(&self, user_id: String) -> Result<Option<CachedProfile>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT displayname, avatar_url, fetched_ms FROM remote_profiles
                     WHERE user_id = ?1",
                )?
                .query_row([user_id], |row| {
                    Ok(CachedProfile {
                        displayname: row.get(0)?,
                        avatar_url: row.get(1)?,
                        fetched_ms: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Keeps what `user_id`'s server answered now, dropping the oldest entries beyond
    /// [`MAX_REMOTE_PROFILES`].
    pub async fn put_remote_profile(
        &self,
        user_id: String,
        displayname: Option<String>,
        avatar_url: Option<String>,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO remote_profiles (user_id, displayname, avatar_url, fetched_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname,
                     avatar_url = excluded.avatar_url, fetched_ms = excluded.fetched_ms",
            )?
            .execute(params![user_id, displayname, avatar_url, now_ms()])?;
            conn.prepare_cached(
                "DELETE FROM remote_profiles WHERE user_id IN (
                     SELECT user_id FROM remote_profiles ORDER BY fetched_ms DESC, user_id
                     LIMIT -1 OFFSET ?1)",
            )?
            .execute([MAX_REMOTE_PROFILES as i64])?;
            Ok(())
        })
        .await
    }

    /// Drops a cached profile (the user's server says there is no such user).
    pub async fn forget_remote_profile(&self, user_id: String) -> Result<()> {
        self.write(move |conn| {
            conn.execute("DELETE FROM remote_profiles WHERE user_id = ?1", [user_id])?;
            Ok(())
        })
        .await
    }

    /// The display name and avatar URL of the user's most recent join held here (in any room
    /// the user is joined to), when there is one. Fields that are not strings count as absent.
    pub async fn member_profile(
        &self,
        user_id: String,
    ) -> Result<Option<(Option<String>, Option<String>)>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT
                         CASE WHEN json_type(e.pdu, '$.content.displayname') = 'text'
                              THEN json_extract(e.pdu, '$.content.displayname') END,
                         CASE WHEN json_type(e.pdu, '$.content.avatar_url') = 'text'
                              THEN json_extract(e.pdu, '$.content.avatar_url') END
                     FROM memberships m JOIN events e ON e.event_id = m.event_id
                     WHERE m.user_id = ?1 AND m.membership = 'join'
                     ORDER BY m.stream_pos DESC LIMIT 1",
                )?
                .query_row([user_id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?)
        })
        .await
    }

    pub async fn peer_owner(&self, server_name: String) -> Result<Option<PeerOwner>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT user_id, displayname, learned_ms FROM peer_owners
                     WHERE server_name = ?1",
                )?
                .query_row([server_name], |row| {
                    Ok(PeerOwner {
                        user_id: row.get(0)?,
                        displayname: row.get(1)?,
                        learned_ms: row.get(2)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    /// Keeps who owns `server_name` as it said now, dropping the oldest entries beyond
    /// [`MAX_PEER_OWNERS`].
    pub async fn put_peer_owner(
        &self,
        server_name: String,
        user_id: String,
        displayname: Option<String>,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO peer_owners (server_name, user_id, displayname, learned_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (server_name) DO UPDATE SET user_id = excluded.user_id,
                     displayname = excluded.displayname, learned_ms = excluded.learned_ms",
            )?
            .execute(params![server_name, user_id, displayname, now_ms()])?;
            conn.prepare_cached(
                "DELETE FROM peer_owners WHERE server_name IN (
                     SELECT server_name FROM peer_owners ORDER BY learned_ms DESC, server_name
                     LIMIT -1 OFFSET ?1)",
            )?
            .execute([MAX_PEER_OWNERS as i64])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_profile_cache_keeps_the_newest_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        // A full cache of old entries.
        store
            .write(|conn| {
                let mut insert = conn.prepare(
                    "INSERT INTO remote_profiles (user_id, displayname, fetched_ms)
                     VALUES (?1, 'old', ?2)",
                )?;
                for i in 0..MAX_REMOTE_PROFILES {
                    insert.execute(params![format!("@u{i}:old.example"), i as i64])?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let bob = "@bob:b.example".to_owned();
        store
            .put_remote_profile(bob.clone(), Some("Bob".into()), None)
            .await
            .unwrap();
        store
            .put_remote_profile(bob.clone(), Some("Bobby".into()), Some("mxc://b/a".into()))
            .await
            .unwrap();
        let cached = store.remote_profile(bob.clone()).await.unwrap().unwrap();
        assert_eq!(cached.displayname.as_deref(), Some("Bobby"));
        assert_eq!(cached.avatar_url.as_deref(), Some("mxc://b/a"));
        let count: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM remote_profiles", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, MAX_REMOTE_PROFILES as i64);
        assert!(
            store
                .remote_profile("@u0:old.example".into())
                .await
                .unwrap()
                .is_none(),
            "the entry fetched longest ago went"
        );
        store.forget_remote_profile(bob.clone()).await.unwrap();
        assert!(store.remote_profile(bob).await.unwrap().is_none());
    }
}
