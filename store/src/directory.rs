//! The local room directory: which rooms this server lists in its public room directory.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, now_ms};

impl Store {
    /// Lists a room in the directory (`true`) or takes it out (`false`). Listing it again keeps
    /// when it was first listed.
    pub async fn set_room_published(&self, room_id: String, published: bool) -> Result<()> {
        self.write(move |conn| {
            if published {
                conn.execute(
                    "INSERT INTO room_directory (room_id, published_ms) VALUES (?1, ?2)
                     ON CONFLICT (room_id) DO NOTHING",
                    params![room_id, now_ms()],
                )?;
            } else {
                conn.execute("DELETE FROM room_directory WHERE room_id = ?1", [room_id])?;
            }
            Ok(())
        })
        .await
    }

    /// Whether the room is listed in the directory.
    pub async fn room_published(&self, room_id: String) -> Result<bool> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT 1 FROM room_directory WHERE room_id = ?1")?
                .exists([room_id])?)
        })
        .await
    }

    /// The rooms listed in the directory, in the order they were listed.
    pub async fn published_rooms(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT room_id FROM room_directory ORDER BY published_ms, room_id",
            )?;
            let rooms = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rooms)
        })
        .await
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    #[tokio::test]
    async fn rooms_are_listed_and_unlisted_and_stay_so_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.set_room_published("!a:x".into(), true).await.unwrap();
        store.set_room_published("!b:x".into(), true).await.unwrap();
        store.set_room_published("!a:x".into(), true).await.unwrap();
        assert_eq!(store.published_rooms().await.unwrap(), ["!a:x", "!b:x"]);
        store
            .set_room_published("!a:x".into(), false)
            .await
            .unwrap();
        assert!(!store.room_published("!a:x".into()).await.unwrap());
        store.close().await;

        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.published_rooms().await.unwrap(), ["!b:x"]);
        assert!(store.room_published("!b:x".into()).await.unwrap());
    }
}
