//! Which DHT records peers may make this node store. Kademlia hands every inbound `PUT_VALUE`
//! and `ADD_PROVIDER` to the swarm task (record filtering on), which stores it only if it fits
//! the size limits, does not replace a record this node published itself, and passes the
//! node's [`RecordPolicy`] (the transport knows sizes, the node knows what records mean).

use libp2p::PeerId;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{ProviderRecord, Record};

use crate::behaviour::{MAX_RECORD_KEY, MAX_RECORD_VALUE};

/// The node's say on DHT records sent by peers.
pub trait RecordPolicy: Send + Sync + 'static {
    /// Whether `value`, sent by a peer for `key`, may be stored in place of `held` (the value
    /// stored now under `key`, if any): the key is in a namespace the node knows, and the
    /// value is valid for it (signed by whom the key speaks for, newer than what is held).
    fn accept_record(&self, key: &[u8], value: &[u8], held: Option<&[u8]>) -> bool;

    /// Whether a peer may announce itself as a provider of `key`.
    fn accept_provider(&self, key: &[u8]) -> bool;
}

/// Why an inbound record was not stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    TooLarge,
    /// Under a key this node publishes itself: only it may change its own records.
    Ours,
    Policy,
    Store(String),
}

/// Stores a record a peer sent, if it may be.
pub(crate) fn put_inbound(
    store: &mut MemoryStore,
    local: &PeerId,
    source: PeerId,
    mut record: Record,
    policy: Option<&dyn RecordPolicy>,
) -> Result<(), Refused> {
    if record.key.as_ref().len() > MAX_RECORD_KEY || record.value.len() > MAX_RECORD_VALUE {
        return Err(Refused::TooLarge);
    }
    let held = store.get(&record.key);
    if held
        .as_ref()
        .is_some_and(|held| held.publisher.as_ref() == Some(local))
    {
        return Err(Refused::Ours);
    }
    let held_value = held.as_ref().map(|held| held.value.as_slice());
    if let Some(policy) = policy
        && !policy.accept_record(record.key.as_ref(), &record.value, held_value)
    {
        return Err(Refused::Policy);
    }
    // A peer may name anyone as the publisher; naming us would have us republish its record
    // as our own.
    if record.publisher.is_none_or(|publisher| publisher == *local) {
        record.publisher = Some(source);
    }
    store.put(record).map_err(|e| Refused::Store(e.to_string()))
}

/// Stores a provider announcement a peer sent (kad checked it announces itself), if it may be.
pub(crate) fn add_provider_inbound(
    store: &mut MemoryStore,
    record: ProviderRecord,
    policy: Option<&dyn RecordPolicy>,
) -> Result<(), Refused> {
    if record.key.as_ref().len() > MAX_RECORD_KEY {
        return Err(Refused::TooLarge);
    }
    if let Some(policy) = policy
        && !policy.accept_provider(record.key.as_ref())
    {
        return Err(Refused::Policy);
    }
    store
        .add_provider(record)
        .map_err(|e| Refused::Store(e.to_string()))
}

/// Makes room in a full store for a record of our own by dropping one that another peer
/// published (the one closest to expiry): peers must not be able to crowd out our own mailbox
/// record by filling the store first. False when every stored record is ours.
pub(crate) fn evict_foreign_record(store: &mut MemoryStore, local: &PeerId) -> bool {
    let victim = store
        .records()
        .filter(|r| r.publisher.as_ref() != Some(local))
        .min_by_key(|r| (r.expires.is_none(), r.expires))
        .map(|r| r.key.clone());
    match victim {
        Some(key) => {
            store.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::kad;

    use super::*;

    /// Takes values that start with the key's last byte, and only newer (longer) ones.
    struct Prefixed;

    impl RecordPolicy for Prefixed {
        fn accept_record(&self, key: &[u8], value: &[u8], held: Option<&[u8]>) -> bool {
            value.first() == key.last() && held.is_none_or(|held| value.len() > held.len())
        }
        fn accept_provider(&self, key: &[u8]) -> bool {
            key.starts_with(b"/known/")
        }
    }

    fn record(key: &str, value: &[u8], publisher: PeerId) -> Record {
        Record {
            key: kad::RecordKey::new(&key),
            value: value.to_vec(),
            publisher: Some(publisher),
            expires: None,
        }
    }

    #[test]
    fn records_from_peers_are_stored_only_when_they_fit_and_pass() {
        let local = PeerId::random();
        let peer = PeerId::random();
        let mut store = MemoryStore::new(local);
        let policy: Option<&dyn RecordPolicy> = Some(&Prefixed);

        assert_eq!(
            put_inbound(&mut store, &local, peer, record("/k/a", b"b", peer), policy),
            Err(Refused::Policy)
        );
        put_inbound(
            &mut store,
            &local,
            peer,
            record("/k/a", b"a1", peer),
            policy,
        )
        .unwrap();
        assert_eq!(
            put_inbound(&mut store, &local, peer, record("/k/a", b"a", peer), policy),
            Err(Refused::Policy),
            "an older value does not replace a newer one"
        );
        let big = vec![b'a'; MAX_RECORD_VALUE + 1];
        assert_eq!(
            put_inbound(&mut store, &local, peer, record("/k/a", &big, peer), policy),
            Err(Refused::TooLarge)
        );

        // A record of our own is never replaced by a peer, whatever it sends.
        store.put(record("/k/o", b"o", local)).unwrap();
        assert_eq!(
            put_inbound(
                &mut store,
                &local,
                peer,
                record("/k/o", b"o-newer", peer),
                policy
            ),
            Err(Refused::Ours)
        );
        assert_eq!(
            store.get(&kad::RecordKey::new(&"/k/o")).unwrap().value,
            b"o"
        );

        // Naming us as the publisher does not make a peer's record ours.
        put_inbound(&mut store, &local, peer, record("/k/x", b"x", local), None).unwrap();
        let stored = store.get(&kad::RecordKey::new(&"/k/x")).unwrap();
        assert_eq!(stored.publisher, Some(peer));

        let provider = |key: &str| ProviderRecord {
            key: kad::RecordKey::new(&key),
            provider: peer,
            expires: None,
            addresses: Vec::new(),
        };
        assert_eq!(
            add_provider_inbound(&mut store, provider("/other/p"), policy),
            Err(Refused::Policy)
        );
        add_provider_inbound(&mut store, provider("/known/p"), policy).unwrap();
        assert_eq!(store.providers(&kad::RecordKey::new(&"/known/p")).len(), 1);
    }

    #[test]
    fn a_full_store_drops_a_foreign_record_for_our_own_and_never_ours() {
        let local = PeerId::random();
        let other = PeerId::random();
        let mut store = MemoryStore::with_config(
            local,
            kad::store::MemoryStoreConfig {
                max_records: 3,
                ..Default::default()
            },
        );
        let record = |key: &str, publisher: PeerId, expires_in: Option<u64>| Record {
            key: kad::RecordKey::new(&key),
            value: b"v".to_vec(),
            publisher: Some(publisher),
            expires: expires_in.map(|s| std::time::Instant::now() + Duration::from_secs(s)),
        };
        store.put(record("ours", local, None)).unwrap();
        store.put(record("later", other, Some(3600))).unwrap();
        store.put(record("sooner", other, Some(60))).unwrap();
        assert!(store.put(record("new", local, None)).is_err());

        assert!(evict_foreign_record(&mut store, &local));
        assert!(store.get(&kad::RecordKey::new(&"sooner")).is_none());
        assert!(evict_foreign_record(&mut store, &local));
        assert!(store.get(&kad::RecordKey::new(&"later")).is_none());
        assert!(!evict_foreign_record(&mut store, &local));
        assert!(store.get(&kad::RecordKey::new(&"ours")).is_some());
    }
}
