//! Which DHT records this node stores for other peers: mailbox records under
//! `/hyphae/mailbox/<server name>`, signed by that server and newer than the one held (never
//! under this node's own key: it publishes its own record itself), and backup servers'
//! announcements. Anything else a peer puts is not kept.

use std::sync::Arc;

use hyphae_p2p::{RecordPolicy, RecordPolicyHandle};

use super::mailbox::verify_record;

const MAILBOX_PREFIX: &[u8] = b"/hyphae/mailbox/";

struct Policy {
    own_key: Vec<u8>,
}

impl RecordPolicy for Policy {
    fn accept_record(&self, key: &[u8], value: &[u8], held: Option<&[u8]>) -> bool {
        if key == self.own_key {
            return false;
        }
        let Some(server) = key
            .strip_prefix(MAILBOX_PREFIX)
            .and_then(|s| std::str::from_utf8(s).ok())
        else {
            return false;
        };
        let record = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| verify_record(text).ok())
                .filter(|record| record.server == server)
        };
        let Some(new) = record(value) else {
            return false;
        };
        // A held value that is not a valid record (from before this check) gives way.
        held.and_then(record).is_none_or(|held| new.ts > held.ts)
    }

    fn accept_provider(&self, key: &[u8]) -> bool {
        key == super::ANNOUNCE_KEY
    }
}

/// The policy for a node named `own`.
pub(crate) fn record_policy(own: &str) -> RecordPolicyHandle {
    RecordPolicyHandle(Arc::new(Policy {
        own_key: super::mailbox::dht_key(own),
    }))
}
