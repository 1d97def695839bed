//! Restoring a device from its backup server onto a new, empty data folder (ARCHITECTURE.md "Backup
//! server and mailbox"): the recovery key finds and opens the sealed identity (`identity.rs`); the
//! node then starts as that server, takes its replica back as the subscriber, imports the PDUs, and
//! signs the app's client in as the same owner and device, whose room keys come back from the key
//! backup.
//!
//! Limits: the replica holds PDUs, not the old device's state decisions. They are imported in
//! depth order as accepted, each room's state folded over them in that order: right for linear
//! histories (what a small room mostly is), approximate where the old room forked (no state
//! resolution here), and events the old device had rejected come back as accepted. Local-only
//! data (read markers, account data other than the app's device, media, Olm sessions) is not
//! in the backup.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::http::Method;
use hyphae_p2p::{Identity, Multiaddr};
use hyphae_store::{AcceptedPdu, BackupKey, StateSnapshot, Store};
use ruma::{CanonicalJsonObject, OwnedServerName, RoomVersionId};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::identity::{self, IdentityBlob};
use super::{BackupError, IDENTITY_PATH, REPLICA_PATH};
use crate::app::RecoveryKey;
use crate::config::Config;
use crate::federation::FederationError;
use crate::node::Node;
use crate::rooms::{Pdu, membership_of, verify_pdu};

/// PDUs per replica page while restoring.
const PAGE: u32 = 500;

/// A device restored from its backup server, running.
pub struct Restored {
    pub node: Node,
    pub rooms: usize,
    /// PDUs imported into the store.
    pub pdus: usize,
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
    let filled = fill(&filler, server, addrs, &blob).await;
    filler.shutdown().await;
    let (rooms, pdus) = filled?;

    let node = Node::start(config)
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?;
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
        rooms,
        pdus,
        room_keys,
        key_backup_error,
    })
}

/// Takes the replica back and what the app's client needs into the restored node's store;
/// (rooms, PDUs) imported.
async fn fill(
    node: &Node,
    server: &OwnedServerName,
    addrs: &[Multiaddr],
    blob: &IdentityBlob,
) -> Result<(usize, usize), BackupError> {
    dial(node, server, addrs).await?;
    let fetching = Instant::now();
    let mut pdus = Vec::new();
    let mut from = 0i64;
    loop {
        let path = format!("{REPLICA_PATH}?from={from}&limit={PAGE}");
        let answer: Value = node
            .app_state()
            .federation
            .request(server, Method::GET, &path, None)
            .await?;
        if let Some(page) = answer["pdus"].as_array() {
            pdus.extend(page.iter().cloned());
        }
        match answer["next_from"].as_i64() {
            Some(next) if next > from => from = next,
            _ => break,
        }
    }
    let fetched = (pdus.len(), fetching.elapsed());
    let store = node.store();
    let importing = Instant::now();
    let imported = import(store, pdus).await?;
    tracing::info!(
        pdus = fetched.0,
        fetch_ms = fetched.1.as_millis() as u64,
        import_ms = importing.elapsed().as_millis() as u64,
        "replica taken back"
    );
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

/// Checks the replica's PDUs (signatures and hashes: the backup server cannot forge any) and
/// stores them room by room, in depth order, as accepted events with the state folded over
/// them; (rooms, PDUs).
/// A room's checked PDUs, in the replica's order.
type CheckedRoom = (String, RoomVersionId, Vec<Pdu>);

async fn import(store: &Store, pdus: Vec<Value>) -> Result<(usize, usize), BackupError> {
    // Checking signatures is most of a restore's work: off the runtime, on every core.
    let rooms = tokio::task::spawn_blocking(move || check_all(pdus))
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))?;
    let mut total = 0;
    let room_count = rooms.len();
    for (room_id, version, mut pdus) in rooms {
        // Stable: the replica's order (the old device's) breaks ties.
        pdus.sort_by_key(|p| u64::from(p.depth));
        let mut seen = std::collections::HashSet::new();
        let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut accepted = Vec::with_capacity(pdus.len());
        for pdu in pdus {
            if !seen.insert(pdu.event_id.clone()) {
                continue;
            }
            let before = Arc::new(StateSnapshot::new(
                &room_id,
                state
                    .iter()
                    .map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone()))
                    .collect(),
            ));
            if let Some(key) = &pdu.state_key {
                state.insert(
                    (pdu.kind.to_string(), key.clone()),
                    pdu.event_id.to_string(),
                );
            }
            let membership = (pdu.kind == ruma::events::TimelineEventType::RoomMember)
                .then(|| membership_of(&pdu.content))
                .flatten();
            accepted.push(AcceptedPdu {
                pdu: pdu
                    .to_new_pdu(&room_id)
                    .map_err(|e| BackupError::Restore(e.to_string()))?,
                membership,
                transaction: None,
                // Others have these already: nothing is sent again.
                destinations: Vec::new(),
                state_before: Some(before),
                state_after: None,
                resolved_state: None,
                // A joined room's history before the join is not in the replica.
                prev_may_be_missing: true,
            });
        }
        total += accepted.len();
        store
            .create_room_with(room_id, version.to_string(), accepted)
            .await?;
    }
    Ok((room_count, total))
}

/// Groups the replica's PDUs by room and checks them; those that do not check (or whose room's
/// create event is missing) are left out, logged.
fn check_all(pdus: Vec<Value>) -> Vec<CheckedRoom> {
    let is_create = |p: &Value| p["type"] == "m.room.create" && p["state_key"] == "";
    let mut rooms: Vec<CheckedRoom> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut skipped = 0usize;
    // Create events first: they say how to check the rest of their room.
    let (creates, rest): (Vec<Value>, Vec<Value>) = pdus.into_iter().partition(is_create);
    for value in creates {
        let version = value["content"]["room_version"]
            .as_str()
            .unwrap_or("1")
            .to_owned();
        let Ok(version) = RoomVersionId::try_from(version.as_str()) else {
            skipped += 1;
            continue;
        };
        let Some((room_id, pdu)) =
            checked(&version, value).and_then(|pdu| Some((pdu.room_id()?.to_string(), pdu)))
        else {
            skipped += 1;
            continue;
        };
        if index.contains_key(&room_id) {
            continue;
        }
        index.insert(room_id.clone(), rooms.len());
        rooms.push((room_id, version, vec![pdu]));
    }
    let versions: Vec<RoomVersionId> = rooms.iter().map(|(_, v, _)| v.clone()).collect();
    let checked_rest = crate::app::crypto::parallel_map(rest, |value| {
        // A room whose create event the replica lacks cannot be checked.
        let i = *value["room_id"].as_str().and_then(|r| index.get(r))?;
        Some((i, checked(&versions[i], value)?))
    });
    for item in checked_rest {
        match item {
            Some((i, pdu)) => rooms[i].2.push(pdu),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "replica PDUs that could not be checked were not restored"
        );
    }
    rooms
}

fn checked(version: &RoomVersionId, value: Value) -> Option<Pdu> {
    let json: CanonicalJsonObject = serde_json::from_value(value).ok()?;
    match verify_pdu(version, json) {
        Ok(pdu) => Some(pdu),
        Err(e) => {
            tracing::warn!(error = %e, "a replica PDU does not check; not restored");
            None
        }
    }
}
