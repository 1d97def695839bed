//! Walks of the room DAG for federation catch-up: auth chains (over `event_auth`), backfill and
//! missing events (backwards over `event_edges`), and what decides which of a room's events
//! another server may read (whether a user of it is joined now, and the changes of the room's
//! history visibility and of that server's users' memberships). Every walk stays inside one
//! room, so a PDU that names another room's events cannot make the node serve them; rejected
//! PDUs are walked through but never returned.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::error::Result;
use crate::events::StoredPdu;

impl Store {
    /// What decides which of the room's events `server_name` may read: `None` unless a user of
    /// that server is joined to the room now (a leave, a ban, a declined invite or an invite
    /// alone show a server nothing); otherwise every accepted change of the room's history
    /// visibility and of that server's users' memberships, in stream order. One read, whatever
    /// the page of events it is asked for.
    pub async fn server_history(
        &self,
        room_id: String,
        server_name: String,
    ) -> Result<Option<Vec<HistoryChange>>> {
        self.read(move |conn| {
            // A user id's server name is everything after its first ':' (localparts hold none).
            let joined: bool = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM memberships
                     WHERE room_id = ?1 AND membership = 'join'
                       AND substr(user_id, instr(user_id, ':') + 1) = ?2)",
                )?
                .query_row(params![room_id, server_name], |row| row.get(0))?;
            if !joined {
                return Ok(None);
            }
            // Two arms so each walks the (room, type, state key) index.
            let mut statement = conn.prepare_cached(
                "SELECT stream_pos, state_key, json_extract(pdu, '$.content.history_visibility')
                 FROM events
                 WHERE room_id = ?1 AND event_type = 'm.room.history_visibility'
                   AND state_key = '' AND rejection_reason IS NULL AND stream_pos IS NOT NULL
                 UNION ALL
                 SELECT stream_pos, state_key, json_extract(pdu, '$.content.membership')
                 FROM events
                 WHERE room_id = ?1 AND event_type = 'm.room.member'
                   AND substr(state_key, instr(state_key, ':') + 1) = ?2
                   AND rejection_reason IS NULL AND stream_pos IS NOT NULL
                 ORDER BY stream_pos",
            )?;
            let changes = statement
                .query_map(params![room_id, server_name], |row| {
                    let stream_pos = row.get(0)?;
                    let user_id: String = row.get(1)?;
                    // Content a sender shaped oddly (a number for a string) counts as unknown.
                    let value = row.get_ref(2)?.as_str().ok().map(str::to_owned);
                    Ok(if user_id.is_empty() {
                        HistoryChange::Visibility {
                            stream_pos,
                            visibility: value,
                        }
                    } else {
                        HistoryChange::Membership {
                            stream_pos,
                            user_id,
                            membership: value,
                        }
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(changes))
        })
        .await
    }

    /// Whether `user_id` is joined to (or invited to) a room where some user of `server_name`
    /// is joined or invited too, or holds an invite a user of `server_name` sent (this node
    /// knows no members of a room on another server it was only invited to): what that server
    /// may learn of the user, or ask of them, over federation. Invites count: a client shares
    /// its room keys with invited members, so it needs their one-time keys before they join.
    pub async fn shares_room_with_server(
        &self,
        user_id: String,
        server_name: String,
    ) -> Result<bool> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM memberships theirs
                 JOIN memberships other ON other.room_id = theirs.room_id
                 WHERE theirs.user_id = ?1 AND theirs.membership IN ('join', 'invite')
                   AND other.membership IN ('join', 'invite')
                   AND substr(other.user_id, instr(other.user_id, ':') + 1) = ?2)
                 OR EXISTS (SELECT 1 FROM memberships theirs
                 JOIN events invite ON invite.event_id = theirs.event_id
                 WHERE theirs.user_id = ?1 AND theirs.membership = 'invite'
                   AND substr(invite.sender, instr(invite.sender, ':') + 1) = ?2)",
                params![user_id, server_name],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// The auth chain of `event_ids`: every event reachable from them through one or more
    /// `auth_events` edges (a given event only when another one's auth names it), accepted ones
    /// of the room only, oldest (by depth) first.
    pub async fn auth_chain(
        &self,
        room_id: String,
        event_ids: Vec<String>,
    ) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| auth_chain(conn, &room_id, &event_ids))
            .await
    }

    /// `from` and every event reachable from them through `auth_events`, rejected ones
    /// included (state resolution must know them to leave them out), in the room only, in no
    /// particular order; `None` as soon as there are more than `limit`: the caller refuses the
    /// work rather than reading a hostile room's whole auth graph into memory.
    pub async fn auth_graph(
        &self,
        room_id: String,
        from: Vec<String>,
        limit: usize,
    ) -> Result<Option<Vec<StoredPdu>>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM event_auth a JOIN events e ON e.event_id = a.auth_event_id
                 WHERE a.event_id = ?1 AND e.room_id = ?2",
                StoredPdu::COLUMNS_E
            );
            let mut auth_events = conn.prepare_cached(&sql)?;
            let mut seen: HashSet<String> = HashSet::new();
            let mut graph = Vec::new();
            let mut waiting = Vec::new();
            for pdu in pdus_in_room(conn, &room_id, &from)? {
                if seen.insert(pdu.event_id.clone()) {
                    waiting.push(pdu.event_id.clone());
                    graph.push(pdu);
                }
            }
            // Each event is expanded once, so bad auth edges that form a cycle end the walk.
            while let Some(event_id) = waiting.pop() {
                if graph.len() > limit {
                    return Ok(None);
                }
                for pdu in auth_events.query_map(params![event_id, room_id], StoredPdu::from_row)? {
                    let pdu = pdu?;
                    if seen.insert(pdu.event_id.clone()) {
                        waiting.push(pdu.event_id.clone());
                        graph.push(pdu);
                    }
                }
            }
            Ok((graph.len() <= limit).then_some(graph))
        })
        .await
    }

    /// History for `backfill`: `from` and the events before them, walked back over prev_events
    /// deepest first, at most `limit` events, newest first.
    pub async fn backfill(
        &self,
        room_id: String,
        from: Vec<String>,
        limit: usize,
    ) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let start = pdus_in_room(conn, &room_id, &from)?;
            let mut pdus = walk_back(conn, &room_id, start, HashSet::new(), i64::MIN, limit)?;
            pdus.sort_by(|a, b| by_age(b, a));
            Ok(pdus)
        })
        .await
    }

    /// The events for `get_missing_events`: walked back from the prev_events of `latest`,
    /// never into `earliest` (nor past it) nor below `min_depth`, at most `limit` events, oldest
    /// first.
    pub async fn missing_events(
        &self,
        room_id: String,
        earliest: Vec<String>,
        latest: Vec<String>,
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            // The asker holds the latest events already; they are not sent back to it.
            let seen: HashSet<String> =
                earliest.into_iter().chain(latest.iter().cloned()).collect();
            let mut start = Vec::new();
            for event_id in &latest {
                start.extend(prev_events(conn, &room_id, event_id)?);
            }
            let mut pdus = walk_back(conn, &room_id, start, seen, min_depth, limit)?;
            pdus.sort_by(by_age);
            Ok(pdus)
        })
        .await
    }
}

/// A change to what a server may read of a room, at its place in the room's timeline here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryChange {
    /// The room's `history_visibility` became `visibility` (`None`: not a string).
    Visibility {
        stream_pos: i64,
        visibility: Option<String>,
    },
    /// The membership of one of the server's users became `membership` (`None`: not a string).
    Membership {
        stream_pos: i64,
        user_id: String,
        membership: Option<String>,
    },
}

impl HistoryChange {
    pub fn stream_pos(&self) -> i64 {
        match self {
            HistoryChange::Visibility { stream_pos, .. }
            | HistoryChange::Membership { stream_pos, .. } => *stream_pos,
        }
    }
}

fn auth_chain(conn: &Connection, room_id: &str, event_ids: &[String]) -> Result<Vec<StoredPdu>> {
    let sql = format!(
        "SELECT {} FROM events s
         JOIN event_auth a ON a.event_id = s.event_id
         JOIN events e ON e.event_id = a.auth_event_id
         WHERE s.event_id = ?1 AND s.room_id = ?2 AND e.room_id = ?2",
        StoredPdu::COLUMNS_E
    );
    let mut auth_events = conn.prepare_cached(&sql)?;
    // Each event is expanded once, so bad auth edges that form a cycle end the walk too.
    let mut chain: HashMap<String, StoredPdu> = HashMap::new();
    let mut waiting: Vec<String> = event_ids.to_vec();
    while let Some(event_id) = waiting.pop() {
        for pdu in auth_events.query_map(params![event_id, room_id], StoredPdu::from_row)? {
            let pdu = pdu?;
            if !chain.contains_key(&pdu.event_id) {
                waiting.push(pdu.event_id.clone());
                chain.insert(pdu.event_id.clone(), pdu);
            }
        }
    }
    let mut chain: Vec<StoredPdu> = chain
        .into_values()
        .filter(|pdu| pdu.rejection_reason.is_none())
        .collect();
    chain.sort_by(by_age);
    Ok(chain)
}

/// The given events that are stored in the room (rejected ones too: walks pass through them).
fn pdus_in_room(conn: &Connection, room_id: &str, event_ids: &[String]) -> Result<Vec<StoredPdu>> {
    let sql = format!(
        "SELECT {} FROM events WHERE event_id = ?1 AND room_id = ?2",
        StoredPdu::COLUMNS
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut pdus = Vec::with_capacity(event_ids.len());
    for event_id in event_ids {
        if let Some(pdu) = statement
            .query_row(params![event_id, room_id], StoredPdu::from_row)
            .optional()?
        {
            pdus.push(pdu);
        }
    }
    Ok(pdus)
}

/// The stored prev_events of one event, in the same room.
fn prev_events(conn: &Connection, room_id: &str, event_id: &str) -> Result<Vec<StoredPdu>> {
    let sql = format!(
        "SELECT {} FROM event_edges g JOIN events e ON e.event_id = g.prev_event_id
         WHERE g.event_id = ?1 AND e.room_id = ?2",
        StoredPdu::COLUMNS_E
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let pdus = statement
        .query_map(params![event_id, room_id], StoredPdu::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(pdus)
}

/// Walks back over prev_events from `start`, always taking the deepest event waiting (as
/// Synapse's backfill does, so the answer is the newest history, not one long branch), never
/// entering an event in `seen` or below `min_depth`. Stops after `limit` events; rejected ones
/// count (that bounds the work whatever the DAG holds) but are left out of the answer.
fn walk_back(
    conn: &Connection,
    room_id: &str,
    start: Vec<StoredPdu>,
    mut seen: HashSet<String>,
    min_depth: i64,
    limit: usize,
) -> Result<Vec<StoredPdu>> {
    let mut waiting = BinaryHeap::new();
    let mut visit = |pdu: StoredPdu, waiting: &mut BinaryHeap<Deepest>| {
        if pdu.depth >= min_depth && seen.insert(pdu.event_id.clone()) {
            waiting.push(Deepest(pdu));
        }
    };
    for pdu in start {
        visit(pdu, &mut waiting);
    }
    let mut walked = Vec::new();
    while walked.len() < limit
        && let Some(Deepest(pdu)) = waiting.pop()
    {
        for prev in prev_events(conn, room_id, &pdu.event_id)? {
            visit(prev, &mut waiting);
        }
        walked.push(pdu);
    }
    walked.retain(|pdu| pdu.rejection_reason.is_none());
    Ok(walked)
}

/// Orders PDUs oldest first: by depth, then by arrival here, then by id (a stable answer).
fn by_age(a: &StoredPdu, b: &StoredPdu) -> Ordering {
    (a.depth, a.stream_pos, &a.event_id).cmp(&(b.depth, b.stream_pos, &b.event_id))
}

/// A PDU in the walk's queue; the deepest (then newest) comes out first.
struct Deepest(StoredPdu);

impl Ord for Deepest {
    fn cmp(&self, other: &Self) -> Ordering {
        by_age(&self.0, &other.0)
    }
}

impl PartialOrd for Deepest {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Deepest {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Deepest {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewPdu;

    const ROOM: &str = "!room:example";

    fn pdu(id: &str, depth: i64, prev: &[&str], auth: &[&str]) -> NewPdu {
        NewPdu {
            event_id: id.into(),
            room_id: ROOM.into(),
            depth,
            sender: "@alice:example".into(),
            event_type: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 1,
            json: format!(r#"{{"id":"{id}"}}"#),
            prev_events: prev.iter().map(|p| p.to_string()).collect(),
            auth_events: auth.iter().map(|a| a.to_string()).collect(),
            rejection_reason: None,
            outlier: false,
        }
    }

    fn ids(pdus: &[StoredPdu]) -> Vec<&str> {
        pdus.iter().map(|p| p.event_id.as_str()).collect()
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        (dir, store)
    }

    /// $a ← $b ← $c ← $d ← $e, one line of history.
    async fn line(store: &Store) {
        store
            .append_pdus(vec![
                pdu("$a", 1, &[], &[]),
                pdu("$b", 2, &["$a"], &["$a"]),
                pdu("$c", 3, &["$b"], &["$a"]),
                pdu("$d", 4, &["$c"], &["$a"]),
                pdu("$e", 5, &["$d"], &["$a"]),
            ])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn auth_chains_are_followed_to_the_end_within_the_room() {
        let (_dir, store) = store().await;
        let mut elsewhere = pdu("$other_room", 1, &[], &[]);
        elsewhere.room_id = "!elsewhere:example".into();
        let mut rejected = pdu("$rejected", 3, &["$member"], &["$create"]);
        rejected.rejection_reason = Some("not allowed".into());
        store
            .append_pdus(vec![
                pdu("$create", 1, &[], &[]),
                pdu("$power", 2, &["$create"], &["$create"]),
                pdu("$member", 3, &["$power"], &["$create", "$power"]),
                elsewhere,
                rejected,
                pdu(
                    "$message",
                    4,
                    &["$member"],
                    &["$member", "$power", "$other_room", "$rejected", "$unknown"],
                ),
                // Bad edges that go round in a circle end the walk all the same.
                pdu("$loop1", 5, &[], &["$loop2", "$create"]),
                pdu("$loop2", 5, &[], &["$loop1"]),
            ])
            .await
            .unwrap();

        let chain = |room: &str, from: &[&str]| {
            let (store, room) = (store.clone(), room.to_owned());
            let from = from.iter().map(|s| s.to_string()).collect();
            async move { store.auth_chain(room, from).await.unwrap() }
        };
        assert_eq!(
            ids(&chain(ROOM, &["$message"]).await),
            ["$create", "$power", "$member"]
        );
        assert_eq!(
            ids(&chain(ROOM, &["$member", "$create"]).await),
            ["$create", "$power"],
            "the given events are not in it"
        );
        assert_eq!(
            ids(&chain(ROOM, &["$loop1"]).await),
            ["$create", "$loop1", "$loop2"]
        );
        let chain = chain("!elsewhere:example", &["$message"]).await;
        assert!(chain.is_empty(), "another room's walk: {chain:?}");
    }

    #[tokio::test]
    async fn an_auth_graph_holds_rejected_events_and_stops_past_its_limit() {
        let (_dir, store) = store().await;
        let mut rejected = pdu("$rejected", 3, &[], &["$power"]);
        rejected.rejection_reason = Some("not allowed".into());
        let mut elsewhere = pdu("$other_room", 1, &[], &[]);
        elsewhere.room_id = "!elsewhere:example".into();
        store
            .append_pdus(vec![
                pdu("$create", 1, &[], &[]),
                pdu("$power", 2, &[], &["$create"]),
                rejected,
                elsewhere,
                pdu("$member", 4, &[], &["$rejected", "$other_room", "$unknown"]),
                pdu("$loop1", 5, &[], &["$loop2", "$create"]),
                pdu("$loop2", 5, &[], &["$loop1"]),
            ])
            .await
            .unwrap();
        let graph = |from: &[&str], limit| {
            let store = store.clone();
            let from = from.iter().map(|s| s.to_string()).collect();
            async move {
                store
                    .auth_graph(ROOM.into(), from, limit)
                    .await
                    .unwrap()
                    .map(|pdus| {
                        let mut ids: Vec<String> = pdus.into_iter().map(|p| p.event_id).collect();
                        ids.sort();
                        ids
                    })
            }
        };
        assert_eq!(
            graph(&["$member"], 10).await.unwrap(),
            ["$create", "$member", "$power", "$rejected"],
            "the given events, rejected ones, nothing of another room"
        );
        assert_eq!(graph(&["$member"], 4).await.unwrap().len(), 4);
        assert_eq!(
            graph(&["$member"], 3).await,
            None,
            "one more than the limit"
        );
        assert_eq!(
            graph(&["$loop1"], 10).await.unwrap(),
            ["$create", "$loop1", "$loop2"]
        );
    }

    #[tokio::test]
    async fn backfill_walks_back_newest_first_up_to_the_limit() {
        let (_dir, store) = store().await;
        line(&store).await;
        let pdus = store
            .backfill(ROOM.into(), vec!["$e".into()], 3)
            .await
            .unwrap();
        assert_eq!(ids(&pdus), ["$e", "$d", "$c"]);
        let pdus = store
            .backfill(ROOM.into(), vec!["$c".into(), "$unknown".into()], 100)
            .await
            .unwrap();
        assert_eq!(ids(&pdus), ["$c", "$b", "$a"]);
        let pdus = store
            .backfill("!elsewhere:example".into(), vec!["$e".into()], 100)
            .await
            .unwrap();
        assert!(pdus.is_empty());

        // A fork: both branches, deepest first, and what was rejected is left out.
        let mut rejected = pdu("$bad", 6, &["$e"], &[]);
        rejected.rejection_reason = Some("no".into());
        store
            .append_pdus(vec![
                pdu("$f1", 6, &["$e"], &[]),
                pdu("$f2", 7, &["$f1"], &[]),
                rejected,
                pdu("$g", 8, &["$f2", "$bad"], &[]),
            ])
            .await
            .unwrap();
        let pdus = store
            .backfill(ROOM.into(), vec!["$g".into()], 4)
            .await
            .unwrap();
        assert_eq!(ids(&pdus), ["$g", "$f2", "$f1"], "$bad took the last place");
        let pdus = store
            .backfill(ROOM.into(), vec!["$g".into()], 5)
            .await
            .unwrap();
        assert_eq!(ids(&pdus), ["$g", "$f2", "$f1", "$e"]);
    }

    #[tokio::test]
    async fn missing_events_fill_the_gap_oldest_first() {
        let (_dir, store) = store().await;
        line(&store).await;
        let missing = |earliest: &[&str], latest: &[&str], limit, min_depth| {
            let store = store.clone();
            let earliest = earliest.iter().map(|s| s.to_string()).collect();
            let latest = latest.iter().map(|s| s.to_string()).collect();
            async move {
                store
                    .missing_events(ROOM.into(), earliest, latest, limit, min_depth)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(ids(&missing(&["$b"], &["$e"], 10, 0).await), ["$c", "$d"]);
        assert_eq!(
            ids(&missing(&["$b"], &["$e"], 1, 0).await),
            ["$d"],
            "the newest part of the gap first"
        );
        assert_eq!(ids(&missing(&[], &["$e"], 10, 3).await), ["$c", "$d"]);
        assert_eq!(
            ids(&missing(&[], &["$e"], 10, 0).await),
            ["$a", "$b", "$c", "$d"]
        );
        assert_eq!(
            ids(&missing(&["$a"], &["$e", "$c"], 10, 0).await),
            ["$b", "$d"],
            "a latest event is not sent back"
        );
        assert!(missing(&["$d"], &["$e"], 10, 0).await.is_empty());
        assert!(missing(&[], &["$unknown"], 10, 0).await.is_empty());
    }

    /// Sets a membership directly, as if an event had.
    async fn set(store: &Store, user: &'static str, room: &'static str, membership: &'static str) {
        store
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
                     VALUES (?1, ?2, ?3, '$m', 0)
                     ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership",
                    [room, user, membership],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_server_reads_history_only_while_a_user_of_it_is_joined() {
        let (_dir, store) = store().await;
        let joined = |server: &str| {
            let store = store.clone();
            let server = server.to_owned();
            async move {
                store
                    .server_history(ROOM.into(), server)
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        set(&store, "@x:invited.example", ROOM, "invite").await;
        set(&store, "@x:elsewhere.example", "!other:example", "join").await;
        set(&store, "@x:some.example", ROOM, "join").await;
        set(&store, "@y:gone.example", ROOM, "leave").await;
        set(&store, "@y:banned.example", ROOM, "ban").await;
        set(&store, "@z:knocking.example", ROOM, "knock").await;
        assert!(joined("some.example").await);
        assert!(!joined("gone.example").await, "a leave shows nothing");
        assert!(!joined("banned.example").await, "a ban shows nothing");
        assert!(!joined("invited.example").await);
        assert!(!joined("knocking.example").await);
        assert!(!joined("elsewhere.example").await);
        assert!(!joined("example").await, "a suffix is not the server");
        set(&store, "@x:invited.example", ROOM, "join").await;
        assert!(joined("invited.example").await);
        set(&store, "@x:some.example", ROOM, "leave").await;
        assert!(!joined("some.example").await);
    }

    #[tokio::test]
    async fn a_servers_history_changes_are_its_users_memberships_and_the_visibility() {
        let (_dir, store) = store().await;
        let state = |id: &str, kind: &str, key: &str, content: &str| {
            let mut pdu = pdu(id, 1, &[], &[]);
            pdu.event_type = kind.into();
            pdu.state_key = Some(key.into());
            pdu.json = format!(r#"{{"content":{content}}}"#);
            pdu
        };
        let mut rejected = state(
            "$rejected",
            "m.room.member",
            "@x:some.example",
            r#"{"membership":"ban"}"#,
        );
        rejected.rejection_reason = Some("no".into());
        let mut outlier = state(
            "$outlier",
            "m.room.member",
            "@x:some.example",
            r#"{"membership":"leave"}"#,
        );
        outlier.outlier = true;
        let mut elsewhere = state(
            "$elsewhere",
            "m.room.history_visibility",
            "",
            r#"{"history_visibility":"world_readable"}"#,
        );
        elsewhere.room_id = "!elsewhere:example".into();
        let positions = store
            .append_pdus(vec![
                state(
                    "$v1",
                    "m.room.history_visibility",
                    "",
                    r#"{"history_visibility":"joined"}"#,
                ),
                state(
                    "$other",
                    "m.room.member",
                    "@y:other.example",
                    r#"{"membership":"join"}"#,
                ),
                state(
                    "$suffix",
                    "m.room.member",
                    "@y:some.example.evil",
                    r#"{"membership":"join"}"#,
                ),
                state(
                    "$invite",
                    "m.room.member",
                    "@x:some.example",
                    r#"{"membership":"invite"}"#,
                ),
                rejected,
                outlier,
                elsewhere,
                state(
                    "$join",
                    "m.room.member",
                    "@x:some.example",
                    r#"{"membership":"join"}"#,
                ),
                state(
                    "$v2",
                    "m.room.history_visibility",
                    "",
                    r#"{"history_visibility":5}"#,
                ),
                pdu("$message", 2, &[], &[]),
            ])
            .await
            .unwrap();
        store
            .write(|conn| {
                conn.execute(
                    "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
                     VALUES (?1, '@x:some.example', 'join', '$join', 0)",
                    [ROOM],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let changes = store
            .server_history(ROOM.into(), "some.example".into())
            .await
            .unwrap()
            .unwrap();
        let at = |i: usize| positions[i].unwrap();
        let member = |i: usize, membership: &str| HistoryChange::Membership {
            stream_pos: at(i),
            user_id: "@x:some.example".into(),
            membership: Some(membership.into()),
        };
        assert_eq!(
            changes,
            [
                HistoryChange::Visibility {
                    stream_pos: at(0),
                    visibility: Some("joined".into()),
                },
                member(3, "invite"),
                member(7, "join"),
                HistoryChange::Visibility {
                    stream_pos: at(8),
                    visibility: None,
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_user_shares_a_room_with_a_server_when_both_are_in_it() {
        let (_dir, store) = store().await;
        set(&store, "@bob:here.example", ROOM, "join").await;
        set(&store, "@alice:there.example", ROOM, "join").await;
        set(&store, "@carol:there.example", "!other:example", "join").await;
        set(&store, "@dave:invited.example", ROOM, "invite").await;
        set(&store, "@erin:left.example", ROOM, "leave").await;
        let shares =
            |user: &str, server: &str| store.shares_room_with_server(user.into(), server.into());
        assert!(
            shares("@alice:there.example", "here.example")
                .await
                .unwrap()
        );
        assert!(shares("@bob:here.example", "there.example").await.unwrap());
        assert!(
            !shares("@carol:there.example", "here.example")
                .await
                .unwrap()
        );
        assert!(
            shares("@bob:here.example", "invited.example")
                .await
                .unwrap()
        );
        assert!(
            shares("@dave:invited.example", "here.example")
                .await
                .unwrap()
        );
        assert!(!shares("@bob:here.example", "left.example").await.unwrap());
        assert!(!shares("@erin:left.example", "here.example").await.unwrap());
        assert!(
            !shares("@bob:here.example", "nowhere.example")
                .await
                .unwrap()
        );
        // Invited to a room on another server, whose members this node does not know: the
        // inviter's server shares it, no other.
        let mut invite = pdu("$invite", 1, &[], &[]);
        invite.room_id = "!far:inviter.example".into();
        invite.sender = "@eve:inviter.example".into();
        store.append_pdus(vec![invite]).await.unwrap();
        store
            .write(|conn| {
                conn.execute(
                    "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
                     VALUES ('!far:inviter.example', '@frank:here.example', 'invite', '$invite', 0)",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(
            shares("@frank:here.example", "inviter.example")
                .await
                .unwrap()
        );
        assert!(
            !shares("@frank:here.example", "there.example")
                .await
                .unwrap()
        );
    }
}
