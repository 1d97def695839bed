//! Policy lists in the store: the lists this node subscribes to as a whole (its operator's
//! choice), and every user's own subscriptions, which are account data.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, now_ms};

impl Store {
    /// The policy rooms this node subscribes to, oldest subscription first.
    pub async fn node_policy_subscriptions(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT room_id FROM policy_node_subscriptions ORDER BY added_ms, room_id",
            )?;
            let rows = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Subscribes the node to a policy room; `false` when it already was.
    pub async fn add_node_policy_subscription(&self, room_id: String) -> Result<bool> {
        self.write(move |conn| {
            let added = conn.execute(
                "INSERT INTO policy_node_subscriptions (room_id, added_ms) VALUES (?1, ?2)
                 ON CONFLICT (room_id) DO NOTHING",
                params![room_id, now_ms()],
            )?;
            Ok(added == 1)
        })
        .await
    }

    /// Ends the node's subscription to a policy room; `false` when there was none.
    pub async fn remove_node_policy_subscription(&self, room_id: String) -> Result<bool> {
        self.write(move |conn| {
            let removed = conn.execute(
                "DELETE FROM policy_node_subscriptions WHERE room_id = ?1",
                [room_id],
            )?;
            Ok(removed == 1)
        })
        .await
    }

    /// Every user's global account data of one type, as (localpart, content JSON): how the
    /// node learns at start which lists its users subscribe to.
    pub async fn global_account_data_of_type(
        &self,
        event_type: String,
    ) -> Result<Vec<(String, String)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT localpart, content FROM account_data
                 WHERE room_id = '' AND event_type = ?1 ORDER BY localpart",
            )?;
            let rows = statement
                .query_map([event_type], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[tokio::test]
    async fn node_subscriptions_are_kept_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert!(
            store
                .add_node_policy_subscription("!a:x".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .add_node_policy_subscription("!a:x".into())
                .await
                .unwrap()
        );
        assert!(
            store
                .add_node_policy_subscription("!b:x".into())
                .await
                .unwrap()
        );
        let mut subscribed = store.node_policy_subscriptions().await.unwrap();
        subscribed.sort();
        assert_eq!(subscribed, ["!a:x", "!b:x"]);
        assert!(
            store
                .remove_node_policy_subscription("!a:x".into())
                .await
                .unwrap()
        );
        assert!(
            !store
                .remove_node_policy_subscription("!a:x".into())
                .await
                .unwrap()
        );
        assert_eq!(store.node_policy_subscriptions().await.unwrap(), ["!b:x"]);
    }

    #[tokio::test]
    async fn account_data_of_one_type_is_listed_for_every_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for (who, room) in [("alice", None), ("bob", None), ("carol", Some("!r:x"))] {
            store.create_account(who.into(), None).await.unwrap();
            store
                .set_account_data(
                    who.into(),
                    room.map(str::to_owned),
                    "io.example".into(),
                    format!("{{\"who\":\"{who}\"}}"),
                )
                .await
                .unwrap();
        }
        let found = store
            .global_account_data_of_type("io.example".into())
            .await
            .unwrap();
        let who: Vec<&str> = found.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(who, ["alice", "bob"], "room account data is not global");
    }
}
