//! Nodes meeting over the libp2p overlay: the federation router answers over it, and the peer
//! book makes a restarted node find its peers again by itself.

use std::time::Duration;

use hyphae_tests::TestNode;

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_api_answers_over_libp2p_and_peers_are_remembered() {
    let alice = TestNode::start().await;
    let bob = TestNode::start().await;
    let bob_peer = bob.transport().local_peer_id();
    let bob_addrs = bob.transport().listen_addrs().await.unwrap();
    alice.transport().dial(bob_peer, bob_addrs).await.unwrap();

    // Alice asks Bob's node for its key, by server name, over an authenticated libp2p stream.
    let request = http::Request::get("/_matrix/key/v2/server")
        .body(bytes::Bytes::new())
        .unwrap();
    let response = alice
        .transport()
        .request(bob.node.server_name().to_owned(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let keys: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(keys["server_name"], bob.node.server_name());

    // Bob is in Alice's peer book ...
    let store = alice.node.store().clone();
    let bob_id = bob_peer.to_string();
    eventually("the peer book entry", || {
        let (store, bob_id) = (store.clone(), bob_id.clone());
        async move {
            store
                .known_peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.peer_id == bob_id && !p.addresses.is_empty())
        }
    })
    .await;

    // ... so a restarted Alice reconnects to Bob without being told.
    let alice = alice.restart().await;
    let transport = alice.transport().clone();
    eventually("the reconnection", || {
        let transport = transport.clone();
        async move {
            transport
                .connected_peers()
                .await
                .unwrap()
                .contains(&bob_peer)
        }
    })
    .await;
}
