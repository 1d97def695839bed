//! Ways of finding peers besides the DHT (which lives in the swarm's behaviour).

pub(crate) mod mdns;
