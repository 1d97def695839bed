//! Read receipts: the newest event each user has read in each room (per receipt type and
//! thread), at stream positions so `/sync` sends changes.

use rusqlite::params;

use crate::error::Result;
use crate::{Store, next_stream_pos, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub user_id: String,
    pub receipt_type: String,
    /// "" for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

impl Store {
    pub async fn set_receipt(
        &self,
        room_id: String,
        user_id: String,
        receipt_type: String,
        thread_id: String,
        event_id: String,
    ) -> Result<()> {
        self.write(move |conn| {
            let position = next_stream_pos(conn)?;
            conn.execute(
                "INSERT INTO receipts
                     (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE
                 SET event_id = excluded.event_id, ts = excluded.ts,
                     stream_pos = excluded.stream_pos",
                params![
                    room_id,
                    user_id,
                    receipt_type,
                    thread_id,
                    event_id,
                    now_ms(),
                    position
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Receipts in a room that changed in `(after, upto]`.
    pub async fn receipts(&self, room_id: String, after: i64, upto: i64) -> Result<Vec<Receipt>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts
                 WHERE room_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3",
            )?;
            let rows = statement
                .query_map(params![room_id, after, upto], |row| {
                    Ok(Receipt {
                        user_id: row.get(0)?,
                        receipt_type: row.get(1)?,
                        thread_id: row.get(2)?,
                        event_id: row.get(3)?,
                        ts: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newer_receipt_replaces_the_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let set = |event: &str| {
            store.set_receipt(
                "!r:x".into(),
                "@a:x".into(),
                "m.read".into(),
                String::new(),
                event.into(),
            )
        };
        set("$1").await.unwrap();
        let middle = *store.stream_position().borrow();
        set("$2").await.unwrap();
        let end = *store.stream_position().borrow();
        let all = store.receipts("!r:x".into(), 0, end).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].event_id, "$2");
        assert_eq!(
            store
                .receipts("!r:x".into(), middle, end)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .receipts("!r:x".into(), end, end)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
