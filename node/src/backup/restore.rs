//! Restoring a device from its backup server onto a new, empty data folder (ARCHITECTURE.md "Backup
//! server and mailbox"): the recovery key finds and opens the sealed identity (`identity.rs`); the
//! node then starts as that server, takes its replica back as the subscriber, imports the PDUs, and
//! signs the app's client in as the same owner and device, whose room keys come back from the key
//! backup.
//!
//! Nothing comes back that the old device did not accept, and nothing the backup server made:
//! the replica holds only what the device accepted, each entry with the device's tag (`tag.rs`,
//! keyed by a secret only the sealed identity holds), and an entry without a valid tag is
//! refused. Every event is then authorised again as if it had just arrived
//! (`rooms/restore.rs`: the auth rules, the state before it, state resolution where branches
//! meet). Each restored room is then to be confirmed: a server of its members brings it up to
//! date (in the background, and again when the app sends in it) before the app shares a room
//! key there; while no member's server can be reached, the app sends nothing encrypted in that
//! room (it could not deliver it either).
//!
//! Limits: the server can leave entries out (a restore then misses them; an event whose auth
//! events or recorded state went missing is left out too), and it can serve an older sealed
//! identity than the newest: the restore reports which sealing it got (`identity_version`,
//! `identity_sealed_ms`), but a new device has nothing to compare them with. Local-only data
//! (read markers, account data other than the app's device, media, Olm sessions) is not in the
//! backup.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use axum::http::Method;
use hyphae_p2p::{Identity, Multiaddr};
use hyphae_store::BackupKey;
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::identity::{self, IdentityBlob};
use super::tag::{ReplicaKey, Status, Tag};
use super::{BackupError, IDENTITY_PATH, REPLICA_PATH};
use crate::app::RecoveryKey;
use crate::config::Config;
use crate::federation::FederationError;
use crate::node::Node;
use crate::rooms::{Kept, ReplicaEvent, RoomRestored, verify_pdu};

/// PDUs per replica page while restoring.
const PAGE: u32 = 500;

/// A device restored from its backup server, running.
pub struct Restored {
    pub node: Node,
    pub rooms: usize,
    /// PDUs taken back: accepted again by the auth rules.
    pub pdus: usize,
    /// Replica entries refused unread: without a valid tag of this device (added or altered by
    /// the backup server, or kept from before tags), or whose signatures or hashes do not check.
    pub refused: usize,
    /// Events the auth rules refused on the way back, or left out because the state before
    /// them was not all there.
    pub rejected: usize,
    /// Which sealing of the identity the backup server gave (this device counts them; 0 for a
    /// blob sealed before they were counted), and when it was sealed (ms since the epoch; 0
    /// likewise). A server can keep serving an older one: this is how a person can tell.
    pub identity_version: u64,
    pub identity_sealed_ms: u64,
    /// Room keys the app's client took from the key backup.
    pub room_keys: usize,
    /// Why the room keys could not be restored, if they could not (the rest is restored; the
    /// app can try `restore_key_backup` again).
    pub key_backup_error: Option<String>,
}

/// Restores the device whose identity `server` (a backup server's name, dialled at `addrs`)
/// keeps for `recovery_key` into `config.data_dir`, which must be empty or absent, and starts
/// it: the same server name, owner and app device, its rooms and history, its room keys; it
/// stays subscribed to that server. A wrong recovery key, or none known to the server, is an
/// error and writes nothing; so is a data folder that is not empty.
pub async fn restore_from_backup(
    mut config: Config,
    server: &str,
    addrs: Vec<Multiaddr>,
    recovery_key: &str,
) -> Result<Restored, BackupError> {
    let started = Instant::now();
    let dir = config.data_dir.clone();
    ensure_empty(&dir)?;
    let recovery = RecoveryKey::decode(recovery_key)
        .map_err(|e| BackupError::MalformedRecoveryKey(e.to_string()))?;
    let name = OwnedServerName::try_from(server)
        .map_err(|e| BackupError::BadServerName(server.to_owned(), e.to_string()))?;
    let p2p = config.p2p.clone().ok_or(BackupError::Offline)?;

    let sealed = fetch_identity(p2p, &name, &addrs, &recovery).await?;
    let blob = identity::open(&sealed, &recovery)?;
    let secret = decode_secret(&blob.identity_secret)?;
    // An owner: the same one as before (the localpart is part of the user id others know).
    if config.owner.is_some() {
        config.owner = Some(blob.localpart.clone());
    }
    let restored = restore_into(config, &name, &addrs, blob, &secret, recovery_key).await;
    if restored.is_err() {
        // The folder was empty: what is there now is this restore's, half done.
        remove_contents(&dir);
    }
    if let Ok(r) = &restored {
        tracing::info!(
            server_name = r.node.server_name(),
            rooms = r.rooms,
            pdus = r.pdus,
            refused = r.refused,
            rejected = r.rejected,
            identity_version = r.identity_version,
            room_keys = r.room_keys,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restored from the backup server"
        );
    }
    restored
}

fn ensure_empty(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            Some(_) => Err(BackupError::NotEmpty(dir.to_owned())),
            None => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BackupError::Restore(format!(
            "cannot read {}: {e}",
            dir.display()
        ))),
    }
}

fn remove_contents(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "cannot clean up after a failed restore");
        }
    }
}

fn decode_secret(hex_secret: &str) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    let bytes = Zeroizing::new(
        hex::decode(hex_secret)
            .map_err(|_| BackupError::Restore("the identity secret is not hex".into()))?,
    );
    let mut secret = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(BackupError::Restore(
            "the identity secret is not 32 bytes".into(),
        ));
    }
    secret.copy_from_slice(&bytes);
    Ok(secret)
}

/// Asks the backup server for the sealed identity, from a throwaway node (in a temporary folder,
/// removed after): the device has no identity of its own yet.
async fn fetch_identity(
    mut p2p: hyphae_p2p::TransportConfig,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
    recovery: &[u8; 32],
) -> Result<String, BackupError> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| BackupError::Restore(format!("random: {e}")))?;
    let tmp = std::env::temp_dir().join(format!("hyphae-restore-{}", hex::encode(suffix)));
    // Only to ask one question: no fixed port (the real node takes it next), no announcing.
    p2p.listen = vec![
        "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|e| BackupError::Restore(format!("listen address: {e}")))?,
    ];
    p2p.mdns.enabled = false;
    let throwaway = Node::start(Config {
        client_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        p2p: Some(p2p),
        ..Config::new(&tmp)
    })
    .await
    .map_err(|e| BackupError::Restore(format!("cannot start a node to ask with: {e}")));
    let answer = match throwaway {
        Ok(node) => {
            let answer = ask_identity(&node, server, addrs, recovery).await;
            node.shutdown().await;
            answer
        }
        Err(e) => Err(e),
    };
    if let Err(e) = std::fs::remove_dir_all(&tmp) {
        tracing::warn!(path = %tmp.display(), error = %e, "cannot remove the restore's temporary folder");
    }
    answer
}

async fn ask_identity(
    node: &Node,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
    recovery: &[u8; 32],
) -> Result<String, BackupError> {
    dial(node, server, addrs).await?;
    let path = format!("{IDENTITY_PATH}/{}", identity::lookup_id(recovery));
    let answer: Result<Value, _> = node
        .app_state()
        .federation
        .request(server, Method::GET, &path, None)
        .await;
    match answer {
        Ok(answer) => answer["blob"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BackupError::BadResponse("an identity without a blob".into())),
        Err(FederationError::Refused { errcode, .. }) if errcode == "M_NOT_FOUND" => {
            Err(BackupError::NoIdentity)
        }
        Err(e) => Err(e.into()),
    }
}

async fn dial(
    node: &Node,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
) -> Result<(), BackupError> {
    let peer = hyphae_p2p::peer_id_for_server_name(server.as_str())
        .map_err(|e| BackupError::BadServerName(server.to_string(), e.to_string()))?;
    node.transport()
        .ok_or(BackupError::Offline)?
        .dial(peer, addrs.to_vec())
        .await
        .map_err(|e| BackupError::Unreachable(e.to_string()))
}

async fn restore_into(
    config: Config,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
    blob: IdentityBlob,
    secret: &[u8; 32],
    recovery_key: &str,
) -> Result<Restored, BackupError> {
    let dir = config.data_dir.clone();
    let secret_copy = Zeroizing::new(*secret);
    let identity =
        tokio::task::spawn_blocking(move || Identity::write_restored(&dir, &secret_copy))
            .await
            .map_err(|e| BackupError::Restore(e.to_string()))?
            .map_err(|e| BackupError::Restore(e.to_string()))?;
    if identity.server_name() != blob.server_name {
        return Err(BackupError::Restore(format!(
            "the backed-up secret names {} and not {}",
            identity.server_name(),
            blob.server_name
        )));
    }
    // First without the owner's client: the store is filled before the client's first sync.
    let filler = Node::start(Config {
        owner: None,
        extra_routes: None,
        backup_server: false,
        ..config.clone()
    })
    .await
    .map_err(|e| BackupError::Restore(e.to_string()))?;
    let filled = fill(&filler, server, addrs, &blob, secret).await;
    filler.shutdown().await;
    let imported = filled?;

    let node = Node::start(config)
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?;
    confirm_in_background(&node);
    let (room_keys, key_backup_error) = match node.app() {
        Some(app) => match app.restore_key_backup(recovery_key).await {
            Ok(n) => (n, None),
            Err(e) => {
                tracing::warn!(error = %e, "the room keys could not be restored");
                (0, Some(e.to_string()))
            }
        },
        None => (0, None),
    };
    Ok(Restored {
        node,
        rooms: imported.rooms,
        pdus: imported.restored.accepted,
        refused: imported.refused,
        rejected: imported.restored.rejected + imported.restored.left_out,
        identity_version: blob.sealed_version,
        identity_sealed_ms: blob.sealed_ms,
        room_keys,
        key_backup_error,
    })
}

/// Brings each restored room up to date from its members' servers, once, in the background
/// (the app asks again before it shares a room key in one still to confirm).
fn confirm_in_background(node: &Node) {
    let state = node.app_state().clone();
    tokio::spawn(async move {
        let rooms = match state.store.rooms_to_confirm().await {
            Ok(rooms) => rooms,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the restored rooms to confirm");
                return;
            }
        };
        for room in rooms {
            let Ok(room_id) = ruma::RoomId::parse(&room) else {
                continue;
            };
            match state.rooms.confirm_restored(&room_id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(%room_id, "no member's server reached yet to bring a restored room up to date")
                }
                Err(e) => tracing::info!(%room_id, error = %e, "could not confirm a restored room"),
            }
        }
    });
}

/// What a replica came back as.
struct Imported {
    rooms: usize,
    refused: usize,
    restored: RoomRestored,
}

/// Takes the replica back and what the app's client needs into the restored node's store.
async fn fill(
    node: &Node,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
    blob: &IdentityBlob,
    secret: &[u8; 32],
) -> Result<Imported, BackupError> {
    dial(node, server, addrs).await?;
    let fetching = Instant::now();
    let mut entries = Vec::new();
    let mut from = 0i64;
    loop {
        let path = format!("{REPLICA_PATH}?from={from}&limit={PAGE}");
        let answer: Value = node
            .app_state()
            .federation
            .request(server, Method::GET, &path, None)
            .await?;
        let tags = answer["tags"].as_array();
        if let Some(page) = answer["pdus"].as_array() {
            for (i, pdu) in page.iter().enumerate() {
                let tag = tags.and_then(|tags| tags.get(i)).cloned();
                entries.push((pdu.clone(), tag.unwrap_or(Value::Null)));
            }
        }
        match answer["next_from"].as_i64() {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    let fetched = (entries.len(), fetching.elapsed());
    let store = node.store();
    let importing = Instant::now();
    let imported = import(node, ReplicaKey::new(secret), entries).await?;
    tracing::info!(
        pdus = fetched.0,
        fetch_ms = fetched.1.as_millis() as u64,
        import_ms = importing.elapsed().as_millis() as u64,
        "replica taken back"
    );
    // The next sealing of the identity counts on from the one restored.
    store
        .identity_sealed(i64::try_from(blob.sealed_version).unwrap_or(i64::MAX))
        .await?;
    // Subscribed as before (the server kept the subscription under this name); what this
    // device stores from now on is replicated.
    store
        .resume_backup_subscription(
            server.to_string(),
            addrs.iter().map(ToString::to_string).collect(),
        )
        .await?;

    let localpart = blob.localpart.clone();
    if store.account(localpart.clone()).await?.is_none() {
        store.create_account(localpart.clone(), None).await?;
    }
    store
        .set_account_data(
            localpart.clone(),
            None,
            crate::app::DEVICE_DATA.into(),
            json!({"device_id": blob.device_id}).to_string(),
        )
        .await?;
    if let Some(pickle) = &blob.account_pickle {
        let user_id = format!("@{localpart}:{}", node.server_name());
        store
            .create_crypto_account(user_id, blob.device_id.clone(), pickle.clone())
            .await?;
    }
    if let Some(backup) = &blob.key_backup {
        let version = store
            .create_backup_version(localpart.clone(), backup.algorithm.clone())
            .await?;
        // Blobs sealed before the server kept the entries one by one carry them inside.
        let mut keys: Vec<BackupKey> = backup
            .keys
            .iter()
            .map(|k| BackupKey {
                room_id: k.room_id.clone(),
                session_id: k.session_id.clone(),
                first_message_index: k.first_message_index,
                forwarded_count: k.forwarded_count,
                is_verified: k.is_verified,
                data: k.data.clone(),
            })
            .collect();
        if let Some(old_version) = &backup.version {
            let federation = &node.app_state().federation;
            keys.extend(super::room_keys::fetch(federation, server, old_version).await?);
        }
        store
            .put_backup_keys(localpart.clone(), version.clone(), keys.clone())
            .await?;
        // The server has them all already, under the old version's name: sending them again
        // (under the new one) replaces them there, so the quota is not counted twice.
        tracing::info!(keys = keys.len(), "room-key backup taken back");
    }
    Ok(imported)
}

/// A room's checked entries, in the replica's order.
type CheckedRoom = (OwnedRoomId, RoomVersionId, Vec<ReplicaEvent>);

/// Checks the replica's entries (the device's tags, signatures and hashes) and takes each
/// room back through the auth rules (`Rooms::restore_room`); each room is then to confirm.
async fn import(
    node: &Node,
    key: ReplicaKey,
    entries: Vec<(Value, Value)>,
) -> Result<Imported, BackupError> {
    // Checking signatures is most of the check's work: off the runtime, on every core.
    let (rooms, refused) = tokio::task::spawn_blocking(move || check_all(entries, &key))
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?;
    let mut imported = Imported {
        rooms: 0,
        refused,
        restored: RoomRestored::default(),
    };
    let state = node.app_state();
    let mut restored_rooms = Vec::with_capacity(rooms.len());
    for (room_id, version, events) in rooms {
        let outcome = state
            .rooms
            .restore_room(&room_id, &version, events)
            .await
            .map_err(|e| BackupError::Restore(format!("{room_id}: {e}")))?;
        imported.rooms += 1;
        imported.restored.accepted += outcome.accepted;
        imported.restored.rejected += outcome.rejected;
        imported.restored.left_out += outcome.left_out;
        restored_rooms.push(room_id.to_string());
    }
    state.store.rooms_to_confirm_add(restored_rooms).await?;
    Ok(imported)
}

/// Groups the replica's entries by room and checks them; those that do not check (no valid
/// tag, a bad signature or hash, or a room whose create event is missing) are left out,
/// logged, and counted.
fn check_all(entries: Vec<(Value, Value)>, key: &ReplicaKey) -> (Vec<CheckedRoom>, usize) {
    let is_create = |(p, _): &(Value, Value)| p["type"] == "m.room.create" && p["state_key"] == "";
    let mut rooms: Vec<CheckedRoom> = Vec::new();
    let mut index: HashMap<OwnedRoomId, usize> = HashMap::new();
    let mut refused = 0usize;
    // Create events first: they say how to check the rest of their room.
    let (creates, rest): (Vec<_>, Vec<_>) = entries.into_iter().partition(is_create);
    for (value, tag) in creates {
        let version = value["content"]["room_version"]
            .as_str()
            .unwrap_or("1")
            .to_owned();
        let Ok(version) = RoomVersionId::try_from(version.as_str()) else {
            refused += 1;
            continue;
        };
        let Some(event) = checked(&version, key, value, tag) else {
            refused += 1;
            continue;
        };
        let Some(room_id) = event.pdu.room_id() else {
            refused += 1;
            continue;
        };
        if index.contains_key(&room_id) {
            continue;
        }
        index.insert(room_id.clone(), rooms.len());
        rooms.push((room_id, version, vec![event]));
    }
    let versions: Vec<RoomVersionId> = rooms.iter().map(|(_, v, _)| v.clone()).collect();
    let checked_rest = crate::app::crypto::parallel_map(rest, |(value, tag)| {
        // A room whose create event the replica lacks cannot be checked.
        let i = *value["room_id"]
            .as_str()
            .and_then(|r| ruma::RoomId::parse(r).ok())
            .and_then(|r| index.get(&r))?;
        Some((i, checked(&versions[i], key, value, tag)?))
    });
    for item in checked_rest {
        match item {
            Some((i, event)) => rooms[i].2.push(event),
            None => refused += 1,
        }
    }
    if refused > 0 {
        tracing::warn!(
            refused,
            "replica entries without a valid tag of this device, or that do not check, were not restored"
        );
    }
    (rooms, refused)
}

/// An entry whose PDU checks (signatures, hashes) and whose tag is this device's for it.
fn checked(
    version: &RoomVersionId,
    key: &ReplicaKey,
    value: Value,
    tag: Value,
) -> Option<ReplicaEvent> {
    let Ok(tag) = serde_json::from_value::<Tag>(tag) else {
        tracing::warn!(event = %value["type"], "a replica entry without a tag; not restored");
        return None;
    };
    let json: CanonicalJsonObject = serde_json::from_value(value).ok()?;
    let pdu = match verify_pdu(version, json) {
        Ok(pdu) => pdu,
        Err(e) => {
            tracing::warn!(error = %e, "a replica PDU does not check; not restored");
            return None;
        }
    };
    if !key.verify(pdu.event_id.as_str(), &tag) {
        tracing::warn!(event_id = %pdu.event_id, "a replica entry this device did not tag; not restored");
        return None;
    }
    let kept = match tag.status {
        Status::Outlier => Kept::Outlier,
        Status::History => Kept::History,
        Status::Timeline => Kept::Timeline(match tag.state_before {
            Some(ids) => Some(
                ids.iter()
                    .map(|id| OwnedEventId::try_from(id.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?,
            ),
            None => None,
        }),
    };
    Some(ReplicaEvent { pdu, kept })
}
