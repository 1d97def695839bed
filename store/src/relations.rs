//! The relations index: which timeline event relates to which (`m.relates_to`: threads, edits,
//! references, reactions), kept as events take their place in a room's timeline and dropped when
//! they are redacted; and the queries the relations and threads APIs page with and the
//! aggregations bundled into served events are read from.

use rusqlite::{Connection, params};

use crate::Store;
use crate::error::Result;
use crate::events::StoredPdu;

/// How deep `recurse` follows relations of relations (the spec asks for at least 3).
pub const MAX_RELATION_DEPTH: u32 = 3;

/// Which events relating to an event a page holds.
#[derive(Debug, Clone, Default)]
pub struct RelationFilter {
    pub rel_type: Option<String>,
    pub event_type: Option<String>,
    /// 1 for direct relations only, up to [`MAX_RELATION_DEPTH`] with relations of relations.
    pub depth: u32,
}

/// A page of a stream-ordered list: backwards from `from` (at or before it, newest first) or
/// forwards (after it, oldest first), stopping at `to` (exclusive backwards, inclusive
/// forwards), as `/messages` tokens read.
#[derive(Debug, Clone, Copy)]
pub struct StreamPage {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub backwards: bool,
    pub limit: u32,
}

impl StreamPage {
    /// The stream positions the page may hold, as an inclusive range.
    fn bounds(&self) -> (i64, i64) {
        if self.backwards {
            (
                self.to.map_or(i64::MIN, |to| to.saturating_add(1)),
                self.from.unwrap_or(i64::MAX),
            )
        } else {
            (
                self.from.map_or(i64::MIN, |from| from.saturating_add(1)),
                self.to.unwrap_or(i64::MAX),
            )
        }
    }
}

/// A thread root in a page of a room's threads, with the position of its latest reply.
#[derive(Debug, Clone)]
pub struct ThreadRoot {
    pub root: StoredPdu,
    pub latest_pos: i64,
}

/// A thread as bundled into its root: how many replies, the latest, and whether the asking
/// user replied.
#[derive(Debug, Clone)]
pub struct ThreadSummary {
    pub count: i64,
    pub latest: StoredPdu,
    pub user_replied: bool,
}

/// The aggregations of some events' relations, keyed by the related event's id.
#[derive(Debug, Clone, Default)]
pub struct Aggregations {
    pub threads: Vec<(String, ThreadSummary)>,
    /// The edit that counts for each event: its sender's most recent one.
    pub replacements: Vec<(String, StoredPdu)>,
    /// Events referencing each event, oldest first.
    pub references: Vec<(String, String)>,
}

/// The relation fields, read from the stored PDU; a guard on the raw text first, so most
/// events (which relate to nothing) are never parsed.
const RELATION_OF_PDU: &str = "
    SELECT event_id, room_id,
           json_extract(pdu, '$.content.\"m.relates_to\".event_id'),
           json_extract(pdu, '$.content.\"m.relates_to\".rel_type'),
           event_type, sender, stream_pos
    FROM events
    WHERE event_id = ?1 AND stream_pos IS NOT NULL AND rejection_reason IS NULL
      AND instr(pdu, '\"m.relates_to\"') > 0 AND json_valid(pdu)
      AND json_type(pdu, '$.content.\"m.relates_to\".event_id') = 'text'
      AND json_type(pdu, '$.content.\"m.relates_to\".rel_type') = 'text'
      AND length(json_extract(pdu, '$.content.\"m.relates_to\".event_id')) <= 255
      AND length(json_extract(pdu, '$.content.\"m.relates_to\".rel_type')) <= 255";

/// Indexes a stored event's relation, if it has one, now that it is in the timeline (accepted,
/// with a stream position). Every path that gives an event a stream position calls this.
pub(crate) fn index_relation(conn: &Connection, event_id: &str) -> Result<()> {
    let sql = format!(
        "INSERT OR REPLACE INTO relations
             (event_id, room_id, relates_to, rel_type, event_type, sender, stream_pos)
         {RELATION_OF_PDU}"
    );
    conn.prepare_cached(&sql)?.execute([event_id])?;
    Ok(())
}

/// Drops an event's relation (it was redacted: the content holding it is gone).
pub(crate) fn unindex_relation(conn: &Connection, event_id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM relations WHERE event_id = ?1")?
        .execute([event_id])?;
    Ok(())
}

/// A list of ids as one SQL parameter, read back with `json_each`: one query for a whole page.
fn id_list(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// Events of `room_id` relating to `event_id` (with `filter.depth` > 1, also to those, and
    /// so on), at stream positions from `visible_from` on, in the page's order.
    pub async fn relating_events(
        &self,
        room_id: String,
        event_id: String,
        filter: RelationFilter,
        page: StreamPage,
        visible_from: i64,
    ) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let (low, high) = page.bounds();
            let sql = format!(
                "WITH RECURSIVE tree (event_id, depth) AS (
                     SELECT event_id, 1 FROM relations WHERE relates_to = ?2 AND room_id = ?1
                     UNION
                     SELECT r.event_id, t.depth + 1 FROM relations r
                     JOIN tree t ON r.relates_to = t.event_id
                     WHERE r.room_id = ?1 AND t.depth < ?3)
                 SELECT {} FROM relations r JOIN events e ON e.event_id = r.event_id
                 WHERE r.event_id IN (SELECT event_id FROM tree)
                   AND (?4 IS NULL OR r.rel_type = ?4) AND (?5 IS NULL OR r.event_type = ?5)
                   AND r.stream_pos >= max(?6, ?7) AND r.stream_pos <= ?8
                 ORDER BY r.stream_pos {} LIMIT ?9",
                StoredPdu::COLUMNS_E,
                if page.backwards { "DESC" } else { "ASC" }
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let pdus = statement
                .query_map(
                    params![
                        room_id,
                        event_id,
                        filter.depth.clamp(1, MAX_RELATION_DEPTH),
                        filter.rel_type,
                        filter.event_type,
                        visible_from,
                        low,
                        high,
                        page.limit
                    ],
                    StoredPdu::from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(pdus)
        })
        .await
    }

    /// The thread roots of a room, the most recently active first: those whose latest reply
    /// is at or before `before`, counting only what is at `visible_from` or later; with
    /// `participated_by`, only threads that user started or replied to.
    pub async fn thread_roots(
        &self,
        room_id: String,
        participated_by: Option<String>,
        before: Option<i64>,
        limit: u32,
        visible_from: i64,
    ) -> Result<Vec<ThreadRoot>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {}, t.latest FROM (
                     SELECT relates_to AS root, max(stream_pos) AS latest,
                            coalesce(sum(sender = ?2), 0) > 0 AS replied
                     FROM relations
                     WHERE room_id = ?1 AND rel_type = 'm.thread' AND stream_pos >= ?3
                     GROUP BY relates_to) t
                 JOIN events e ON e.event_id = t.root
                 WHERE e.room_id = ?1 AND e.rejection_reason IS NULL AND e.stream_pos >= ?3
                   AND t.latest <= ?4 AND (?2 IS NULL OR t.replied OR e.sender = ?2)
                 ORDER BY t.latest DESC LIMIT ?5",
                StoredPdu::COLUMNS_E
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let roots = statement
                .query_map(
                    params![
                        room_id,
                        participated_by,
                        visible_from,
                        before.unwrap_or(i64::MAX),
                        limit
                    ],
                    |row| {
                        Ok(ThreadRoot {
                            root: StoredPdu::from_row(row)?,
                            latest_pos: row.get(6)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(roots)
        })
        .await
    }

    /// What clients get bundled into `unsigned["m.relations"]` of `event_ids` (events of
    /// `room_id`) as `user_id` sees them, counting relations at `visible_from` or later: thread
    /// summaries, edits (also of each thread's latest reply) and references. A few set queries
    /// for the whole page, in one read.
    pub async fn aggregations(
        &self,
        room_id: String,
        event_ids: Vec<String>,
        user_id: String,
        visible_from: i64,
    ) -> Result<Aggregations> {
        self.read(move |conn| {
            let ids = id_list(&event_ids);
            let sql = format!(
                "SELECT t.root, t.count, t.replied, {} FROM (
                     SELECT relates_to AS root, count(*) AS count, max(stream_pos) AS latest,
                            coalesce(sum(sender = ?3), 0) > 0 AS replied
                     FROM relations
                     WHERE relates_to IN (SELECT value FROM json_each(?2)) AND room_id = ?1
                       AND rel_type = 'm.thread' AND stream_pos >= ?4
                     GROUP BY relates_to) t
                 JOIN events e ON e.stream_pos = t.latest",
                StoredPdu::COLUMNS_E
            );
            let threads = conn
                .prepare_cached(&sql)?
                .query_map(params![room_id, ids, user_id, visible_from], |row| {
                    let root: String = row.get(0)?;
                    let count: i64 = row.get(1)?;
                    let user_replied: bool = row.get(2)?;
                    let latest = StoredPdu::from_row_at(row, 3)?;
                    Ok((
                        root,
                        ThreadSummary {
                            count,
                            latest,
                            user_replied,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;

            // An edit counts only from the original's sender, of the same type, of a
            // non-state event that is not redacted; the most recent by origin_server_ts, then
            // event id, wins (as the spec orders them).
            let mut edited = event_ids;
            edited.extend(threads.iter().map(|(_, t)| t.latest.event_id.clone()));
            let sql = format!(
                "SELECT r.relates_to, {} FROM relations r
                 JOIN events o ON o.event_id = r.relates_to
                 JOIN events e ON e.event_id = r.event_id
                 WHERE r.relates_to IN (SELECT value FROM json_each(?2)) AND r.room_id = ?1
                   AND r.rel_type = 'm.replace' AND r.stream_pos >= ?3
                   AND r.sender = o.sender AND r.event_type = o.event_type
                   AND o.state_key IS NULL AND e.state_key IS NULL
                   AND json_type(o.pdu, '$.unsigned.redacted_because') IS NULL
                 ORDER BY r.relates_to, e.origin_server_ts DESC, e.event_id DESC",
                StoredPdu::COLUMNS_E
            );
            let mut replacements: Vec<(String, StoredPdu)> = Vec::new();
            let rows = conn
                .prepare_cached(&sql)?
                .query_map(params![room_id, id_list(&edited), visible_from], |row| {
                    Ok((row.get::<_, String>(0)?, StoredPdu::from_row_at(row, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (original, edit) in rows {
                if replacements
                    .last()
                    .is_none_or(|(last, _)| *last != original)
                {
                    replacements.push((original, edit));
                }
            }

            let references = conn
                .prepare_cached(
                    "SELECT relates_to, event_id FROM relations
                     WHERE relates_to IN (SELECT value FROM json_each(?2)) AND room_id = ?1
                       AND rel_type = 'm.reference' AND stream_pos >= ?3
                     ORDER BY stream_pos",
                )?
                .query_map(params![room_id, ids, visible_from], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Aggregations {
                threads,
                replacements,
                references,
            })
        })
        .await
    }
}

#[cfg(test)]
mod relations_tests {
    use super::*;
    use crate::events::NewPdu;

    const ROOM: &str = "!room:example";

    /// A message relating to `target` with `rel_type`.
    fn relating(id: &str, target: &str, rel_type: &str) -> NewPdu {
        NewPdu {
            event_id: id.into(),
            room_id: ROOM.into(),
            depth: 1,
            sender: "@alice:example".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 1,
            json: format!(
                r#"{{"type":"m.room.message","content":{{"body":"x",
                    "m.relates_to":{{"rel_type":"{rel_type}","event_id":"{target}"}}}}}}"#
            ),
            prev_events: vec![],
            auth_events: vec![],
            rejection_reason: None,
            outlier: false,
        }
    }

    async fn related(store: &Store, target: &str) -> Vec<String> {
        let page = StreamPage {
            from: None,
            to: None,
            backwards: false,
            limit: 100,
        };
        let filter = RelationFilter {
            depth: 1,
            ..Default::default()
        };
        store
            .relating_events(ROOM.into(), target.into(), filter, page, i64::MIN)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.event_id)
            .collect()
    }

    #[tokio::test]
    async fn only_timeline_events_are_indexed_and_redaction_unindexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut rejected = relating("$rejected", "$root", "m.thread");
        rejected.rejection_reason = Some("not allowed".into());
        let mut outlier = relating("$outlier", "$root", "m.thread");
        outlier.outlier = true;
        let mut unrelated = relating("$plain", "$root", "m.thread");
        unrelated.json = r#"{"content":{"body":"m.relates_to"}}"#.into();
        let mut hostile = relating("$hostile", "$root", "m.thread");
        hostile.json =
            r#"{"content":{"m.relates_to":{"rel_type":"m.thread","event_id":7}}}"#.into();
        store
            .append_pdus(vec![
                relating("$reply", "$root", "m.thread"),
                rejected,
                outlier.clone(),
                unrelated,
                hostile,
            ])
            .await
            .unwrap();
        assert_eq!(related(&store, "$root").await, ["$reply"]);

        // The outlier takes its place in the timeline: indexed then.
        outlier.outlier = false;
        store.append_pdus(vec![outlier]).await.unwrap();
        assert_eq!(related(&store, "$root").await, ["$reply", "$outlier"]);

        // History fetched from another server is indexed too.
        store
            .append_backfilled(vec![relating("$old", "$root", "m.thread")])
            .await
            .unwrap();
        assert_eq!(
            related(&store, "$root").await,
            ["$old", "$reply", "$outlier"]
        );

        store
            .replace_pdu_json("$reply".into(), r#"{"content":{}}"#.into())
            .await
            .unwrap();
        assert_eq!(related(&store, "$root").await, ["$old", "$outlier"]);
    }

    #[tokio::test]
    async fn relations_stored_before_the_index_are_indexed_by_its_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::DATABASE_FILE);
        {
            let mut conn = Connection::open(&path).unwrap();
            crate::migrations::migrate_to(&mut conn, &path, 14).unwrap();
            let reply = relating("$reply", "$root", "m.thread");
            conn.execute(
                "INSERT INTO events (event_id, room_id, stream_pos, depth, sender, event_type,
                                     origin_server_ts, pdu)
                 VALUES (?1, ?2, 1, 1, ?3, ?4, 1, ?5)",
                params![
                    reply.event_id,
                    ROOM,
                    reply.sender,
                    reply.event_type,
                    reply.json
                ],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(related(&store, "$root").await, ["$reply"]);
    }
}
