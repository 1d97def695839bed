//! The node's one ed25519 key: its libp2p identity and its Matrix signing key. Its Matrix server
//! name is the lowercase hex of the public key, so names and peer ids map to each other with no
//! lookup.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p_identity::{Keypair, PeerId, PublicKey, ed25519};
use zeroize::Zeroizing;

/// The identity key's file inside the data folder: the 32-byte ed25519 secret, mode 0600.
pub const IDENTITY_FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the identity key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the identity key {path} is damaged ({reason}); restore it from a backup")]
    Damaged { path: PathBuf, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{0:?} is not a key-derived server name (64 lowercase hex characters)")]
    NotKeyDerived(String),
    #[error("peer {0} does not have an ed25519 key")]
    NotEd25519(PeerId),
    /// A small-order point: anyone can make signatures that verify with it, so it names nobody.
    #[error("{0} is a weak ed25519 key")]
    WeakKey(String),
}

#[derive(Clone)]
pub struct Identity {
    keypair: ed25519::Keypair,
    server_name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the key from `data_dir`, or creates it there (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let mode = fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                        "identity key is readable by others; setting it to 0600");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io)?;
                }
                let mut secret: Zeroizing<[u8; 32]> =
                    Zeroizing::new(bytes.as_slice().try_into().map_err(|_| {
                        IdentityError::Damaged {
                            path: path.clone(),
                            reason: format!("{} bytes instead of 32", bytes.len()),
                        }
                    })?);
                let secret = ed25519::SecretKey::try_from_bytes(&mut *secret).map_err(|e| {
                    IdentityError::Damaged {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                Ok(Identity::from_keypair(secret.into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keypair = ed25519::Keypair::generate();
                match write_new_key(&path, keypair.secret().as_ref()) {
                    Ok(()) => {}
                    // Another process created it first: that key is the node's.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Identity::load_or_create(data_dir);
                    }
                    Err(e) => return Err(io(e)),
                }
                let identity = Identity::from_keypair(keypair);
                tracing::info!(server_name = %identity.server_name, "created a new identity key");
                Ok(identity)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes a key restored from a backup into `data_dir` (mode 0600, as a new key), so the
    /// node starts there as the server that key names. Refuses to replace an existing key: a
    /// restore never overwrites an identity.
    pub fn write_restored(data_dir: &Path, secret: &[u8; 32]) -> Result<Identity, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let mut bytes = Zeroizing::new(*secret);
        let key = ed25519::SecretKey::try_from_bytes(&mut *bytes).map_err(|e| {
            IdentityError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        fs::create_dir_all(data_dir).map_err(io)?;
        write_new_key(&path, secret).map_err(io)?;
        let identity = Identity::from_keypair(key.into());
        tracing::info!(server_name = %identity.server_name, "restored the identity key");
        Ok(identity)
    }

    fn from_keypair(keypair: ed25519::Keypair) -> Identity {
        let server_name = hex::encode(keypair.public().to_bytes());
        Identity {
            keypair,
            server_name,
        }
    }

    /// The Matrix server name: lowercase hex of the public key.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(&PublicKey::from(self.keypair.public()))
    }

    /// The key as libp2p takes it, for the swarm.
    pub fn libp2p_keypair(&self) -> Keypair {
        Keypair::from(self.keypair.clone())
    }

    /// The 32-byte ed25519 secret, for signing Matrix events and JSON with the same key.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(self.keypair.secret().as_ref());
        secret
    }

    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.keypair.public().to_bytes()
    }
}

/// Writes a new key file readable by its owner only, so it is never on disk with wider modes.
/// Returns `AlreadyExists` if a key appeared meanwhile (another process), never overwriting it.
fn write_new_key(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("key.tmp");
    // A leftover from a crash before the link: it holds no key anyone uses.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true) // never through a planted file or symlink
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(secret)?;
    file.sync_all()?;
    drop(file);
    // A hard link publishes the key only if no key file exists; file systems without hard
    // links (FAT on SD cards) fall back to a rename after a last check.
    let published = match fs::hard_link(&tmp, path) {
        Ok(()) => fs::remove_file(&tmp),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if path.exists() => Err(std::io::ErrorKind::AlreadyExists.into()),
        Err(_) => fs::rename(&tmp, path),
    };
    if published.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    published?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The peer id of the server named `server_name`; refuses anything but 64 lowercase hex
/// characters of a valid ed25519 key (upper case would be another, unverifiable name) that is
/// not weak.
pub fn peer_id_for_server_name(server_name: &str) -> Result<PeerId, NameError> {
    let not_key = || NameError::NotKeyDerived(server_name.to_owned());
    if server_name.len() != 64
        || !server_name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(not_key());
    }
    let bytes: [u8; 32] = hex::decode(server_name)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(not_key)?;
    if is_weak(&bytes) {
        return Err(NameError::WeakKey(server_name.to_owned()));
    }
    let key = ed25519::PublicKey::try_from_bytes(&bytes).map_err(|_| not_key())?;
    Ok(PeerId::from_public_key(&PublicKey::from(key)))
}

/// The server name a peer acts for, read off its (noise-authenticated) peer id.
pub fn server_name_of_peer(peer: &PeerId) -> Result<String, NameError> {
    let key = ed25519_key_of(peer).ok_or(NameError::NotEd25519(*peer))?;
    let name = hex::encode(key);
    if is_weak(&key) {
        return Err(NameError::WeakKey(name));
    }
    Ok(name)
}

/// The ed25519 public key a peer id carries, if it is one.
fn ed25519_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    // An ed25519 peer id is an identity multihash over the protobuf-encoded public key.
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(multihash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()?;
    Some(key.to_bytes())
}

/// Whether the ed25519 key `bytes` is a small-order point (or no point at all): with such a
/// key, signatures that verify can be made without any secret.
pub fn is_weak(bytes: &[u8; 32]) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .ok()
        .is_none_or(|key| key.is_weak())
}

/// Whether `peer` is an ed25519 peer with a weak key (other key types are not ours to judge).
pub(crate) fn is_weak_peer(peer: &PeerId) -> bool {
    ed25519_key_of(peer).is_some_and(|key| is_weak(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&path).unwrap().len(), 32);

        let again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.server_name(), again.server_name());
        assert_eq!(first.peer_id(), again.peer_id());
        assert_eq!(first.server_name().len(), 64);
        assert_eq!(first.server_name(), first.server_name().to_lowercase());
    }

    #[test]
    fn a_restored_key_is_the_same_server_and_never_overwrites_one() {
        let old = tempfile::tempdir().unwrap();
        let original = Identity::load_or_create(old.path()).unwrap();
        let new = tempfile::tempdir().unwrap();
        let folder = new.path().join("new device");
        let restored = Identity::write_restored(&folder, &original.secret_bytes()).unwrap();
        assert_eq!(restored.server_name(), original.server_name());
        let path = folder.join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            Identity::load_or_create(&folder).unwrap().server_name(),
            original.server_name()
        );
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(Identity::write_restored(&folder, &other.secret_bytes()).is_err());
        assert_eq!(
            Identity::load_or_create(&folder).unwrap().server_name(),
            original.server_name()
        );
    }

    #[test]
    fn names_and_peer_ids_map_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        let peer = identity.peer_id();
        assert_eq!(peer, identity.libp2p_keypair().public().to_peer_id());
        assert_eq!(
            peer_id_for_server_name(identity.server_name()).unwrap(),
            peer
        );
        assert_eq!(server_name_of_peer(&peer).unwrap(), identity.server_name());
    }

    #[test]
    fn names_that_are_not_exactly_a_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let name = Identity::load_or_create(dir.path())
            .unwrap()
            .server_name()
            .to_owned();
        for bad in [
            name.to_uppercase(),
            name[..63].to_owned(),
            format!("{name}0"),
            "matrix.org".to_owned(),
            format!("{name}:8448"),
            String::new(),
        ] {
            assert_eq!(
                peer_id_for_server_name(&bad),
                Err(NameError::NotKeyDerived(bad.clone())),
                "{bad:?}"
            );
        }
    }

    /// Small-order points (the identity, and points of order 2, 4 and 8): with any of these
    /// as the key, `(R, s) = (identity, 0)` verifies for every message under a non-strict
    /// check, so anyone could speak for such a server.
    pub(crate) const WEAK_KEYS: [&str; 4] = [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    ];

    #[test]
    fn weak_keys_are_refused_as_server_names_and_peers() {
        for weak in WEAK_KEYS {
            assert_eq!(
                peer_id_for_server_name(weak),
                Err(NameError::WeakKey(weak.to_owned())),
                "{weak}"
            );
            let bytes: [u8; 32] = hex::decode(weak).unwrap().try_into().unwrap();
            assert!(is_weak(&bytes));
            // A peer id can carry such a key (libp2p takes it): it names no server.
            let key = ed25519::PublicKey::try_from_bytes(&bytes).unwrap();
            let peer = PeerId::from_public_key(&PublicKey::from(key));
            assert!(is_weak_peer(&peer));
            assert_eq!(
                server_name_of_peer(&peer),
                Err(NameError::WeakKey(weak.to_owned()))
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        assert!(!is_weak_peer(&identity.peer_id()));
    }

    #[test]
    fn a_damaged_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"short").unwrap();
        let error = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("is damaged (5 bytes instead of 32)"),
            "{error}"
        );
    }

    #[test]
    fn a_stale_temporary_file_or_symlink_does_not_capture_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("identity.key.tmp")).unwrap();
        let identity = Identity::load_or_create(dir.path()).unwrap();
        assert!(
            !elsewhere.exists(),
            "the secret was written through the symlink"
        );
        assert!(!dir.path().join("identity.key.tmp").exists());
        let path = dir.path().join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().server_name(),
            identity.server_name()
        );
    }

    #[test]
    fn a_key_readable_by_others_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let name = Identity::load_or_create(dir.path())
            .unwrap()
            .server_name()
            .to_owned();
        let path = dir.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().server_name(),
            name
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
