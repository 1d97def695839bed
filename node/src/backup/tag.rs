//! The device's tag on each entry of its backup replica: what the event was to the device (in
//! its timeline, in its history only, or an outlier it checked) and, where a restore cannot work
//! it out from the prev events, the state before it; authenticated with HMAC-SHA256 under a key
//! derived from the node's identity secret, which only the device and its sealed identity hold.
//! A backup server can leave entries out, but it cannot add any (the PDUs of its own server
//! included) nor change what one says: a restore refuses entries without a valid tag.
//!
//! The event id (the reference hash of the redacted event, room versions 3 and later) binds the
//! tag to the event: a server redacting its copy (which it does for the sender's own
//! redactions) keeps the tag valid, changing anything else does not.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vodozemac::{base64_decode, base64_encode};
use zeroize::Zeroizing;

/// What an event of the replica was to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    /// In its timeline: restored through the auth rules and the room's state.
    Timeline,
    /// In its timeline with no state known before it (history fetched from other servers, an
    /// invite to a room it was not in): restored as history, checked against its auth events,
    /// changing no state.
    History,
    /// Checked against its auth events and kept out of the timeline (an auth event, the state a
    /// room was joined with).
    Outlier,
}

impl Status {
    fn byte(self) -> u8 {
        match self {
            Status::Timeline => 1,
            Status::History => 2,
            Status::Outlier => 3,
        }
    }
}

/// The tag as it travels beside the PDU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tag {
    pub(crate) status: Status,
    /// The state before the event as the device kept it (event ids), for a timeline event whose
    /// prev events were not all in the device's timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) state_before: Option<Vec<String>>,
    /// Unpadded base64 of the HMAC.
    pub(crate) mac: String,
}

/// The key tags are made with: SHA-256("hyphae replica tag key v1" || identity secret).
#[derive(Clone)]
pub(crate) struct ReplicaKey(Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for ReplicaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaKey(..)")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl ReplicaKey {
    pub(crate) fn new(identity_secret: &[u8; 32]) -> ReplicaKey {
        let mut hash = Sha256::new();
        hash.update(b"hyphae replica tag key v1");
        hash.update(identity_secret);
        ReplicaKey(Arc::new(Zeroizing::new(hash.finalize().into())))
    }

    /// The tag of `event_id`'s entry.
    pub(crate) fn tag(
        &self,
        event_id: &str,
        status: Status,
        state_before: Option<Vec<String>>,
    ) -> Tag {
        let mac = self
            .mac(event_id, status, state_before.as_deref())
            .finalize()
            .into_bytes();
        Tag {
            status,
            state_before,
            mac: base64_encode(mac),
        }
    }

    /// Whether `tag` is this key's, for `event_id` (computed from the PDU, never taken from the
    /// server).
    pub(crate) fn verify(&self, event_id: &str, tag: &Tag) -> bool {
        let Ok(mac) = base64_decode(&tag.mac) else {
            return false;
        };
        self.mac(event_id, tag.status, tag.state_before.as_deref())
            .verify_slice(&mac)
            .is_ok()
    }

    fn mac(&self, event_id: &str, status: Status, state_before: Option<&[String]>) -> HmacSha256 {
        // Any key length is fine for HMAC: this cannot fail.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0[..])
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        let mut field = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        field(b"hyphae replica entry v1");
        field(event_id.as_bytes());
        field(&[status.byte()]);
        match state_before {
            None => field(b"-"),
            Some(ids) => {
                field(&(ids.len() as u64).to_be_bytes());
                for id in ids {
                    field(id.as_bytes());
                }
            }
        }
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_devices_key_makes_a_tag_for_that_event_and_status() {
        let key = ReplicaKey::new(&[1; 32]);
        let tag = key.tag("$a", Status::Timeline, Some(vec!["$c".into()]));
        assert!(key.verify("$a", &tag));
        assert!(!ReplicaKey::new(&[2; 32]).verify("$a", &tag), "another key");
        assert!(!key.verify("$b", &tag), "another event");
        let mut changed = tag.clone();
        changed.status = Status::Outlier;
        assert!(!key.verify("$a", &changed), "another status");
        let mut changed = tag.clone();
        changed.state_before = Some(vec!["$c".into(), "$evil".into()]);
        assert!(!key.verify("$a", &changed), "another state");
        changed.state_before = None;
        assert!(!key.verify("$a", &changed), "no state");
        changed.mac = "not base64!".into();
        assert!(!key.verify("$a", &changed));
        // As it travels: JSON beside the PDU.
        let json = serde_json::to_string(&tag).unwrap();
        assert!(json.contains("\"status\":\"timeline\""), "{json}");
        let back: Tag = serde_json::from_str(&json).unwrap();
        assert!(key.verify("$a", &back));
    }
}
