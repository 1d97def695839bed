//! Rooms as the node tracks them: room versions, current state, memberships, and the one write
//! that appends a PDU together with everything it changes (state, membership, extremities,
//! stream position), so readers never see half of it.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::events::{NewPdu, StoredPdu, append_pdu, insert_edges};
use crate::{Store, next_stream_pos, now_ms};

/// One user's membership in one room, with the stream position where it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub room_id: String,
    pub user_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream_pos: i64,
}

/// A PDU the node accepted into a room's timeline, with what it does to the room.
#[derive(Debug, Clone)]
pub struct AcceptedPdu {
    pub pdu: NewPdu,
    /// `Some` for state events: the membership it sets when it is an `m.room.member` event.
    pub membership: Option<String>,
    /// A client's transaction id (localpart, device id, txn id) that created this event.
    pub transaction: Option<(String, String, String)>,
    /// Servers to send the event to: queued in the outbox in the same commit, so an event is
    /// never stored without its delivery being owed.
    pub destinations: Vec<String>,
    /// The room state before the event, kept so others can ask for it and forks can be
    /// resolved later.
    pub state_before: Option<Arc<StateSnapshot>>,
    /// The room's current state right after this event (what sync shows as the state at
    /// this point of the timeline).
    pub state_after: Option<Arc<StateSnapshot>>,
    /// The room's state after this event when it is not the current state with this event
    /// applied (the event merged or joined a fork): it replaces the current state.
    pub resolved_state: Option<ResolvedState>,
    /// The event came from another server with a gap behind it that could not be filled:
    /// its prev events may be unknown here.
    pub prev_may_be_missing: bool,
}

/// A room state as (type, state key, event id), sorted; `id` is derived from the entries, so
/// the many events that share a state share one stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSnapshot {
    pub id: i64,
    pub entries: Vec<(String, String, String)>,
}

impl StateSnapshot {
    pub fn new(room_id: &str, mut entries: Vec<(String, String, String)>) -> StateSnapshot {
        entries.sort();
        let mut hash = Sha256::new();
        hash.update(room_id.as_bytes());
        for (kind, key, event_id) in &entries {
            for part in [kind, key, event_id] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part.as_bytes());
            }
        }
        let digest = hash.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        StateSnapshot {
            id: i64::from_be_bytes(id),
            entries,
        }
    }
}

/// A resolved room state and the memberships it sets: (user id, membership, event id) for every
/// member event that differs from the current state.
#[derive(Debug, Clone)]
pub struct ResolvedState {
    pub snapshot: Arc<StateSnapshot>,
    pub memberships: Vec<(String, String, String)>,
}

impl Store {
    /// Records a new room together with its first events, in one commit.
    pub async fn create_room_with(
        &self,
        room_id: String,
        room_version: String,
        pdus: Vec<AcceptedPdu>,
    ) -> Result<()> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO rooms (room_id, room_version, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room_id) DO NOTHING",
                params![room_id, room_version, now_ms()],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists("room"));
            }
            for accepted in &pdus {
                append_accepted(conn, accepted)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn room_version(&self, room_id: String) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT room_version FROM rooms WHERE room_id = ?1",
                    [room_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Appends PDUs to their rooms' timelines and applies their state, in one commit. Returns
    /// each PDU's stream position. Queued at the call, so calls commit in call order.
    pub fn append_accepted(
        &self,
        pdus: Vec<AcceptedPdu>,
    ) -> impl Future<Output = Result<Vec<Option<i64>>>> + use<> {
        self.write(move |conn| {
            pdus.iter()
                .map(|accepted| append_accepted(conn, accepted))
                .collect()
        })
    }

    /// The room state before an event, as kept when the event was accepted; `None` for an
    /// event stored without it.
    pub async fn state_at(&self, event_id: String) -> Result<Option<StateSnapshot>> {
        self.read(move |conn| {
            let Some(snapshot_id) = conn
                .query_row(
                    "SELECT snapshot_id FROM event_state WHERE event_id = ?1",
                    [&event_id],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT event_type, state_key, event_id FROM state_snapshot_entries
                 WHERE snapshot_id = ?1 ORDER BY event_type, state_key",
            )?;
            let entries = statement
                .query_map([snapshot_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(StateSnapshot {
                id: snapshot_id,
                entries,
            }))
        })
        .await
    }

    /// The room's current state as (type, state key, event id).
    pub async fn current_state(&self, room_id: String) -> Result<Vec<(String, String, String)>> {
        self.read(move |conn| current_state(conn, &room_id)).await
    }

    /// The current state events of a room, as stored PDUs.
    pub async fn current_state_pdus(&self, room_id: String) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM current_state s JOIN events e USING (event_id)
                 WHERE s.room_id = ?1 ORDER BY e.stream_pos",
                StoredPdu::COLUMNS_E
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let pdus = statement
                .query_map([room_id], StoredPdu::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(pdus)
        })
        .await
    }

    pub async fn pdus(&self, event_ids: Vec<String>) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM events WHERE event_id = ?1",
                StoredPdu::COLUMNS
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let mut pdus = Vec::with_capacity(event_ids.len());
            for id in event_ids {
                if let Some(pdu) = statement.query_row([id], StoredPdu::from_row).optional()? {
                    pdus.push(pdu);
                }
            }
            Ok(pdus)
        })
        .await
    }

    /// A user's membership in a room, if any.
    pub async fn membership(&self, room_id: String, user_id: String) -> Result<Option<Membership>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT room_id, user_id, membership, event_id, stream_pos FROM memberships
                     WHERE room_id = ?1 AND user_id = ?2",
                    [room_id, user_id],
                    Membership::from_row,
                )
                .optional()?)
        })
        .await
    }

    /// Every room membership of a user (joined, invited, left, banned), minus forgotten rooms.
    pub async fn memberships_of(&self, user_id: String) -> Result<Vec<Membership>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT room_id, user_id, membership, event_id, stream_pos FROM memberships m
                 WHERE user_id = ?1 AND NOT EXISTS (
                     SELECT 1 FROM forgotten_rooms f
                     WHERE f.user_id = m.user_id AND f.room_id = m.room_id)
                 ORDER BY stream_pos",
            )?;
            let rows = statement
                .query_map([user_id], Membership::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The members of a room with a given membership ("join", "invite", ...).
    pub async fn room_members(&self, room_id: String, membership: String) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership = ?2
                 ORDER BY user_id",
            )?;
            let rows = statement
                .query_map([room_id, membership], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Accepted timeline PDUs of a room with stream positions in `(after, upto]`: the newest
    /// `limit` of them, oldest first, and whether older ones in the range were left out.
    pub async fn room_timeline(
        &self,
        room_id: String,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<(Vec<StoredPdu>, bool)> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {} FROM events
                 WHERE room_id = ?1 AND stream_pos > ?2 AND stream_pos <= ?3
                   AND rejection_reason IS NULL
                 ORDER BY stream_pos DESC LIMIT ?4",
                StoredPdu::COLUMNS
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let mut pdus = statement
                .query_map(
                    params![room_id, after, upto, i64::from(limit) + 1],
                    StoredPdu::from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let limited = pdus.len() > limit as usize;
            pdus.truncate(limit as usize);
            pdus.reverse();
            Ok((pdus, limited))
        })
        .await
    }

    /// Accepted PDUs of a room before stream position `before`, newest first (for `/messages`
    /// backwards), or after `after`, oldest first (forwards).
    pub async fn room_page(
        &self,
        room_id: String,
        from: i64,
        backwards: bool,
        limit: u32,
    ) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let sql = if backwards {
                format!(
                    "SELECT {} FROM events WHERE room_id = ?1 AND stream_pos <= ?2
                     AND rejection_reason IS NULL ORDER BY stream_pos DESC LIMIT ?3",
                    StoredPdu::COLUMNS
                )
            } else {
                format!(
                    "SELECT {} FROM events WHERE room_id = ?1 AND stream_pos > ?2
                     AND rejection_reason IS NULL ORDER BY stream_pos ASC LIMIT ?3",
                    StoredPdu::COLUMNS
                )
            };
            let mut statement = conn.prepare_cached(&sql)?;
            let pdus = statement
                .query_map(params![room_id, from, limit], StoredPdu::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(pdus)
        })
        .await
    }

    /// The event a client transaction created, if it was seen before.
    pub async fn transaction_event(
        &self,
        localpart: String,
        device_id: String,
        txn_id: String,
    ) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT event_id FROM client_transactions
                     WHERE localpart = ?1 AND device_id = ?2 AND txn_id = ?3",
                    [localpart, device_id, txn_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    pub async fn set_alias(&self, alias: String, room_id: String, creator: String) -> Result<()> {
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3)
                 ON CONFLICT (alias) DO NOTHING",
                params![alias, room_id, creator],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists("room alias"));
            }
            Ok(())
        })
        .await
    }

    pub async fn alias_room(&self, alias: String) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT room_id FROM room_aliases WHERE alias = ?1",
                    [alias],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// The transaction ids a device used for some of the given events: event id → scoped txn id
    /// as the device's request stored it.
    pub async fn transaction_ids(
        &self,
        localpart: String,
        device_id: String,
        event_ids: Vec<String>,
    ) -> Result<Vec<(String, String)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT txn_id FROM client_transactions
                 WHERE event_id = ?1 AND localpart = ?2 AND device_id = ?3",
            )?;
            let mut found = Vec::new();
            for event_id in event_ids {
                if let Some(txn) = statement
                    .query_row(params![event_id, localpart, device_id], |row| row.get(0))
                    .optional()?
                {
                    found.push((event_id, txn));
                }
            }
            Ok(found)
        })
        .await
    }

    /// The room's state as of stream position `before` (exclusive): the current state kept
    /// with the last event before it; for rooms from before that was kept, for each (type, key)
    /// the newest accepted state event before it, skipping outliers.
    pub async fn state_before(&self, room_id: String, before: i64) -> Result<Vec<StoredPdu>> {
        self.read(move |conn| {
            let kept: Option<Option<i64>> = conn
                .query_row(
                    "SELECT s.current_after FROM events e JOIN event_state s USING (event_id)
                     WHERE e.room_id = ?1 AND e.stream_pos < ?2
                     ORDER BY e.stream_pos DESC LIMIT 1",
                    params![room_id, before],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(Some(snapshot_id)) = kept {
                let sql = format!(
                    "SELECT {} FROM state_snapshot_entries s JOIN events e USING (event_id)
                     WHERE s.snapshot_id = ?1 ORDER BY e.stream_pos IS NULL, e.stream_pos",
                    StoredPdu::COLUMNS_E
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let pdus = statement
                    .query_map([snapshot_id], StoredPdu::from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                return Ok(pdus);
            }
            let sql = format!(
                "SELECT {} FROM events e
                 WHERE e.room_id = ?1 AND e.state_key IS NOT NULL AND e.rejection_reason IS NULL
                   AND e.stream_pos < ?2
                   AND e.stream_pos = (
                       SELECT max(n.stream_pos) FROM events n
                       WHERE n.room_id = e.room_id AND n.event_type = e.event_type
                         AND n.state_key = e.state_key AND n.state_key IS NOT NULL
                         AND n.rejection_reason IS NULL AND n.stream_pos < ?2)
                 ORDER BY e.stream_pos",
                StoredPdu::COLUMNS_E
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let pdus = statement
                .query_map(params![room_id, before], StoredPdu::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(pdus)
        })
        .await
    }

    /// Records a membership of a local user in a room on another server that this node is not
    /// in (an invite, or the refusal of one): the member event, the membership, and for an
    /// invite the stripped state to show them; queues the event for `destinations`. Returns
    /// the stream position.
    pub async fn record_remote_membership(
        &self,
        room_version: String,
        event: NewPdu,
        membership: String,
        stripped_state: Option<String>,
        destinations: Vec<String>,
    ) -> Result<i64> {
        self.write(move |conn| {
            let Some(user_id) = event.state_key.clone() else {
                return Err(StoreError::NotFound("member"));
            };
            conn.execute(
                "INSERT INTO rooms (room_id, room_version, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room_id) DO NOTHING",
                params![event.room_id, room_version, now_ms()],
            )?;
            // In the timeline (so sync finds the membership at its position), though none of
            // the room is here yet.
            let mut event = event;
            event.outlier = false;
            let position = match append_pdu(conn, &event)? {
                Some(position) => position,
                None => next_stream_pos(conn)?,
            };
            if let Some(stripped_state) = stripped_state {
                conn.execute(
                    "INSERT INTO invite_state (room_id, user_id, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT (room_id, user_id) DO UPDATE SET state = excluded.state",
                    params![event.room_id, user_id, stripped_state],
                )?;
            }
            set_membership(
                conn,
                &event.room_id,
                &user_id,
                &membership,
                &event.event_id,
                position,
            )?;
            let mut outbox = conn.prepare_cached(
                "INSERT INTO outbox (destination, kind, payload, created_ms)
                 VALUES (?1, 'pdu', ?2, ?3)",
            )?;
            for destination in &destinations {
                outbox.execute(params![destination, event.event_id, now_ms()])?;
            }
            Ok(position)
        })
        .await
    }

    /// Where this node's copy of a room's history ends: prev events of timeline events that
    /// are not in the timeline here (at most `limit`).
    pub async fn backfill_frontier(&self, room_id: String, limit: u32) -> Result<Vec<String>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT DISTINCT g.prev_event_id FROM event_edges g
                 JOIN events e ON e.event_id = g.event_id
                 WHERE e.room_id = ?1 AND e.stream_pos IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = g.prev_event_id
                                   AND (p.stream_pos IS NOT NULL OR p.rejection_reason IS NOT NULL))
                 LIMIT ?2",
            )?;
            let ids = statement
                .query_map(params![room_id, limit], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    /// Stores history fetched from other servers, newest first, before everything the room's
    /// timeline holds here: at negative stream positions, so sync never shows it as new and
    /// /messages finds it in order. It changes no state and no extremity.
    pub async fn append_backfilled(&self, pdus: Vec<NewPdu>) -> Result<usize> {
        self.write(move |conn| {
            let mut added = 0;
            for pdu in &pdus {
                let known: Option<Option<i64>> = conn
                    .query_row(
                        "SELECT stream_pos FROM events WHERE event_id = ?1",
                        [&pdu.event_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if matches!(known, Some(Some(_))) {
                    continue;
                }
                let lowest: i64 = conn.query_row(
                    "SELECT coalesce(min(stream_pos), 0) FROM events",
                    [],
                    |row| row.get(0),
                )?;
                let position = lowest.min(0) - 1;
                if known.is_some() {
                    conn.prepare_cached(
                        "UPDATE events SET stream_pos = ?2, outlier = 0
                         WHERE event_id = ?1 AND rejection_reason IS NULL",
                    )?
                    .execute(params![pdu.event_id, position])?;
                } else {
                    conn.prepare_cached(
                        "INSERT INTO events (event_id, room_id, stream_pos, depth, sender,
                             event_type, state_key, origin_server_ts, pdu, rejection_reason, outlier)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, 0)",
                    )?
                    .execute(params![
                        pdu.event_id,
                        pdu.room_id,
                        position,
                        pdu.depth,
                        pdu.sender,
                        pdu.event_type,
                        pdu.state_key,
                        pdu.origin_server_ts,
                        pdu.json,
                    ])?;
                }
                insert_edges(conn, pdu)?;
                crate::relations::index_relation(conn, &pdu.event_id)?;
                added += 1;
            }
            Ok(added)
        })
        .await
    }

    /// The stripped state another server sent with an invite, if the invite came that way.
    pub async fn invite_state(&self, room_id: String, user_id: String) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT state FROM invite_state WHERE room_id = ?1 AND user_id = ?2",
                    [room_id, user_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// Records a room joined through another server: its state and auth chain (as outliers,
    /// checked by the caller), then the join event with the state around it, in one commit.
    pub async fn join_remote_room(
        &self,
        room_version: String,
        outliers: Vec<NewPdu>,
        join: AcceptedPdu,
    ) -> Result<Option<i64>> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO rooms (room_id, room_version, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room_id) DO NOTHING",
                params![join.pdu.room_id, room_version, now_ms()],
            )?;
            for outlier in &outliers {
                let mut outlier = outlier.clone();
                outlier.outlier = true;
                append_pdu(conn, &outlier)?;
            }
            append_accepted(conn, &join)
        })
        .await
    }

    /// A user's membership in a room as of stream position `upto`, and the one before it:
    /// ((membership, position), previous membership).
    pub async fn membership_at(
        &self,
        room_id: String,
        user_id: String,
        upto: i64,
    ) -> Result<Option<((String, i64), Option<String>)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT json_extract(pdu, '$.content.membership'), stream_pos FROM events
                 WHERE room_id = ?1 AND event_type = 'm.room.member' AND state_key = ?2
                   AND rejection_reason IS NULL AND stream_pos <= ?3
                 ORDER BY stream_pos DESC LIMIT 2",
            )?;
            let mut rows = statement
                .query_map(params![room_id, user_id, upto], |row| {
                    Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter();
            let Some((Some(current), position)) = rows.next() else {
                return Ok(None);
            };
            let previous = rows.next().and_then(|(membership, _)| membership);
            Ok(Some(((current, position), previous)))
        })
        .await
    }

    /// Where a member's current stay in a room began: the position of their first join (or,
    /// with `from_invite`, invite) since they last left or were banned.
    pub async fn membership_start(
        &self,
        room_id: String,
        user_id: String,
        from_invite: bool,
    ) -> Result<Option<i64>> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT min(stream_pos) FROM events
                 WHERE room_id = ?1 AND event_type = 'm.room.member' AND state_key = ?2
                   AND rejection_reason IS NULL AND stream_pos IS NOT NULL
                   AND (json_extract(pdu, '$.content.membership') = 'join'
                        OR (?3 AND json_extract(pdu, '$.content.membership') = 'invite'))
                   AND stream_pos > coalesce((
                       SELECT max(stream_pos) FROM events
                       WHERE room_id = ?1 AND event_type = 'm.room.member' AND state_key = ?2
                         AND rejection_reason IS NULL
                         AND json_extract(pdu, '$.content.membership') IN ('leave', 'ban')), 0)",
                params![room_id, user_id, from_invite],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// Users whose membership in a room changed in `(after, upto]`, with the membership.
    pub async fn membership_changes(
        &self,
        room_id: String,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, String)>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT state_key, json_extract(pdu, '$.content.membership') FROM events
                 WHERE room_id = ?1 AND event_type = 'm.room.member' AND state_key IS NOT NULL
                   AND rejection_reason IS NULL AND stream_pos > ?2 AND stream_pos <= ?3
                 ORDER BY stream_pos",
            )?;
            let rows = statement
                .query_map(params![room_id, after, upto], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
                })?
                .filter_map(|row| match row {
                    Ok((user, Some(membership))) => Some(Ok((user, membership))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Replaces a stored PDU's JSON with its redacted form; a relation it held goes with its
    /// content.
    pub async fn replace_pdu_json(&self, event_id: String, json: String) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE events SET pdu = ?2 WHERE event_id = ?1",
                [&event_id, &json],
            )?;
            crate::relations::unindex_relation(conn, &event_id)?;
            Ok(())
        })
        .await
    }

    /// Removes an alias its creator made; returns whether there was one.
    pub async fn delete_alias(&self, alias: String, creator: String) -> Result<bool> {
        self.write(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM room_aliases WHERE alias = ?1 AND creator = ?2",
                [alias, creator],
            )?;
            Ok(deleted > 0)
        })
        .await
    }

    pub async fn forget_room(&self, user_id: String, room_id: String) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO forgotten_rooms (user_id, room_id) VALUES (?1, ?2)",
                [user_id, room_id],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn save_filter(&self, localpart: String, filter: String) -> Result<i64> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO filters (localpart, filter) VALUES (?1, ?2)",
                [localpart, filter],
            )?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    pub async fn filter(&self, localpart: String, filter_id: i64) -> Result<Option<String>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT filter FROM filters WHERE localpart = ?1 AND filter_id = ?2",
                    params![localpart, filter_id],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }
}

impl Membership {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Membership> {
        Ok(Membership {
            room_id: row.get(0)?,
            user_id: row.get(1)?,
            membership: row.get(2)?,
            event_id: row.get(3)?,
            stream_pos: row.get(4)?,
        })
    }
}

fn current_state(conn: &Connection, room_id: &str) -> Result<Vec<(String, String, String)>> {
    let mut statement = conn.prepare_cached(
        "SELECT event_type, state_key, event_id FROM current_state WHERE room_id = ?1",
    )?;
    let rows = statement
        .query_map([room_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn set_membership(
    conn: &Connection,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
    position: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_pos)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
             event_id = excluded.event_id, stream_pos = excluded.stream_pos",
    )?
    .execute(params![room_id, user_id, membership, event_id, position])?;
    // Joining again un-forgets the room.
    if membership == "join" || membership == "invite" {
        conn.execute(
            "DELETE FROM forgotten_rooms WHERE user_id = ?1 AND room_id = ?2",
            [user_id, room_id],
        )?;
    }
    Ok(())
}

/// Stores a snapshot once; events with the same state share it.
fn save_snapshot(conn: &Connection, room_id: &str, snapshot: &StateSnapshot) -> Result<()> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO state_snapshots (snapshot_id, room_id) VALUES (?1, ?2)",
        )?
        .execute(params![snapshot.id, room_id])?;
    if inserted == 1 {
        let mut entry = conn.prepare_cached(
            "INSERT INTO state_snapshot_entries (snapshot_id, event_type, state_key, event_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (kind, key, event_id) in &snapshot.entries {
            entry.execute(params![snapshot.id, kind, key, event_id])?;
        }
    }
    Ok(())
}

fn append_accepted(conn: &Connection, accepted: &AcceptedPdu) -> Result<Option<i64>> {
    let pdu = &accepted.pdu;
    // A timeline event whose parent never made it to the store (its commit failed) would
    // leave a hole in the room's history: refuse it.
    if !accepted.prev_may_be_missing {
        let mut known = conn.prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")?;
        for prev in &pdu.prev_events {
            if !known.exists([prev])? {
                return Err(StoreError::NotFound("prev event"));
            }
        }
    }
    let position = append_pdu(conn, pdu)?;
    if let Some(snapshot) = &accepted.state_before {
        save_snapshot(conn, &pdu.room_id, snapshot)?;
        let after = match &accepted.state_after {
            Some(after) => {
                save_snapshot(conn, &pdu.room_id, after)?;
                Some(after.id)
            }
            None => None,
        };
        conn.prepare_cached(
            "INSERT OR IGNORE INTO event_state (event_id, snapshot_id, current_after)
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![pdu.event_id, snapshot.id, after])?;
    }
    let Some(position) = position else {
        return Ok(None);
    };
    let mut outbox = conn.prepare_cached(
        "INSERT INTO outbox (destination, kind, payload, created_ms) VALUES (?1, 'pdu', ?2, ?3)",
    )?;
    for destination in &accepted.destinations {
        outbox.execute(params![destination, pdu.event_id, now_ms()])?;
    }
    if let Some(resolved) = &accepted.resolved_state {
        conn.prepare_cached("DELETE FROM current_state WHERE room_id = ?1")?
            .execute([&pdu.room_id])?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (kind, key, event_id) in &resolved.snapshot.entries {
            insert.execute(params![pdu.room_id, kind, key, event_id])?;
        }
        for (user_id, membership, event_id) in &resolved.memberships {
            set_membership(conn, &pdu.room_id, user_id, membership, event_id, position)?;
        }
    } else if let Some(state_key) = &pdu.state_key {
        conn.prepare_cached(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET event_id = excluded.event_id",
        )?
        .execute(params![pdu.room_id, pdu.event_type, state_key, pdu.event_id])?;
        if let Some(membership) = &accepted.membership {
            set_membership(
                conn,
                &pdu.room_id,
                state_key,
                membership,
                &pdu.event_id,
                position,
            )?;
        }
    }
    if let Some((localpart, device_id, txn_id)) = &accepted.transaction {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO client_transactions (localpart, device_id, txn_id, event_id)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![localpart, device_id, txn_id, pdu.event_id])?;
    }
    Ok(Some(position))
}
