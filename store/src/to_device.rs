//! To-device messages: each local device's inbox, in stream order, kept until the device's sync
//! shows it has them; and the sendToDevice transaction ids already delivered.

use rusqlite::{Connection, params};

use crate::error::Result;
use crate::{Store, next_stream_pos, now_ms};

/// How long a sendToDevice transaction id is remembered: a retry later than this is delivered
/// again.
const TXN_ID_KEPT_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// A message for one device of a local user (`device_id` `*`: for all of the user's devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceMessage {
    pub localpart: String,
    pub device_id: String,
    pub sender: String,
    pub event_type: String,
    /// The event content as JSON.
    pub content: String,
}

impl Store {
    /// Puts messages in their devices' inboxes, each at a new stream position. A message for
    /// device `*` goes to every device the user has now; one for a device that does not exist is
    /// dropped.
    pub async fn queue_to_device(&self, messages: Vec<ToDeviceMessage>) -> Result<()> {
        self.write(move |conn| queue(conn, &messages, None).map(drop))
            .await
    }

    /// Like [`Store::queue_to_device`], once per transaction id of the sending device: returns
    /// false (and queues nothing) if `txn_id` was delivered before.
    pub async fn queue_to_device_once(
        &self,
        sender_localpart: String,
        sender_device_id: String,
        txn_id: String,
        messages: Vec<ToDeviceMessage>,
    ) -> Result<bool> {
        self.write(move |conn| {
            let now = now_ms();
            conn.prepare_cached("DELETE FROM to_device_txns WHERE created_ms < ?1")?
                .execute([now - TXN_ID_KEPT_MS])?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO to_device_txns (localpart, device_id, txn_id, created_ms)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (localpart, device_id, txn_id) DO NOTHING",
                )?
                .execute(params![sender_localpart, sender_device_id, txn_id, now])?;
            if inserted == 0 {
                return Ok(false);
            }
            queue(conn, &messages, None)?;
            Ok(true)
        })
        .await
    }

    /// Like [`Store::queue_to_device_once`], for messages another server sent as an
    /// `m.direct_to_device` EDU: once per (`origin`, `message_id`), so an EDU repeated by a
    /// retried transaction is not delivered twice; a device already holding `per_sender`
    /// messages from the same sender gets no more until it takes some (a stranger cannot fill
    /// the inbox of a device that is away). Returns whether it was new, and how many messages
    /// were dropped for full inboxes.
    pub async fn queue_remote_to_device_once(
        &self,
        origin: String,
        message_id: String,
        messages: Vec<ToDeviceMessage>,
        per_sender: u32,
    ) -> Result<(bool, usize)> {
        self.write(move |conn| {
            let now = now_ms();
            conn.prepare_cached("DELETE FROM remote_to_device_ids WHERE created_ms < ?1")?
                .execute([now - TXN_ID_KEPT_MS])?;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO remote_to_device_ids (origin, message_id, created_ms)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (origin, message_id) DO NOTHING",
                )?
                .execute(params![origin, message_id, now])?;
            if inserted == 0 {
                return Ok((false, 0));
            }
            let dropped = queue(conn, &messages, Some(per_sender))?;
            Ok((true, dropped))
        })
        .await
    }

    /// Up to `limit` messages of a device's inbox at stream positions in (`after`, `upto`],
    /// oldest first, as (stream position, event type, sender, content JSON).
    pub async fn to_device_messages(
        &self,
        localpart: String,
        device_id: String,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String, String, String)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT stream_pos, event_type, sender, content FROM to_device_inbox
                 WHERE localpart = ?1 AND device_id = ?2 AND stream_pos > ?3 AND stream_pos <= ?4
                 ORDER BY stream_pos LIMIT ?5",
            )?;
            let messages = statement
                .query_map(params![localpart, device_id, after, upto, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(messages)
        })
        .await
    }

    /// Deletes a device's messages at stream positions up to `upto`: the device has them.
    pub async fn delete_to_device_upto(
        &self,
        localpart: String,
        device_id: String,
        upto: i64,
    ) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "DELETE FROM to_device_inbox
                 WHERE localpart = ?1 AND device_id = ?2 AND stream_pos <= ?3",
            )?
            .execute(params![localpart, device_id, upto])?;
            Ok(())
        })
        .await
    }
}

/// Queues `messages`; with `per_sender`, none for a device that holds that many from the same
/// sender already. Returns how many were dropped so.
fn queue(
    conn: &Connection,
    messages: &[ToDeviceMessage],
    per_sender: Option<u32>,
) -> Result<usize> {
    let mut all_devices = conn
        .prepare_cached("SELECT device_id FROM devices WHERE localpart = ?1 ORDER BY device_id")?;
    // One device is looked up alone: a room key shared with thousands of devices of a few users
    // would otherwise read every device of the user for each message.
    let mut one_device = conn
        .prepare_cached("SELECT device_id FROM devices WHERE localpart = ?1 AND device_id = ?2")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO to_device_inbox (stream_pos, localpart, device_id, sender, event_type, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut held = conn.prepare_cached(
        "SELECT count(*) FROM to_device_inbox WHERE localpart = ?1 AND device_id = ?2 AND sender = ?3",
    )?;
    let mut dropped = 0;
    for message in messages {
        let targets: Vec<String> = if message.device_id == "*" {
            all_devices
                .query_map([&message.localpart], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            one_device
                .query_map([&message.localpart, &message.device_id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        for device_id in targets {
            if let Some(cap) = per_sender {
                let count: u32 = held.query_row(
                    params![message.localpart, device_id, message.sender],
                    |row| row.get(0),
                )?;
                if count >= cap {
                    dropped += 1;
                    continue;
                }
            }
            insert.execute(params![
                next_stream_pos(conn)?,
                message.localpart,
                device_id,
                message.sender,
                message.event_type,
                message.content
            ])?;
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewDevice;

    async fn store_with_devices(devices: &[&str]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("bob".into(), None).await.unwrap();
        for device in devices {
            store
                .login_device(NewDevice {
                    localpart: "bob".into(),
                    device_id: (*device).into(),
                    display_name: None,
                    token_hash: device.as_bytes().to_vec(),
                })
                .await
                .unwrap();
        }
        (dir, store)
    }

    fn message(device_id: &str, content: &str) -> ToDeviceMessage {
        ToDeviceMessage {
            localpart: "bob".into(),
            device_id: device_id.into(),
            sender: "@alice:example".into(),
            event_type: "m.room_key_request".into(),
            content: content.into(),
        }
    }

    #[tokio::test]
    async fn inboxes_in_stream_order_until_deleted() {
        let (_dir, store) = store_with_devices(&["P", "Q"]).await;
        store
            .queue_to_device(vec![
                message("P", "1"),
                message("*", "2"),
                message("NOSUCHDEVICE", "3"),
                message("P", "4"),
            ])
            .await
            .unwrap();
        let inbox = |device: &str, after, limit| {
            store.to_device_messages("bob".into(), device.into(), after, i64::MAX, limit)
        };
        let p = inbox("P", 0, 10).await.unwrap();
        let contents: Vec<&str> = p.iter().map(|m| m.3.as_str()).collect();
        assert_eq!(contents, ["1", "2", "4"]);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(p[0].1, "m.room_key_request");
        assert_eq!(p[0].2, "@alice:example");
        let q = inbox("Q", 0, 10).await.unwrap();
        assert_eq!(q.iter().map(|m| m.3.as_str()).collect::<Vec<_>>(), ["2"]);

        // Limits and ranges page through; deleting acknowledges.
        let first = inbox("P", 0, 1).await.unwrap();
        assert_eq!(first.len(), 1);
        let rest = inbox("P", first[0].0, 10).await.unwrap();
        assert_eq!(rest.len(), 2);
        let upto = store.to_device_messages("bob".into(), "P".into(), 0, p[1].0, 10);
        assert_eq!(upto.await.unwrap().len(), 2);
        store
            .delete_to_device_upto("bob".into(), "P".into(), p[1].0)
            .await
            .unwrap();
        let left = inbox("P", 0, 10).await.unwrap();
        assert_eq!(left.iter().map(|m| m.3.as_str()).collect::<Vec<_>>(), ["4"]);
        assert_eq!(
            inbox("Q", 0, 10).await.unwrap().len(),
            1,
            "other inboxes stay"
        );
    }

    #[tokio::test]
    async fn a_transaction_id_delivers_once() {
        let (_dir, store) = store_with_devices(&["P"]).await;
        let send = || {
            store.queue_to_device_once(
                "bob".into(),
                "P".into(),
                "txn1".into(),
                vec![message("P", "hello")],
            )
        };
        assert!(send().await.unwrap());
        assert!(!send().await.unwrap());
        let inbox = store.to_device_messages("bob".into(), "P".into(), 0, i64::MAX, 10);
        assert_eq!(inbox.await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_remote_message_id_delivers_once_per_origin() {
        let (_dir, store) = store_with_devices(&["P"]).await;
        let send = |origin: &str| {
            store.queue_remote_to_device_once(
                origin.into(),
                "m1".into(),
                vec![message("P", "hello")],
                10,
            )
        };
        assert_eq!(send("a.example").await.unwrap(), (true, 0));
        assert_eq!(
            send("a.example").await.unwrap(),
            (false, 0),
            "a repeated EDU"
        );
        assert_eq!(
            send("b.example").await.unwrap(),
            (true, 0),
            "another server's id space"
        );
        let inbox = store.to_device_messages("bob".into(), "P".into(), 0, i64::MAX, 10);
        assert_eq!(inbox.await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_remote_sender_fills_a_device_inbox_only_up_to_its_share() {
        let (_dir, store) = store_with_devices(&["P", "Q"]).await;
        let send = |id: usize, sender: &str, device: &str| {
            let mut message = message(device, "hello");
            message.sender = sender.into();
            store.queue_remote_to_device_once(
                "a.example".into(),
                format!("m{id}"),
                vec![message],
                3,
            )
        };
        for id in 0..3 {
            assert_eq!(
                send(id, "@mallory:a.example", "*").await.unwrap(),
                (true, 0)
            );
        }
        assert_eq!(
            send(3, "@mallory:a.example", "P").await.unwrap(),
            (true, 1),
            "the fourth from one sender is dropped"
        );
        assert_eq!(send(4, "@alice:a.example", "P").await.unwrap(), (true, 0));
        let inbox = store.to_device_messages("bob".into(), "P".into(), 0, i64::MAX, 10);
        assert_eq!(inbox.await.unwrap().len(), 4);
        // The device takes what it has: room again.
        store
            .delete_to_device_upto("bob".into(), "P".into(), i64::MAX)
            .await
            .unwrap();
        assert_eq!(send(5, "@mallory:a.example", "P").await.unwrap(), (true, 0));
    }
}
