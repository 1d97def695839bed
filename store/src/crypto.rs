//! The in-process client's end-to-end encryption state (see migration 0009): its Olm account,
//! Olm and Megolm sessions as encrypted pickles, the devices of the users it tracks, and its open
//! room-key requests. The store never sees a key in the clear: the client pickles and encrypts,
//! the store keeps strings.
//!
//! Changes go through [`Store::crypto_write`], one transaction per call, so a ratchet step and
//! everything that depends on it are kept together (or not at all).

use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::error::Result;

/// A client's Olm account row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAccountRow {
    pub account_id: i64,
    pub pickle: String,
    pub device_keys_published: bool,
}

/// An Olm session with a peer identified by its curve25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlmSessionRow {
    pub sender_key: String,
    pub session_id: String,
    pub pickle: String,
    pub created_ms: i64,
    pub last_used_ms: i64,
}

/// A Megolm session to decrypt a room's events with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundGroupSessionRow {
    pub room_id: String,
    pub session_id: String,
    pub sender_key: String,
    pub signing_key: String,
    pub sender_user: Option<String>,
    pub first_known_index: i64,
    /// JSON array of curve25519 keys.
    pub forwarding_chain: String,
    pub pickle: String,
    pub received_ms: i64,
}

/// The event a Megolm message index was first decrypted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MegolmSeen {
    pub room_id: String,
    pub session_id: String,
    pub message_index: i64,
    pub event_id: String,
    pub origin_server_ts: i64,
}

/// The Megolm session a room's events are encrypted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundGroupSessionRow {
    pub room_id: String,
    pub session_id: String,
    pub pickle: String,
    pub created_ms: i64,
    pub message_count: i64,
}

/// A device an outbound session was shared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundShare {
    pub user_id: String,
    pub device_id: String,
    pub curve25519: String,
    pub message_index: i64,
}

/// A tracked user's device, with its checked keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedDevice {
    pub device_id: String,
    pub curve25519: String,
    pub ed25519: String,
    /// The device keys object as queried.
    pub keys: String,
}

/// A user whose devices the client keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedUser {
    pub user_id: String,
    pub outdated: bool,
    pub devices: Vec<TrackedDevice>,
}

/// A room key the client asked its user's other devices for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequestRow {
    pub room_id: String,
    pub session_id: String,
    pub request_id: String,
    pub sender_key: String,
    pub created_ms: i64,
}

/// A new or updated outbound session; `new` drops the shares of the session it replaces.
#[derive(Debug, Clone)]
pub struct OutboundWrite {
    pub session: OutboundGroupSessionRow,
    pub new: bool,
}

/// A tracked user's new state: `devices` replaces their device list when given.
#[derive(Debug, Clone)]
pub struct TrackedUserWrite {
    pub user_id: String,
    pub outdated: bool,
    pub devices: Option<Vec<TrackedDevice>>,
}

/// Everything one crypto operation changes, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct CryptoWrite {
    pub account: Option<String>,
    pub device_keys_published: bool,
    pub olm_sessions: Vec<OlmSessionRow>,
    pub inbound_group_sessions: Vec<InboundGroupSessionRow>,
    pub seen: Vec<MegolmSeen>,
    pub outbound: Vec<OutboundWrite>,
    /// (room id, share) for the room's current outbound session.
    pub shares: Vec<(String, OutboundShare)>,
    pub users: Vec<TrackedUserWrite>,
    pub key_requests: Vec<KeyRequestRow>,
    /// (room id, session id) of requests answered or given up.
    pub key_requests_done: Vec<(String, String)>,
}

impl CryptoWrite {
    pub fn is_empty(&self) -> bool {
        self.account.is_none()
            && !self.device_keys_published
            && self.olm_sessions.is_empty()
            && self.inbound_group_sessions.is_empty()
            && self.seen.is_empty()
            && self.outbound.is_empty()
            && self.shares.is_empty()
            && self.users.is_empty()
            && self.key_requests.is_empty()
            && self.key_requests_done.is_empty()
    }

    /// Adds `other`'s changes after this one's (later changes of the same row win).
    pub fn extend(&mut self, other: CryptoWrite) {
        if other.account.is_some() {
            self.account = other.account;
        }
        self.device_keys_published |= other.device_keys_published;
        self.olm_sessions.extend(other.olm_sessions);
        self.inbound_group_sessions
            .extend(other.inbound_group_sessions);
        self.seen.extend(other.seen);
        self.outbound.extend(other.outbound);
        self.shares.extend(other.shares);
        self.users.extend(other.users);
        self.key_requests.extend(other.key_requests);
        self.key_requests_done.extend(other.key_requests_done);
    }
}

impl Store {
    /// The Olm account of `user_id`'s device `device_id`, if it has one.
    pub async fn crypto_account(
        &self,
        user_id: String,
        device_id: String,
    ) -> Result<Option<CryptoAccountRow>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT account_id, pickle, device_keys_published FROM app_crypto_accounts
                     WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id],
                    |row| {
                        Ok(CryptoAccountRow {
                            account_id: row.get(0)?,
                            pickle: row.get(1)?,
                            device_keys_published: row.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Keeps a new Olm account for the device, or returns the one it already has (a concurrent
    /// first start): the caller must then use that one.
    pub async fn create_crypto_account(
        &self,
        user_id: String,
        device_id: String,
        pickle: String,
    ) -> Result<CryptoAccountRow> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO app_crypto_accounts (user_id, device_id, pickle) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, device_id) DO NOTHING",
                params![user_id, device_id, pickle],
            )?;
            Ok(conn.query_row(
                "SELECT account_id, pickle, device_keys_published FROM app_crypto_accounts
                 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id],
                |row| {
                    Ok(CryptoAccountRow {
                        account_id: row.get(0)?,
                        pickle: row.get(1)?,
                        device_keys_published: row.get(2)?,
                    })
                },
            )?)
        })
        .await
    }

    /// Applies `changes` in one transaction. Queued when called (so writes commit in call
    /// order), answered once committed.
    pub fn crypto_write(
        &self,
        account_id: i64,
        changes: CryptoWrite,
    ) -> impl Future<Output = Result<()>> + use<> {
        self.write(move |conn| apply(conn, account_id, changes))
    }

    /// The Olm sessions with the peers whose curve25519 keys are given.
    pub async fn crypto_olm_sessions(
        &self,
        account_id: i64,
        sender_keys: Vec<String>,
    ) -> Result<Vec<OlmSessionRow>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT sender_key, session_id, pickle, created_ms, last_used_ms
                 FROM app_olm_sessions WHERE account_id = ?1 AND sender_key = ?2",
            )?;
            let mut sessions = Vec::new();
            for key in sender_keys {
                let rows = statement.query_map(params![account_id, key], |row| {
                    Ok(OlmSessionRow {
                        sender_key: row.get(0)?,
                        session_id: row.get(1)?,
                        pickle: row.get(2)?,
                        created_ms: row.get(3)?,
                        last_used_ms: row.get(4)?,
                    })
                })?;
                for row in rows {
                    sessions.push(row?);
                }
            }
            Ok(sessions)
        })
        .await
    }

    /// A room's inbound Megolm session and the message indices it decrypted so far.
    pub async fn crypto_inbound_group_session(
        &self,
        account_id: i64,
        room_id: String,
        session_id: String,
    ) -> Result<Option<(InboundGroupSessionRow, Vec<MegolmSeen>)>> {
        self.read(move |conn| {
            let session = conn
                .query_row(
                    "SELECT sender_key, signing_key, sender_user, first_known_index,
                            forwarding_chain, pickle, received_ms
                     FROM app_inbound_group_sessions
                     WHERE account_id = ?1 AND room_id = ?2 AND session_id = ?3",
                    params![account_id, room_id, session_id],
                    |row| {
                        Ok(InboundGroupSessionRow {
                            room_id: room_id.clone(),
                            session_id: session_id.clone(),
                            sender_key: row.get(0)?,
                            signing_key: row.get(1)?,
                            sender_user: row.get(2)?,
                            first_known_index: row.get(3)?,
                            forwarding_chain: row.get(4)?,
                            pickle: row.get(5)?,
                            received_ms: row.get(6)?,
                        })
                    },
                )
                .optional()?;
            let Some(session) = session else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT message_index, event_id, origin_server_ts FROM app_megolm_seen
                 WHERE account_id = ?1 AND room_id = ?2 AND session_id = ?3",
            )?;
            let seen = statement
                .query_map(params![account_id, room_id, session_id], |row| {
                    Ok(MegolmSeen {
                        room_id: room_id.clone(),
                        session_id: session_id.clone(),
                        message_index: row.get(0)?,
                        event_id: row.get(1)?,
                        origin_server_ts: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((session, seen)))
        })
        .await
    }

    /// A room's outbound Megolm session and the devices it was shared with.
    pub async fn crypto_outbound_group_session(
        &self,
        account_id: i64,
        room_id: String,
    ) -> Result<Option<(OutboundGroupSessionRow, Vec<OutboundShare>)>> {
        self.read(move |conn| {
            let session = conn
                .query_row(
                    "SELECT session_id, pickle, created_ms, message_count
                     FROM app_outbound_group_sessions WHERE account_id = ?1 AND room_id = ?2",
                    params![account_id, room_id],
                    |row| {
                        Ok(OutboundGroupSessionRow {
                            room_id: room_id.clone(),
                            session_id: row.get(0)?,
                            pickle: row.get(1)?,
                            created_ms: row.get(2)?,
                            message_count: row.get(3)?,
                        })
                    },
                )
                .optional()?;
            let Some(session) = session else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT user_id, device_id, curve25519, message_index FROM app_outbound_shares
                 WHERE account_id = ?1 AND room_id = ?2 AND session_id = ?3",
            )?;
            let shares = statement
                .query_map(params![account_id, room_id, session.session_id], |row| {
                    Ok(OutboundShare {
                        user_id: row.get(0)?,
                        device_id: row.get(1)?,
                        curve25519: row.get(2)?,
                        message_index: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some((session, shares)))
        })
        .await
    }

    /// Every user the client tracks, with their devices.
    pub async fn crypto_tracked_users(&self, account_id: i64) -> Result<Vec<TrackedUser>> {
        self.read(move |conn| {
            let mut users: Vec<TrackedUser> = conn
                .prepare_cached(
                    "SELECT user_id, outdated FROM app_tracked_users WHERE account_id = ?1
                     ORDER BY user_id",
                )?
                .query_map([account_id], |row| {
                    Ok(TrackedUser {
                        user_id: row.get(0)?,
                        outdated: row.get(1)?,
                        devices: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut statement = conn.prepare_cached(
                "SELECT user_id, device_id, curve25519, ed25519, keys FROM app_devices
                 WHERE account_id = ?1 ORDER BY user_id, device_id",
            )?;
            let mut rows = statement.query([account_id])?;
            let mut at = 0;
            while let Some(row) = rows.next()? {
                let user_id: String = row.get(0)?;
                // Both lists are ordered by user id: walk them together.
                while at < users.len() && users[at].user_id < user_id {
                    at += 1;
                }
                if let Some(user) = users.get_mut(at).filter(|u| u.user_id == user_id) {
                    user.devices.push(TrackedDevice {
                        device_id: row.get(1)?,
                        curve25519: row.get(2)?,
                        ed25519: row.get(3)?,
                        keys: row.get(4)?,
                    });
                }
            }
            Ok(users)
        })
        .await
    }

    /// The client's open room-key requests.
    pub async fn crypto_key_requests(&self, account_id: i64) -> Result<Vec<KeyRequestRow>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT room_id, session_id, request_id, sender_key, created_ms
                     FROM app_key_requests WHERE account_id = ?1",
                )?
                .query_map([account_id], |row| {
                    Ok(KeyRequestRow {
                        room_id: row.get(0)?,
                        session_id: row.get(1)?,
                        request_id: row.get(2)?,
                        sender_key: row.get(3)?,
                        created_ms: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }
}

fn apply(conn: &Connection, account_id: i64, changes: CryptoWrite) -> Result<()> {
    let CryptoWrite {
        account,
        device_keys_published,
        olm_sessions,
        inbound_group_sessions,
        seen,
        outbound,
        shares,
        users,
        key_requests,
        key_requests_done,
    } = changes;
    if let Some(pickle) = account {
        conn.execute(
            "UPDATE app_crypto_accounts SET pickle = ?2 WHERE account_id = ?1",
            params![account_id, pickle],
        )?;
    }
    if device_keys_published {
        conn.execute(
            "UPDATE app_crypto_accounts SET device_keys_published = 1 WHERE account_id = ?1",
            [account_id],
        )?;
    }
    if !olm_sessions.is_empty() {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO app_olm_sessions
                 (account_id, sender_key, session_id, pickle, created_ms, last_used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account_id, sender_key, session_id) DO UPDATE
             SET pickle = excluded.pickle, last_used_ms = excluded.last_used_ms",
        )?;
        for s in olm_sessions {
            upsert.execute(params![
                account_id,
                s.sender_key,
                s.session_id,
                s.pickle,
                s.created_ms,
                s.last_used_ms
            ])?;
        }
    }
    if !inbound_group_sessions.is_empty() {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO app_inbound_group_sessions
                 (account_id, room_id, session_id, sender_key, signing_key, sender_user,
                  first_known_index, forwarding_chain, pickle, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (account_id, room_id, session_id) DO UPDATE
             SET sender_key = excluded.sender_key, signing_key = excluded.signing_key,
                 sender_user = excluded.sender_user,
                 first_known_index = excluded.first_known_index,
                 forwarding_chain = excluded.forwarding_chain, pickle = excluded.pickle,
                 received_ms = excluded.received_ms, backed_up = 0",
        )?;
        for s in inbound_group_sessions {
            upsert.execute(params![
                account_id,
                s.room_id,
                s.session_id,
                s.sender_key,
                s.signing_key,
                s.sender_user,
                s.first_known_index,
                s.forwarding_chain,
                s.pickle,
                s.received_ms
            ])?;
        }
    }
    if !seen.is_empty() {
        let mut insert = conn.prepare_cached(
            "INSERT INTO app_megolm_seen
                 (account_id, room_id, session_id, message_index, event_id, origin_server_ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
        )?;
        for s in seen {
            insert.execute(params![
                account_id,
                s.room_id,
                s.session_id,
                s.message_index,
                s.event_id,
                s.origin_server_ts
            ])?;
        }
    }
    for OutboundWrite { session, new } in outbound {
        if new {
            conn.execute(
                "DELETE FROM app_outbound_shares WHERE account_id = ?1 AND room_id = ?2",
                params![account_id, session.room_id],
            )?;
        }
        conn.prepare_cached(
            "INSERT INTO app_outbound_group_sessions
                 (account_id, room_id, session_id, pickle, created_ms, message_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account_id, room_id) DO UPDATE
             SET session_id = excluded.session_id, pickle = excluded.pickle,
                 created_ms = excluded.created_ms, message_count = excluded.message_count",
        )?
        .execute(params![
            account_id,
            session.room_id,
            session.session_id,
            session.pickle,
            session.created_ms,
            session.message_count
        ])?;
    }
    if !shares.is_empty() {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO app_outbound_shares
                 (account_id, room_id, session_id, user_id, device_id, curve25519, message_index)
             SELECT account_id, room_id, session_id, ?3, ?4, ?5, ?6
             FROM app_outbound_group_sessions WHERE account_id = ?1 AND room_id = ?2
             ON CONFLICT (account_id, room_id, user_id, device_id) DO UPDATE
             SET session_id = excluded.session_id, curve25519 = excluded.curve25519,
                 message_index = excluded.message_index",
        )?;
        for (room_id, share) in shares {
            upsert.execute(params![
                account_id,
                room_id,
                share.user_id,
                share.device_id,
                share.curve25519,
                share.message_index
            ])?;
        }
    }
    for user in users {
        conn.prepare_cached(
            "INSERT INTO app_tracked_users (account_id, user_id, outdated) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id, user_id) DO UPDATE SET outdated = excluded.outdated",
        )?
        .execute(params![account_id, user.user_id, user.outdated])?;
        if let Some(devices) = user.devices {
            conn.prepare_cached("DELETE FROM app_devices WHERE account_id = ?1 AND user_id = ?2")?
                .execute(params![account_id, user.user_id])?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO app_devices
                     (account_id, user_id, device_id, curve25519, ed25519, keys)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for d in devices {
                insert.execute(params![
                    account_id,
                    user.user_id,
                    d.device_id,
                    d.curve25519,
                    d.ed25519,
                    d.keys
                ])?;
            }
        }
    }
    for r in key_requests {
        conn.prepare_cached(
            "INSERT INTO app_key_requests
                 (account_id, room_id, session_id, request_id, sender_key, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (account_id, room_id, session_id) DO NOTHING",
        )?
        .execute(params![
            account_id,
            r.room_id,
            r.session_id,
            r.request_id,
            r.sender_key,
            r.created_ms
        ])?;
    }
    for (room_id, session_id) in key_requests_done {
        conn.prepare_cached(
            "DELETE FROM app_key_requests
             WHERE account_id = ?1 AND room_id = ?2 AND session_id = ?3",
        )?
        .execute(params![account_id, room_id, session_id])?;
    }
    Ok(())
}

/// The backup version a client uploads its room keys to (see migration 0011).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBackupRow {
    pub version: String,
    /// Unpadded base64.
    pub public_key: String,
    /// The private key, encrypted by the client.
    pub private_key: String,
}

impl Store {
    /// The backup version the client uploads to, if any.
    pub async fn crypto_key_backup(&self, account_id: i64) -> Result<Option<KeyBackupRow>> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT version, public_key, private_key FROM app_key_backup
                     WHERE account_id = ?1",
                    [account_id],
                    |row| {
                        Ok(KeyBackupRow {
                            version: row.get(0)?,
                            public_key: row.get(1)?,
                            private_key: row.get(2)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Makes `backup` the version the client uploads to. Unless it is the version already
    /// kept, every session becomes pending: the new version holds none of them yet.
    pub async fn crypto_set_key_backup(&self, account_id: i64, backup: KeyBackupRow) -> Result<()> {
        self.write(move |conn| {
            let current: Option<String> = conn
                .query_row(
                    "SELECT version FROM app_key_backup WHERE account_id = ?1",
                    [account_id],
                    |row| row.get(0),
                )
                .optional()?;
            conn.execute(
                "INSERT INTO app_key_backup (account_id, version, public_key, private_key)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account_id) DO UPDATE
                 SET version = excluded.version, public_key = excluded.public_key,
                     private_key = excluded.private_key",
                params![
                    account_id,
                    backup.version,
                    backup.public_key,
                    backup.private_key
                ],
            )?;
            if current.as_deref() != Some(backup.version.as_str()) {
                conn.execute(
                    "UPDATE app_inbound_group_sessions SET backed_up = 0 WHERE account_id = ?1",
                    [account_id],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Forgets the backup version (it was deleted or replaced on the server).
    pub async fn crypto_clear_key_backup(&self, account_id: i64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM app_key_backup WHERE account_id = ?1",
                [account_id],
            )?;
            conn.execute(
                "UPDATE app_inbound_group_sessions SET backed_up = 0 WHERE account_id = ?1",
                [account_id],
            )?;
            Ok(())
        })
        .await
    }

    /// The inbound sessions not in the backup yet.
    pub async fn crypto_backup_pending(
        &self,
        account_id: i64,
    ) -> Result<Vec<InboundGroupSessionRow>> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT room_id, session_id, sender_key, signing_key, sender_user,
                            first_known_index, forwarding_chain, pickle, received_ms
                     FROM app_inbound_group_sessions WHERE account_id = ?1 AND backed_up = 0",
                )?
                .query_map([account_id], |row| {
                    Ok(InboundGroupSessionRow {
                        room_id: row.get(0)?,
                        session_id: row.get(1)?,
                        sender_key: row.get(2)?,
                        signing_key: row.get(3)?,
                        sender_user: row.get(4)?,
                        first_known_index: row.get(5)?,
                        forwarding_chain: row.get(6)?,
                        pickle: row.get(7)?,
                        received_ms: row.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    /// Marks sessions (room id, session id, first known index) as uploaded. A row whose first
    /// known index changed meanwhile (a better copy arrived) stays pending, so it is uploaded
    /// again.
    pub async fn crypto_mark_backed_up(
        &self,
        account_id: i64,
        sessions: Vec<(String, String, i64)>,
    ) -> Result<()> {
        self.write(move |conn| {
            let mut mark = conn.prepare_cached(
                "UPDATE app_inbound_group_sessions SET backed_up = 1
                 WHERE account_id = ?1 AND room_id = ?2 AND session_id = ?3
                   AND first_known_index = ?4",
            )?;
            for (room_id, session_id, first_known_index) in sessions {
                mark.execute(params![account_id, room_id, session_id, first_known_index])?;
            }
            Ok(())
        })
        .await
    }

    /// How many inbound sessions are (backed up, pending).
    pub async fn crypto_backup_counts(&self, account_id: i64) -> Result<(u64, u64)> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COALESCE(SUM(backed_up = 1), 0), COALESCE(SUM(backed_up = 0), 0)
                 FROM app_inbound_group_sessions WHERE account_id = ?1",
                [account_id],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?.max(0) as u64,
                        row.get::<_, i64>(1)?.max(0) as u64,
                    ))
                },
            )?)
        })
        .await
    }
}
