//! PDUs: stored with their prev/auth edges, a stream position for the ones in a room's timeline,
//! and the room's forward extremities kept up to date as they arrive.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Result;
use crate::{Store, next_stream_pos};

/// A PDU the node has built or received, with what the node decided about it.
#[derive(Debug, Clone)]
pub struct NewPdu {
    pub event_id: String,
    pub room_id: String,
    pub depth: i64,
    pub sender: String,
    pub event_type: String,
    pub state_key: Option<String>,
    pub origin_server_ts: i64,
    /// The whole PDU as canonical JSON.
    pub json: String,
    pub prev_events: Vec<String>,
    pub auth_events: Vec<String>,
    /// Why the auth rules rejected it; rejected PDUs are kept, never silently dropped.
    pub rejection_reason: Option<String>,
    /// Known but not part of this node's view of the timeline (e.g. fetched auth events).
    pub outlier: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPdu {
    pub event_id: String,
    pub room_id: String,
    pub stream_pos: Option<i64>,
    pub depth: i64,
    pub json: String,
    pub rejection_reason: Option<String>,
}

impl StoredPdu {
    pub(crate) const COLUMNS: &'static str =
        "event_id, room_id, stream_pos, depth, pdu, rejection_reason";
    /// The same columns from a join where `events` is aliased `e`.
    pub(crate) const COLUMNS_E: &'static str =
        "e.event_id, e.room_id, e.stream_pos, e.depth, e.pdu, e.rejection_reason";

    pub(crate) fn from_row(row: &Row<'_>) -> rusqlite::Result<StoredPdu> {
        StoredPdu::from_row_at(row, 0)
    }

    /// The PDU from [`StoredPdu::COLUMNS`] starting at column `first` of a row.
    pub(crate) fn from_row_at(row: &Row<'_>, first: usize) -> rusqlite::Result<StoredPdu> {
        Ok(StoredPdu {
            event_id: row.get(first)?,
            room_id: row.get(first + 1)?,
            stream_pos: row.get(first + 2)?,
            depth: row.get(first + 3)?,
            json: row.get(first + 4)?,
            rejection_reason: row.get(first + 5)?,
        })
    }
}

/// The state event a state event replaced in its room's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedState {
    /// The state event that replaced it.
    pub event_id: String,
    pub replaced: String,
    pub sender: String,
    /// Its content as JSON (redacted if it was redacted).
    pub content: String,
}

impl Store {
    /// Stores PDUs in order, all or none. A PDU already stored is left as it is. Returns each
    /// PDU's stream position (`None` for outliers and rejected PDUs).
    pub async fn append_pdus(&self, pdus: Vec<NewPdu>) -> Result<Vec<Option<i64>>> {
        self.write(move |conn| pdus.iter().map(|pdu| append_pdu(conn, pdu)).collect())
            .await
    }

    pub async fn pdu(&self, event_id: String) -> Result<Option<StoredPdu>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM events WHERE event_id = ?1",
                StoredPdu::COLUMNS
            );
            Ok(conn
                .query_row(&sql, [event_id], StoredPdu::from_row)
                .optional()?)
        })
        .await
    }

    /// For each of some state events, the event it replaced: the one at the same (type, state
    /// key) in the room state before it, as kept when it was accepted; for one kept without
    /// that state (history fetched from other servers), the newest accepted one before it in
    /// the stream. One query for them all.
    pub async fn replaced_states(&self, event_ids: Vec<String>) -> Result<Vec<ReplacedState>> {
        self.read(move |conn| {
            let ids = serde_json::to_string(&event_ids).unwrap_or_else(|_| "[]".into());
            let mut statement = conn.prepare_cached(
                "WITH asked AS (
                     SELECT e.event_id, e.room_id, e.event_type, e.state_key, e.stream_pos,
                            s.snapshot_id
                     FROM json_each(?1) x JOIN events e ON e.event_id = x.value
                     LEFT JOIN event_state s ON s.event_id = e.event_id
                     WHERE e.state_key IS NOT NULL)
                 SELECT a.event_id, p.event_id, p.sender, json_extract(p.pdu, '$.content')
                 FROM asked a
                 JOIN state_snapshot_entries se ON se.snapshot_id = a.snapshot_id
                   AND se.event_type = a.event_type AND se.state_key = a.state_key
                 JOIN events p ON p.event_id = se.event_id
                 UNION ALL
                 SELECT a.event_id, p.event_id, p.sender, json_extract(p.pdu, '$.content')
                 FROM asked a JOIN events p ON p.event_id = (
                     SELECT n.event_id FROM events n
                     WHERE n.room_id = a.room_id AND n.event_type = a.event_type
                       AND n.state_key = a.state_key AND n.rejection_reason IS NULL
                       AND n.stream_pos < a.stream_pos
                     ORDER BY n.stream_pos DESC LIMIT 1)
                 WHERE a.snapshot_id IS NULL",
            )?;
            let replaced = statement
                .query_map([ids], |row| {
                    Ok(ReplacedState {
                        event_id: row.get(0)?,
                        replaced: row.get(1)?,
                        sender: row.get(2)?,
                        content: row
                            .get::<_, Option<String>>(3)?
                            .unwrap_or_else(|| "{}".into()),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(replaced)
        })
        .await
    }

    /// The room's forward extremities: the prev_events for the next PDU built here.
    pub async fn forward_extremities(&self, room_id: String) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id",
            )?;
            let ids = statement
                .query_map([room_id], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }
}

/// The PDU's prev and auth edges (the DAG walks read them).
pub(crate) fn insert_edges(conn: &Connection, pdu: &NewPdu) -> Result<()> {
    let mut edge = conn.prepare_cached(
        "INSERT OR IGNORE INTO event_edges (event_id, prev_event_id) VALUES (?1, ?2)",
    )?;
    for prev in &pdu.prev_events {
        edge.execute(params![pdu.event_id, prev])?;
    }
    let mut auth = conn.prepare_cached(
        "INSERT OR IGNORE INTO event_auth (event_id, auth_event_id) VALUES (?1, ?2)",
    )?;
    for auth_event in &pdu.auth_events {
        auth.execute(params![pdu.event_id, auth_event])?;
    }
    Ok(())
}

pub(crate) fn append_pdu(conn: &Connection, pdu: &NewPdu) -> Result<Option<i64>> {
    let known: Option<(Option<i64>, bool, bool)> = conn
        .query_row(
            "SELECT stream_pos, outlier, rejection_reason IS NOT NULL FROM events
             WHERE event_id = ?1",
            [&pdu.event_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let in_timeline = !pdu.outlier && pdu.rejection_reason.is_none();
    let stream_pos = match known {
        // An event first fetched as an outlier (an auth event, a state event of a joined
        // room) that now takes its place in the timeline.
        Some((None, true, false)) if in_timeline => {
            let stream_pos = next_stream_pos(conn)?;
            conn.prepare_cached(
                "UPDATE events SET stream_pos = ?2, outlier = 0 WHERE event_id = ?1",
            )?
            .execute(params![pdu.event_id, stream_pos])?;
            Some(stream_pos)
        }
        Some((stream_pos, _, _)) => return Ok(stream_pos),
        None if in_timeline => Some(next_stream_pos(conn)?),
        None => None,
    };
    if known.is_none() {
        conn.prepare_cached(
        "INSERT INTO events (event_id, room_id, stream_pos, depth, sender, event_type, state_key,
                             origin_server_ts, pdu, rejection_reason, outlier)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        pdu.event_id,
        pdu.room_id,
        stream_pos,
        pdu.depth,
        pdu.sender,
        pdu.event_type,
        pdu.state_key,
        pdu.origin_server_ts,
        pdu.json,
            pdu.rejection_reason,
            pdu.outlier,
        ])?;
    }
    insert_edges(conn, pdu)?;
    if stream_pos.is_some() {
        crate::relations::index_relation(conn, &pdu.event_id)?;
    }
    if in_timeline {
        let mut superseded = conn.prepare_cached(
            "DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2",
        )?;
        for prev in &pdu.prev_events {
            superseded.execute(params![pdu.room_id, prev])?;
        }
        // A PDU that arrives after its children (back-filled) is not an extremity.
        conn.prepare_cached(
            "INSERT INTO forward_extremities (room_id, event_id)
             SELECT ?1, ?2 WHERE NOT EXISTS (
                 SELECT 1 FROM event_edges e JOIN events c ON c.event_id = e.event_id
                 WHERE e.prev_event_id = ?2 AND c.stream_pos IS NOT NULL)",
        )?
        .execute(params![pdu.room_id, pdu.event_id])?;
    }
    Ok(stream_pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(id: &str, prev: &[&str]) -> NewPdu {
        NewPdu {
            event_id: id.into(),
            room_id: "!room:example".into(),
            depth: prev.len() as i64 + 1,
            sender: "@alice:example".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 1,
            json: format!(r#"{{"event_id":"{id}"}}"#),
            prev_events: prev.iter().map(|p| p.to_string()).collect(),
            auth_events: vec![],
            rejection_reason: None,
            outlier: false,
        }
    }

    #[tokio::test]
    async fn timeline_positions_and_extremities() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let room = "!room:example".to_string();

        let positions = store
            .append_pdus(vec![pdu("$a", &[]), pdu("$b", &["$a"]), pdu("$c", &["$a"])])
            .await
            .unwrap();
        assert!(positions.iter().all(Option::is_some));
        assert!(positions[0] < positions[1] && positions[1] < positions[2]);
        assert_eq!(
            store.forward_extremities(room.clone()).await.unwrap(),
            vec!["$b".to_string(), "$c".to_string()]
        );

        // Storing the same PDU again changes nothing.
        let again = store.append_pdus(vec![pdu("$b", &["$a"])]).await.unwrap();
        assert_eq!(again, vec![positions[1]]);

        // A rejected PDU is kept but is neither in the timeline nor an extremity.
        let mut rejected = pdu("$evil", &["$b", "$c"]);
        rejected.rejection_reason = Some("sender not in room".into());
        assert_eq!(store.append_pdus(vec![rejected]).await.unwrap(), vec![None]);
        let kept = store.pdu("$evil".into()).await.unwrap().unwrap();
        assert_eq!(kept.rejection_reason.as_deref(), Some("sender not in room"));

        store
            .append_pdus(vec![pdu("$d", &["$b", "$c"])])
            .await
            .unwrap();
        assert_eq!(
            store.forward_extremities(room.clone()).await.unwrap(),
            vec!["$d".to_string()]
        );
        let (timeline, limited) = store.room_timeline(room, 0, i64::MAX, 10).await.unwrap();
        assert!(!limited);
        let ids: Vec<_> = timeline.iter().map(|p| p.event_id.as_str()).collect();
        assert_eq!(ids, ["$a", "$b", "$c", "$d"]);
    }
}
