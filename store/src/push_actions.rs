//! Notifications in the store: the events each local user's push rules said notify them, how
//! far that evaluation has come (it runs once per event, in stream order), and where each user
//! has read up to (read receipts, and their own last event), for unread counts and
//! `/notifications`.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::events::StoredPdu;
use crate::{Store, now_ms};

/// The thread id of events in no thread, as threaded read receipts name it.
pub const MAIN_THREAD: &str = "main";

/// What a user's push rules said of one event that notified them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAction {
    pub user_id: String,
    pub stream_pos: i64,
    pub room_id: String,
    pub event_id: String,
    /// [`MAIN_THREAD`], or the event id of the thread's root.
    pub thread_id: String,
    pub highlight: bool,
    /// JSON array of the matching rule's actions.
    pub actions: String,
}

/// A local user sent an event: what came before it in its thread counts as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMark {
    pub user_id: String,
    pub room_id: String,
    pub thread_id: String,
    pub stream_pos: i64,
}

/// Timeline events to evaluate push rules for, with what the rules need to know of them.
#[derive(Debug, Clone)]
pub struct EvaluationBatch {
    /// Oldest first.
    pub events: Vec<EventToEvaluate>,
    /// The rooms the events are in, as they are now (those with local users).
    pub rooms: HashMap<String, RoomNow>,
    /// The stream position up to which this batch covers everything.
    pub upto: i64,
}

#[derive(Debug, Clone)]
pub struct EventToEvaluate {
    pub pdu: StoredPdu,
    pub sender: String,
    /// The room's local users (those with any membership in it), each with their membership
    /// just before this event.
    pub local_members: Vec<LocalMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMember {
    pub user_id: String,
    /// `None` when the user had no membership yet.
    pub membership: Option<String>,
    pub displayname: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RoomNow {
    pub room_version: Option<String>,
    /// The sender and content JSON of the room's `m.room.create`.
    pub create: Option<(String, String)>,
    /// Content JSON of the room's `m.room.power_levels`.
    pub power_levels: Option<String>,
    pub joined_members: u64,
}

/// A notification as `/notifications` lists it.
#[derive(Debug, Clone)]
pub struct StoredNotification {
    pub action: PushAction,
    /// When the event was evaluated (ms since the epoch).
    pub ts: i64,
    /// Whether the user's read receipt (or own later event) has passed it.
    pub read: bool,
    pub pdu: StoredPdu,
}

/// Unread notifications and highlights in one room, counted up to a bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
}

/// Where a user has read up to in one room: unthreaded, and per thread.
#[derive(Debug, Default)]
struct ReadPoints {
    unthreaded: i64,
    threads: HashMap<String, i64>,
}

impl ReadPoints {
    fn has_read(&self, thread_id: &str, stream_pos: i64) -> bool {
        stream_pos <= self.unthreaded
            || self
                .threads
                .get(thread_id)
                .is_some_and(|read| stream_pos <= *read)
    }
}

/// The user's `m.read` and `m.read.private` receipts in a room (whichever is further, per
/// thread), and their own last events.
fn read_points(conn: &Connection, user_id: &str, room_id: &str) -> Result<ReadPoints> {
    let mut statement = conn.prepare_cached(
        "SELECT r.thread_id, max(e.stream_pos) FROM receipts r
         JOIN events e ON e.event_id = r.event_id
         WHERE r.room_id = ?1 AND r.user_id = ?2 AND r.receipt_type IN ('m.read', 'm.read.private')
           AND e.stream_pos IS NOT NULL
         GROUP BY r.thread_id
         UNION ALL
         SELECT thread_id, stream_pos FROM push_sent_marks WHERE room_id = ?1 AND user_id = ?2",
    )?;
    let mut points = ReadPoints::default();
    let rows = statement.query_map(params![room_id, user_id], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (thread_id, stream_pos) = row?;
        if thread_id.is_empty() {
            points.unthreaded = points.unthreaded.max(stream_pos);
        } else {
            let read = points.threads.entry(thread_id).or_insert(stream_pos);
            *read = (*read).max(stream_pos);
        }
    }
    Ok(points)
}

/// A local user's membership (and display name) just before `event_id`: from the state kept
/// with the event, or, for an event stored without it, the current one.
fn member_before(
    conn: &Connection,
    event_id: &str,
    room_id: &str,
    user_id: &str,
) -> Result<(Option<String>, Option<String>)> {
    // A row when the event has its state kept; the member columns are NULL when the user had
    // no membership then.
    let kept: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached(
            "SELECT json_extract(m.pdu, '$.content.membership'),
                    json_extract(m.pdu, '$.content.displayname')
             FROM event_state s
             LEFT JOIN state_snapshot_entries e ON e.snapshot_id = s.snapshot_id
                 AND e.event_type = 'm.room.member' AND e.state_key = ?2
             LEFT JOIN events m ON m.event_id = e.event_id
             WHERE s.event_id = ?1",
        )?
        .query_row(params![event_id, user_id], member_row)
        .optional()?;
    if let Some(member) = kept {
        return Ok(member);
    }
    Ok(conn
        .prepare_cached(
            "SELECT json_extract(e.pdu, '$.content.membership'),
                    json_extract(e.pdu, '$.content.displayname')
             FROM memberships m JOIN events e ON e.event_id = m.event_id
             WHERE m.room_id = ?1 AND m.user_id = ?2",
        )?
        .query_row(params![room_id, user_id], member_row)
        .optional()?
        .unwrap_or((None, None)))
}

fn member_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Option<String>, Option<String>)> {
    // What is not a string (a malformed event) counts as nothing.
    Ok((row.get::<_, String>(0).ok(), row.get::<_, String>(1).ok()))
}

fn room_now(conn: &Connection, room_id: &str) -> Result<RoomNow> {
    let room_version = conn
        .prepare_cached("SELECT room_version FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |row| row.get(0))
        .optional()?;
    let mut state_event = conn.prepare_cached(
        "SELECT json_extract(e.pdu, '$.sender'), json_extract(e.pdu, '$.content')
         FROM current_state s JOIN events e ON e.event_id = s.event_id
         WHERE s.room_id = ?1 AND s.event_type = ?2 AND s.state_key = ''",
    )?;
    let create = state_event
        .query_row(params![room_id, "m.room.create"], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let power_levels = state_event
        .query_row(params![room_id, "m.room.power_levels"], |row| row.get(1))
        .optional()?;
    let joined_members: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM memberships WHERE room_id = ?1 AND membership = 'join'",
        )?
        .query_row([room_id], |row| row.get(0))?;
    Ok(RoomNow {
        room_version,
        create,
        power_levels,
        joined_members: joined_members.max(0) as u64,
    })
}

impl Store {
    /// How far push rules have been evaluated: every timeline event up to this position.
    pub async fn push_actions_mark(&self) -> Result<i64> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT value FROM counters WHERE name = 'push_actions'",
                    [],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0))
        })
        .await
    }

    /// The next (at most `limit`) accepted timeline events in `(after, upto]` to evaluate push
    /// rules for, with the local users of their rooms (`local_suffix` is `:` and this server's
    /// name) and their memberships just before each event.
    pub async fn push_evaluation_batch(
        &self,
        after: i64,
        upto: i64,
        limit: u32,
        local_suffix: String,
    ) -> Result<EvaluationBatch> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {}, sender FROM events
                 WHERE stream_pos > ?1 AND stream_pos <= ?2 AND rejection_reason IS NULL
                 ORDER BY stream_pos LIMIT ?3",
                StoredPdu::COLUMNS
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let found = statement
                .query_map(params![after, upto, limit], |row| {
                    Ok((StoredPdu::from_row(row)?, row.get::<_, String>(6)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let batch_upto = match found.last() {
                Some((pdu, _)) if found.len() >= limit as usize => pdu.stream_pos.unwrap_or(upto),
                _ => upto,
            };
            let mut local_users: HashMap<String, Vec<String>> = HashMap::new();
            let mut rooms = HashMap::new();
            let mut events = Vec::with_capacity(found.len());
            for (pdu, sender) in found {
                if !local_users.contains_key(&pdu.room_id) {
                    let mut statement = conn.prepare_cached(
                        "SELECT user_id FROM memberships
                         WHERE room_id = ?1 AND substr(user_id, -?2) = ?3",
                    )?;
                    let users = statement
                        .query_map(
                            params![pdu.room_id, local_suffix.len() as i64, local_suffix],
                            |row| row.get(0),
                        )?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    // Rooms without local users (a backup server's) need nothing more.
                    if !users.is_empty() {
                        rooms.insert(pdu.room_id.clone(), room_now(conn, &pdu.room_id)?);
                    }
                    local_users.insert(pdu.room_id.clone(), users);
                }
                let mut local_members = Vec::new();
                for user_id in local_users.get(&pdu.room_id).into_iter().flatten() {
                    let (membership, displayname) =
                        member_before(conn, &pdu.event_id, &pdu.room_id, user_id)?;
                    local_members.push(LocalMember {
                        user_id: user_id.clone(),
                        membership,
                        displayname,
                    });
                }
                events.push(EventToEvaluate {
                    pdu,
                    sender,
                    local_members,
                });
            }
            Ok(EvaluationBatch {
                events,
                rooms,
                upto: batch_upto,
            })
        })
        .await
    }

    /// Keeps what an evaluation batch found and moves the mark to `upto`, in one transaction;
    /// with `prune_before`, also drops notifications evaluated before then.
    pub async fn record_push_actions(
        &self,
        actions: Vec<PushAction>,
        sent: Vec<SentMark>,
        upto: i64,
        prune_before: Option<i64>,
    ) -> Result<()> {
        self.write(move |conn| {
            let now = now_ms();
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO push_actions
                     (user_id, stream_pos, room_id, event_id, thread_id, highlight, actions, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for a in &actions {
                insert.execute(params![
                    a.user_id,
                    a.stream_pos,
                    a.room_id,
                    a.event_id,
                    a.thread_id,
                    a.highlight,
                    a.actions,
                    now
                ])?;
            }
            let mut mark = conn.prepare_cached(
                "INSERT INTO push_sent_marks (user_id, room_id, thread_id, stream_pos)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, room_id, thread_id) DO UPDATE
                 SET stream_pos = max(stream_pos, excluded.stream_pos)",
            )?;
            for s in &sent {
                mark.execute(params![s.user_id, s.room_id, s.thread_id, s.stream_pos])?;
            }
            conn.execute(
                "UPDATE counters SET value = max(value, ?1) WHERE name = 'push_actions'",
                [upto],
            )?;
            if let Some(before) = prune_before {
                conn.execute("DELETE FROM push_actions WHERE ts < ?1", [before])?;
            }
            Ok(())
        })
        .await
    }

    /// The user's unread notifications in a room as of `upto`: those after their read point
    /// in each thread. At most the newest `limit` are looked at, so more shows as `limit`.
    pub async fn unread_counts(
        &self,
        user_id: String,
        room_id: String,
        upto: i64,
        limit: u32,
    ) -> Result<UnreadCounts> {
        self.read(move |conn| {
            let points = read_points(conn, &user_id, &room_id)?;
            let mut statement = conn.prepare_cached(
                "SELECT thread_id, stream_pos, highlight FROM push_actions
                 WHERE user_id = ?1 AND room_id = ?2 AND stream_pos > ?3 AND stream_pos <= ?4
                 ORDER BY stream_pos DESC LIMIT ?5",
            )?;
            let rows = statement.query_map(
                params![user_id, room_id, points.unthreaded, upto, limit],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                },
            )?;
            let mut counts = UnreadCounts::default();
            for row in rows {
                let (thread_id, stream_pos, highlight) = row?;
                if !points.has_read(&thread_id, stream_pos) {
                    counts.notifications += 1;
                    counts.highlights += u64::from(highlight);
                }
            }
            Ok(counts)
        })
        .await
    }

    /// The user's notifications before stream position `before` (all when `None`), newest
    /// first, at most `limit`; only highlights with `only_highlight`.
    pub async fn notifications(
        &self,
        user_id: String,
        before: Option<i64>,
        limit: u32,
        only_highlight: bool,
    ) -> Result<Vec<StoredNotification>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT a.stream_pos, a.room_id, a.event_id, a.thread_id, a.highlight, a.actions,
                        a.ts, {}
                 FROM push_actions a JOIN events e ON e.event_id = a.event_id
                 WHERE a.user_id = ?1 AND a.stream_pos < ?2 AND (NOT ?3 OR a.highlight)
                 ORDER BY a.stream_pos DESC LIMIT ?4",
                StoredPdu::COLUMNS_E
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement
                .query_map(
                    params![user_id, before.unwrap_or(i64::MAX), only_highlight, limit],
                    |row| {
                        let action = PushAction {
                            user_id: user_id.clone(),
                            stream_pos: row.get(0)?,
                            room_id: row.get(1)?,
                            event_id: row.get(2)?,
                            thread_id: row.get(3)?,
                            highlight: row.get(4)?,
                            actions: row.get(5)?,
                        };
                        let ts: i64 = row.get(6)?;
                        let pdu = StoredPdu {
                            event_id: row.get(7)?,
                            room_id: row.get(8)?,
                            stream_pos: row.get(9)?,
                            depth: row.get(10)?,
                            json: row.get(11)?,
                            rejection_reason: row.get(12)?,
                        };
                        Ok((action, ts, pdu))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut points: HashMap<String, ReadPoints> = HashMap::new();
            let mut notifications = Vec::with_capacity(rows.len());
            for (action, ts, pdu) in rows {
                if !points.contains_key(&action.room_id) {
                    let found = read_points(conn, &user_id, &action.room_id)?;
                    points.insert(action.room_id.clone(), found);
                }
                let read = points
                    .get(&action.room_id)
                    .is_some_and(|p| p.has_read(&action.thread_id, action.stream_pos));
                notifications.push(StoredNotification {
                    action,
                    ts,
                    read,
                    pdu,
                });
            }
            Ok(notifications)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(user: &str, pos: i64, thread: &str, highlight: bool) -> PushAction {
        PushAction {
            user_id: user.into(),
            stream_pos: pos,
            room_id: "!r:x".into(),
            event_id: format!("${pos}"),
            thread_id: thread.into(),
            highlight,
            actions: r#"["notify"]"#.into(),
        }
    }

    async fn event_at(store: &Store, pos: i64) {
        store
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO events (event_id, room_id, stream_pos, depth, sender, event_type,
                         origin_server_ts, pdu)
                     VALUES (?1, '!r:x', ?2, ?2, '@b:x', 'm.room.message', 0, '{}')",
                    params![format!("${pos}"), pos],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn counts_follow_receipts_threads_and_own_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for pos in 1..=6 {
            event_at(&store, pos).await;
        }
        let actions = vec![
            action("@a:x", 1, MAIN_THREAD, false),
            action("@a:x", 2, MAIN_THREAD, true),
            action("@a:x", 3, "$1", false),
            action("@a:x", 4, MAIN_THREAD, false),
            action("@c:x", 4, MAIN_THREAD, false),
        ];
        store
            .record_push_actions(actions, vec![], 6, None)
            .await
            .unwrap();
        assert_eq!(store.push_actions_mark().await.unwrap(), 6);
        let counts = || store.unread_counts("@a:x".into(), "!r:x".into(), 6, 1000);
        assert_eq!(
            counts().await.unwrap(),
            UnreadCounts {
                notifications: 4,
                highlights: 1
            }
        );
        // A bound on the work: at most `limit` are counted.
        assert_eq!(
            store
                .unread_counts("@a:x".into(), "!r:x".into(), 6, 2)
                .await
                .unwrap()
                .notifications,
            2
        );
        // A main-timeline receipt at 2 leaves the thread's event unread.
        let receipt = |kind: &str, thread: &str, event: &str| {
            store.set_receipt(
                "!r:x".into(),
                "@a:x".into(),
                kind.into(),
                thread.into(),
                event.into(),
            )
        };
        receipt("m.read", MAIN_THREAD, "$2").await.unwrap();
        assert_eq!(
            counts().await.unwrap(),
            UnreadCounts {
                notifications: 2,
                highlights: 0
            }
        );
        // The private receipt is further: it counts.
        receipt("m.read.private", "", "$3").await.unwrap();
        assert_eq!(counts().await.unwrap().notifications, 1);
        // Sending an event marks what came before as read.
        store
            .record_push_actions(
                vec![],
                vec![SentMark {
                    user_id: "@a:x".into(),
                    room_id: "!r:x".into(),
                    thread_id: MAIN_THREAD.into(),
                    stream_pos: 5,
                }],
                6,
                None,
            )
            .await
            .unwrap();
        assert_eq!(counts().await.unwrap().notifications, 0);

        let listed = store
            .notifications("@a:x".into(), None, 10, false)
            .await
            .unwrap();
        let positions: Vec<i64> = listed.iter().map(|n| n.action.stream_pos).collect();
        assert_eq!(positions, [4, 3, 2, 1], "newest first");
        assert!(listed.iter().all(|n| n.read));
        let page = store
            .notifications("@a:x".into(), Some(3), 10, true)
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].action.stream_pos, 2);

        // Old notifications go.
        store
            .record_push_actions(vec![], vec![], 6, Some(now_ms() + 1))
            .await
            .unwrap();
        assert!(
            store
                .notifications("@a:x".into(), None, 10, false)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
