//! Account data: per-user (global, room_id '') and per-room JSON a client keeps on its server,
//! each change at a stream position so `/sync` can send it.

use rusqlite::{OptionalExtension, params};

use crate::error::Result;
use crate::{Store, next_stream_pos};

/// One account data entry: (room id or "" for global, event type, content JSON).
pub type AccountDataEntry = (String, String, String);

impl Store {
    pub async fn set_account_data(
        &self,
        localpart: String,
        room_id: Option<String>,
        event_type: String,
        content: String,
    ) -> Result<()> {
        self.update_account_data(localpart, room_id, event_type, move |_| (Some(content), ()))
            .await
    }

    /// Reads an entry, lets `change` decide its new content (`None`: leave it as it is) and
    /// writes that, in one write: two changes at once cannot lose one. Returns what `change`
    /// returned beside the content. Queued when called, as [`Store::write`] is.
    pub fn update_account_data<T, F>(
        &self,
        localpart: String,
        room_id: Option<String>,
        event_type: String,
        change: F,
    ) -> impl Future<Output = Result<T>> + use<T, F>
    where
        F: FnOnce(Option<String>) -> (Option<String>, T) + Send + 'static,
        T: Send + 'static,
    {
        self.write(move |conn| {
            let room_id = room_id.unwrap_or_default();
            let current: Option<String> = conn
                .query_row(
                    "SELECT content FROM account_data
                     WHERE localpart = ?1 AND room_id = ?2 AND event_type = ?3",
                    params![localpart, room_id, event_type],
                    |row| row.get(0),
                )
                .optional()?;
            let (content, answer) = change(current);
            if let Some(content) = content {
                let position = next_stream_pos(conn)?;
                conn.execute(
                    "INSERT INTO account_data (localpart, room_id, event_type, content, stream_pos)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (localpart, room_id, event_type) DO UPDATE
                     SET content = excluded.content, stream_pos = excluded.stream_pos",
                    params![localpart, room_id, event_type, content, position],
                )?;
            }
            Ok(answer)
        })
    }

    pub async fn account_data(
        &self,
        localpart: String,
        room_id: Option<String>,
        event_type: String,
    ) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT content FROM account_data
                     WHERE localpart = ?1 AND room_id = ?2 AND event_type = ?3",
                    params![localpart, room_id.unwrap_or_default(), event_type],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Entries changed in `(after, upto]`.
    pub async fn account_data_changes(
        &self,
        localpart: String,
        after: i64,
        upto: i64,
    ) -> Result<Vec<AccountDataEntry>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT room_id, event_type, content FROM account_data
                 WHERE localpart = ?1 AND stream_pos > ?2 AND stream_pos <= ?3
                 ORDER BY stream_pos",
            )?;
            let rows = statement
                .query_map(params![localpart, after, upto], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
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
    async fn account_data_replaces_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("alice".into(), None).await.unwrap();
        let start = *store.stream_position().borrow();
        store
            .set_account_data("alice".into(), None, "m.direct".into(), "{}".into())
            .await
            .unwrap();
        let middle = *store.stream_position().borrow();
        store
            .set_account_data("alice".into(), None, "m.direct".into(), r#"{"a":1}"#.into())
            .await
            .unwrap();
        store
            .set_account_data(
                "alice".into(),
                Some("!r:x".into()),
                "m.tag".into(),
                "{}".into(),
            )
            .await
            .unwrap();
        let end = *store.stream_position().borrow();
        assert_eq!(
            store
                .account_data("alice".into(), None, "m.direct".into())
                .await
                .unwrap()
                .as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(
            store
                .account_data_changes("alice".into(), start, end)
                .await
                .unwrap()
                .len(),
            2
        );
        let later = store
            .account_data_changes("alice".into(), middle, end)
            .await
            .unwrap();
        assert_eq!(
            later.len(),
            2,
            "the replaced entry moved to its new position"
        );
        assert!(
            store
                .account_data_changes("alice".into(), end, end)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn an_update_reads_and_writes_in_one_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store.create_account("alice".into(), None).await.unwrap();
        let append = |n: u32| {
            store.update_account_data("alice".into(), None, "list".into(), move |old| {
                let list = match old {
                    Some(old) => format!("{old},{n}"),
                    None => n.to_string(),
                };
                (Some(list), n)
            })
        };
        // Queued together: each sees the one before it, none is lost.
        let updates: Vec<_> = (0..20).map(append).collect();
        for update in updates {
            update.await.unwrap();
        }
        let stored = store
            .account_data("alice".into(), None, "list".into())
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<String> = (0..20).map(|n| n.to_string()).collect();
        assert_eq!(stored, expected.join(","));
        let before = *store.stream_position().borrow();
        let unchanged = store
            .update_account_data("alice".into(), None, "list".into(), |_| (None, "kept"))
            .await
            .unwrap();
        assert_eq!(unchanged, "kept");
        assert_eq!(*store.stream_position().borrow(), before, "nothing written");
    }
}
