//! Who shares a room with whom, and the people a user may find in the user directory: this
//! node's accounts, the members of the rooms the user is in, and the owners of nodes nearby.

use rusqlite::{OptionalExtension, params};

use crate::Store;
use crate::error::Result;

/// A person as the directory shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

impl DirectoryEntry {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DirectoryEntry> {
        Ok(DirectoryEntry {
            user_id: row.get(0)?,
            displayname: row.get(1)?,
            avatar_url: row.get(2)?,
        })
    }
}

impl Store {
    /// Everyone joined to a room `user_id` is joined to (`user_id` too, when in any room).
    pub async fn room_mates(&self, user_id: String) -> Result<Vec<String>> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT DISTINCT other.user_id FROM memberships mine
                     JOIN memberships other
                         ON other.room_id = mine.room_id AND other.membership = 'join'
                     WHERE mine.user_id = ?1 AND mine.membership = 'join'",
                )?
                .query_map([user_id], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Whether `a` and `b` are both joined to some room.
    pub async fn share_a_room(&self, a: String, b: String) -> Result<bool> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT 1 FROM memberships x
                     JOIN memberships y ON y.room_id = x.room_id AND y.membership = 'join'
                     WHERE x.user_id = ?1 AND x.membership = 'join' AND y.user_id = ?2
                     LIMIT 1",
                )?
                .query_row([a, b], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    /// This node's accounts that are not deactivated, by localpart (as `user_id`), with their
    /// profiles; at most `limit`.
    pub async fn local_directory(&self, limit: usize) -> Result<Vec<DirectoryEntry>> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT a.localpart, p.displayname, p.avatar_url FROM accounts a
                     LEFT JOIN profiles p USING (localpart)
                     WHERE a.deactivated = 0 ORDER BY a.localpart LIMIT ?1",
                )?
                .query_map([limit as i64], DirectoryEntry::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The members of the rooms `user_id` is joined to, with the profile their server last
    /// answered, else the name and avatar of their newest membership among those rooms; at
    /// most `limit`.
    pub async fn room_mates_directory(
        &self,
        user_id: String,
        limit: usize,
    ) -> Result<Vec<DirectoryEntry>> {
        self.read(move |conn| {
            // The bare columns come from the row with the largest stream position (SQLite).
            let rows = conn
                .prepare_cached(
                    "SELECT other.user_id,
                         coalesce(p.displayname,
                             CASE WHEN json_type(e.pdu, '$.content.displayname') = 'text'
                                  THEN json_extract(e.pdu, '$.content.displayname') END),
                         coalesce(p.avatar_url,
                             CASE WHEN json_type(e.pdu, '$.content.avatar_url') = 'text'
                                  THEN json_extract(e.pdu, '$.content.avatar_url') END),
                         max(other.stream_pos)
                     FROM memberships mine
                     JOIN memberships other
                         ON other.room_id = mine.room_id AND other.membership = 'join'
                     LEFT JOIN events e ON e.event_id = other.event_id
                     LEFT JOIN remote_profiles p ON p.user_id = other.user_id
                     WHERE mine.user_id = ?1 AND mine.membership = 'join'
                     GROUP BY other.user_id LIMIT ?2",
                )?
                .query_map(params![user_id, limit as i64], DirectoryEntry::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The owners of `servers` as the nodes said, with the name of whichever is newer: what the
    /// node said or what the owner's server last answered for their profile.
    pub async fn peer_owners_of(&self, servers: Vec<String>) -> Result<Vec<DirectoryEntry>> {
        self.read(move |conn| {
            let mut owner = conn.prepare_cached(
                "SELECT o.user_id,
                     CASE WHEN p.fetched_ms > o.learned_ms THEN p.displayname
                          ELSE o.displayname END,
                     p.avatar_url
                 FROM peer_owners o LEFT JOIN remote_profiles p ON p.user_id = o.user_id
                 WHERE o.server_name = ?1",
            )?;
            let mut owners = Vec::new();
            for server in servers {
                if let Some(entry) = owner
                    .query_row([server], DirectoryEntry::from_row)
                    .optional()?
                {
                    owners.push(entry);
                }
            }
            Ok(owners)
        })
        .await
    }
}
