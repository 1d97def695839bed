//! The node's Matrix signing key: the same ed25519 key as its libp2p identity, under the one key
//! id `ed25519:p2p`. Everything the node signs (events, key responses) goes through here, and
//! so does the key it tags its backup replica's entries with (`backup/tag.rs`), derived from the
//! same secret.

use std::sync::Arc;

use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, OwnedServerName};

/// The key id every Hyphae server signs with.
pub(crate) const KEY_ID: &str = "ed25519:p2p";

#[derive(Clone)]
pub(crate) struct SigningKey {
    server_name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    replica: crate::backup::ReplicaKey,
}

impl SigningKey {
    pub(crate) fn new(server_name: OwnedServerName, secret: &[u8; 32]) -> SigningKey {
        // A PKCS#8 v1 document around the 32-byte ed25519 seed, the form ruma's key pair takes.
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&[
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ]);
        der.extend_from_slice(secret);
        let key = Ed25519KeyPair::from_der(&der, "p2p".into())
            .expect("a 32-byte seed always makes a valid PKCS#8 ed25519 key");
        SigningKey {
            server_name,
            key: Arc::new(key),
            replica: crate::backup::ReplicaKey::new(secret),
        }
    }

    /// The key this node tags its backup replica's entries with.
    pub(crate) fn replica_key(&self) -> &crate::backup::ReplicaKey {
        &self.replica
    }

    pub(crate) fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// Adds the content hash and this server's signature to a PDU.
    pub(crate) fn hash_and_sign_event(
        &self,
        event: &mut CanonicalJsonObject,
        rules: &ruma::room_version_rules::RedactionRules,
    ) -> Result<(), ruma::signatures::JsonError> {
        ruma::signatures::hash_and_sign_event(self.server_name.as_str(), &*self.key, event, rules)
    }

    /// Signs any JSON object (key responses, and later requests) as this server.
    pub(crate) fn sign_json(
        &self,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), ruma::signatures::JsonError> {
        ruma::signatures::sign_json(self.server_name.as_str(), &*self.key, object)
    }
}

/// Whether `signature` is `public_key`'s over `message`, checked strictly: a weak (small-order)
/// key or a small-order `R` fails, where ruma's and libp2p's plain checks would let through
/// signatures anyone can make for such keys.
pub(crate) fn verify_strict(public_key: &[u8], signature: &[u8], message: &[u8]) -> bool {
    let (Ok(public_key), Ok(signature)) = (
        <[u8; 32]>::try_from(public_key),
        <[u8; 64]>::try_from(signature),
    ) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&public_key) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
        .is_ok()
}

/// Whether `object` carries `server`'s valid signature under [`KEY_ID`], checked strictly with
/// the key its name is (see [`verify_strict`]).
pub(crate) fn signed_by_server(object: &CanonicalJsonObject, server: &str) -> bool {
    use ruma::CanonicalJsonValue::{Object, String};
    let Some(key) = crate::rooms::verify_key_of(server) else {
        return false;
    };
    let signature = match object.get("signatures") {
        Some(Object(signatures)) => match signatures.get(server) {
            Some(Object(by_key)) => match by_key.get(KEY_ID) {
                Some(String(signature)) => signature.clone(),
                _ => return false,
            },
            _ => return false,
        },
        _ => return false,
    };
    let (Ok(signature), Ok(signed)) = (
        ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(&signature),
        ruma::signatures::to_canonical_json_string_for_signing(object),
    ) else {
        return false;
    };
    verify_strict(&key, signature.as_bytes(), signed.as_bytes())
}
