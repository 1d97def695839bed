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
