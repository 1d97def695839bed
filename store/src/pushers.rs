//! Pushers: where a user's clients asked to be pushed to. Kept and listed, never called: the
//! node is the device itself. A pusher goes with the device that set it.

use rusqlite::params;

use crate::Store;
use crate::error::Result;

impl Store {
    /// Adds or replaces the user's pusher with this app id and pushkey. Unless `append`, the
    /// same app id and pushkey are taken from every other user (the spec's default: a device
    /// is pushed for the account last logged in on it).
    pub async fn set_pusher(
        &self,
        localpart: String,
        device_id: String,
        app_id: String,
        pushkey: String,
        pusher: String,
        append: bool,
    ) -> Result<()> {
        self.write(move |conn| {
            if !append {
                conn.execute(
                    "DELETE FROM pushers WHERE app_id = ?1 AND pushkey = ?2 AND localpart != ?3",
                    params![app_id, pushkey, localpart],
                )?;
            }
            conn.execute(
                "INSERT INTO pushers (localpart, device_id, app_id, pushkey, pusher)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (localpart, app_id, pushkey) DO UPDATE
                 SET device_id = excluded.device_id, pusher = excluded.pusher",
                params![localpart, device_id, app_id, pushkey, pusher],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes the user's pusher; `false` when there was none.
    pub async fn delete_pusher(
        &self,
        localpart: String,
        app_id: String,
        pushkey: String,
    ) -> Result<bool> {
        self.write(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM pushers WHERE localpart = ?1 AND app_id = ?2 AND pushkey = ?3",
                params![localpart, app_id, pushkey],
            )?;
            Ok(deleted > 0)
        })
        .await
    }

    /// The user's pushers, as JSON, in the order they were first set.
    pub async fn pushers(&self, localpart: String) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached("SELECT pusher FROM pushers WHERE localpart = ?1 ORDER BY rowid")?;
            let rows = statement
                .query_map([localpart], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewDevice;

    #[tokio::test]
    async fn pushers_are_per_user_and_go_with_their_device() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for (name, device) in [("alice", "A1"), ("alice", "A2"), ("bob", "B1")] {
            if store.account(name.into()).await.unwrap().is_none() {
                store.create_account(name.into(), None).await.unwrap();
            }
            store
                .login_device(NewDevice {
                    localpart: name.into(),
                    device_id: device.into(),
                    display_name: None,
                    token_hash: device.as_bytes().to_vec(),
                })
                .await
                .unwrap();
        }
        let set = |who: &str, device: &str, key: &str, body: &str, append: bool| {
            store.set_pusher(
                who.into(),
                device.into(),
                "app".into(),
                key.into(),
                body.into(),
                append,
            )
        };
        set("alice", "A1", "k1", "1", false).await.unwrap();
        set("alice", "A2", "k2", "2", false).await.unwrap();
        set("alice", "A1", "k1", "1b", false).await.unwrap();
        assert_eq!(store.pushers("alice".into()).await.unwrap(), ["1b", "2"]);
        // Bob takes k2 for himself; with append Alice would have kept hers.
        set("bob", "B1", "k1", "b", true).await.unwrap();
        set("bob", "B1", "k2", "b2", false).await.unwrap();
        assert_eq!(store.pushers("alice".into()).await.unwrap(), ["1b"]);
        assert_eq!(store.pushers("bob".into()).await.unwrap(), ["b", "b2"]);
        assert!(
            store
                .delete_pusher("bob".into(), "app".into(), "k1".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_pusher("bob".into(), "app".into(), "k1".into())
                .await
                .unwrap()
        );
        store
            .delete_device("@alice:x".into(), "A1".into())
            .await
            .unwrap();
        assert!(store.pushers("alice".into()).await.unwrap().is_empty());
    }
}
