//! Entry points for fuzzing and property tests: each feeds arbitrary bytes to a parser a peer
//! reaches and must never panic (what they parse is thrown away). The cargo-fuzz targets in
//! `tests/fuzz/` call them, and so do the bounded property tests below. Not an API.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response, StatusCode};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::TxtProperties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::util::BoxCloneSyncService;

use crate::config::HttpConfig;
use crate::http::{Server, serve_io};

/// An mDNS TXT record's rdata (length-prefixed `key=value` strings), decoded as mdns-sd does and
/// read as a peer's advertisement: its key and the addresses it would have us dial.
pub fn mdns_txt(data: &[u8]) {
    let txt = TxtProperties::from(data);
    let _ = txt.to_string();
    // Once with no resolved IPs, once with every IP the record names, so the filter both
    // refuses and passes addresses.
    let _ = crate::discovery::mdns::peer_of_record(&txt, &HashSet::new());
    let resolved: HashSet<IpAddr> = txt
        .iter()
        .filter_map(|p| p.val_str().parse::<Multiaddr>().ok())
        .flat_map(|a| {
            a.iter()
                .filter_map(|p| match p {
                    Protocol::Ip4(ip) => Some(IpAddr::from(ip)),
                    Protocol::Ip6(ip) => Some(IpAddr::from(ip)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let _ = crate::discovery::mdns::peer_of_record(&txt, &resolved);
}

/// A server name as peers send it (`Host`, an origin, an mDNS key): the peer id it names, and
/// back.
pub fn server_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(peer) = crate::peer_id_for_server_name(name) {
        let _ = crate::server_name_of_peer(&peer);
    }
}

thread_local! {
    /// One runtime per fuzzing thread: building one per input would dominate the run.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    static PEER: PeerId = PeerId::random();
}

/// Bytes a peer writes on an inbound `/http/1.1` stream, served by the real server half
/// (hyper with the node's limits) over an in-memory pipe, to a handler that reads the body;
/// whatever comes back is read to the end. Bounded to two seconds per input.
pub fn http_server(data: &[u8]) {
    let peer = PEER.with(|peer| *peer);
    RUNTIME.with(|runtime| runtime.block_on(serve_bytes(peer, data)));
}

async fn serve_bytes(peer: PeerId, data: &[u8]) {
    let config = HttpConfig {
        max_request_body: 4096,
        header_read_timeout: Duration::from_millis(500),
        max_header_size: 4096,
        serve_timeout: Duration::from_secs(1),
        max_concurrent_requests: 1,
        ..HttpConfig::default()
    };
    let server = Arc::new(Server::new(config));
    server.set_service(BoxCloneSyncService::new(tower::service_fn(echo)));
    let (mut client, stream) = tokio::io::duplex(64 * 1024);
    let serving = serve_io(server, peer, None, stream);
    let talking = async move {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures::future::join(serving, talking),
    )
    .await;
}

/// Answers with the length of the body it read (413 past the limit), as a handler would.
async fn echo(req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let _peer = parts.extensions.get::<ConnectInfo<PeerId>>();
    let response = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => Response::new(Body::from(format!("{} {}", parts.uri, bytes.len()))),
        Err(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            response
        }
    };
    Ok(response)
}

/// The property tests' harness, shared by every crate with fuzz entry points (the node's tests
/// take it through the `fuzz-harness` feature): each target on arbitrary bytes and on its seeds
/// mutated, from a fixed seed, within a bounded number of cases.
#[cfg(any(test, feature = "fuzz-harness"))]
pub mod harness {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRng, TestRunner};

    /// Cases per property: with a fixed seed, the set runs in seconds in a debug build.
    const CASES: u32 = 256;

    /// Where the seeds of the fuzz target of this name are kept.
    pub fn corpus_dir(target: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fuzz/corpus")
            .join(target)
    }

    /// The seed inputs the fuzz target of this name starts from (`*.seed`; the rest of the
    /// folder is what fuzz runs added).
    pub fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = corpus_dir(target);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "seed"))
            .map(|path| std::fs::read(path).unwrap())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        seeds
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
        Remove(usize, usize),
        Splice(usize, usize, usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
            any::<usize>().prop_map(Mutation::Truncate),
            (
                any::<usize>(),
                prop::collection::vec(
                    prop_oneof![
                        any::<u8>(),
                        prop::sample::select(b"{}[]\":,\\0-9eE.ntfu*?=/\n ".to_vec())
                    ],
                    1..8
                )
            )
                .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
            (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove(at, len)),
            (any::<usize>(), any::<usize>(), any::<usize>())
                .prop_map(|(seed, from, at)| Mutation::Splice(seed, from, at)),
        ]
    }

    fn mutate(seeds: &[Vec<u8>], seed: usize, mutations: &[Mutation]) -> Vec<u8> {
        let mut data = seeds[seed % seeds.len()].clone();
        for m in mutations {
            let len = data.len().max(1);
            match m {
                Mutation::Flip(at, bit) => {
                    if let Some(byte) = data.get_mut(at % len) {
                        *byte ^= 1 << bit;
                    }
                }
                Mutation::Truncate(at) => data.truncate(at % len),
                Mutation::Insert(at, bytes) => {
                    let at = at % (data.len() + 1);
                    data.splice(at..at, bytes.iter().copied());
                }
                Mutation::Remove(at, n) => {
                    let at = at % len;
                    let end = (at + n).min(data.len());
                    if at < end {
                        data.drain(at..end);
                    }
                }
                Mutation::Splice(other, from, at) => {
                    let other = &seeds[other % seeds.len()];
                    let from = from % (other.len() + 1);
                    let at = at % (data.len() + 1);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
            }
        }
        data
    }

    /// Runs `target` on arbitrary bytes and on its seeds mutated, `CASES` of each, from a
    /// fixed seed so a failure repeats.
    pub fn check(name: &str, target: fn(&[u8])) {
        let config = Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        };
        let runner = |config: &Config| {
            TestRunner::new_with_rng(
                config.clone(),
                TestRng::deterministic_rng(config.rng_algorithm),
            )
        };
        runner(&config)
            .run(&prop::collection::vec(any::<u8>(), 0..1024), |data| {
                target(&data);
                Ok(())
            })
            .unwrap();
        let seeds = corpus(name);
        runner(&config)
            .run(
                &(any::<usize>(), prop::collection::vec(mutation(), 1..6)),
                |(seed, mutations)| {
                    target(&mutate(&seeds, seed, &mutations));
                    Ok(())
                },
            )
            .unwrap();
        for seed in &seeds {
            target(seed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::harness::check;

    #[test]
    fn mdns_txt_never_panics() {
        check("mdns_txt", super::mdns_txt);
    }

    #[test]
    fn server_name_never_panics() {
        check("server_name", super::server_name);
    }

    #[test]
    fn http_server_never_panics() {
        check("http_server", super::http_server);
    }

    #[test]
    fn a_seed_txt_record_names_its_peer_and_addresses() {
        let txt = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fuzz/corpus/mdns_txt/advert.seed"),
        )
        .unwrap();
        let txt = mdns_sd::TxtProperties::from(&txt[..]);
        let resolved = ["10.1.2.3".parse().unwrap()].into_iter().collect();
        let (_, addrs) = crate::discovery::mdns::peer_of_record(&txt, &resolved).unwrap();
        assert_eq!(addrs.len(), 1, "{txt}");
    }
}
