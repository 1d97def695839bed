//! Three nodes in one process over real libp2p connections on loopback, each with its own
//! matrix-sdk client (end-to-end encryption on): users on different servers create, invite, join
//! and read each other's encrypted messages, device lists and one-time keys travel between the
//! servers, and a late joiner reads the history it was meant to.

use hyphae_tests::TestNode;
use matrix_sdk::ruma::OwnedRoomId;

mod common;

use common::{Person, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chat_across_three_servers() {
    let (a, b, c) = (
        TestNode::start().await,
        TestNode::start().await,
        TestNode::start().await,
    );
    a.connect(&b).await;
    a.connect(&c).await;
    b.connect(&c).await;
    let mut alice = Person::register(&a, "alice").await;
    let mut bob = Person::register(&b, "bob").await;
    let mut carol = Person::register(&c, "carol").await;
    let bob_id = bob.client.user_id().unwrap().to_owned();
    assert_ne!(
        bob_id.server_name(),
        alice.client.user_id().unwrap().server_name(),
        "Alice and Bob are on different servers"
    );

    // Bob, on another server, is invited and joins by room id (his client knows no server).
    let room = alice.create_encrypted_room(vec![bob_id]).await;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    join(&bob, &room_id).await;
    alice.sync().await;

    // Both ways: Alice's client fetched Bob's device keys and claimed a one-time key from his
    // server to share the room key with him, and the other way round.
    let hello = alice.send(&room_id, "hello bob").await;
    bob.receive("hello bob").await;
    let hi = bob.send(&room_id, "hi alice").await;
    alice.receive("hi alice").await;

    // Carol, on a third server, is invited; what is said after the invite is shared with her.
    // Her server joins afterwards, so it fetches that message as history from the others.
    alice
        .room(&room_id)
        .invite_user_by_id(carol.client.user_id().unwrap())
        .await
        .expect("invite carol");
    let welcome = alice.send(&room_id, "welcome carol").await;
    join(&carol, &room_id).await;
    // (Decrypted: the texts are read from the decrypted events.)
    let history = carol.history_texts(&room_id).await;
    assert!(
        history.iter().any(|t| t == "welcome carol"),
        "Carol's history holds what was said after her invite, decrypted: {history:?}"
    );
    assert!(
        !history.iter().any(|t| t == "hello bob" || t == "hi alice"),
        "what was said before Carol's invite was never shared with her: {history:?}"
    );

    // A message from Bob's server reaches both others, encrypted for each of them.
    bob.sync().await;
    let everyone = bob.send(&room_id, "hello everyone").await;
    alice.receive("hello everyone").await;
    carol.receive("hello everyone").await;
    let from_carol = carol.send(&room_id, "hi from carol").await;
    alice.receive("hi from carol").await;
    bob.receive("hi from carol").await;

    // Alice logs in on a second device; Bob's server learns of it (device list update) and
    // Bob's next message is encrypted for it too.
    let mut alice_phone = Person::log_in_again(&a, "alice").await;
    bob.sync().await;
    bob.send(&room_id, "to all of alice's devices").await;
    alice_phone.receive("to all of alice's devices").await;
    alice.receive("to all of alice's devices").await;

    // None of the servers stored plaintext.
    for node in [&a, &b, &c] {
        let plaintext = node
            .node
            .store()
            .read(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM events WHERE pdu LIKE '%hello bob%'
                     OR pdu LIKE '%welcome carol%' OR pdu LIKE '%hello everyone%'",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(plaintext, 0, "plaintext reached a server");
    }
    alice.assert_undecryptable(Vec::new());
    bob.assert_undecryptable(Vec::new());
    // Carol's server fetched the older history only when her client paged back, so her sync
    // never showed her the messages she cannot read.
    carol.assert_undecryptable(Vec::new());
    // Nor were messages from before Alice's second device existed shared with it.
    alice_phone.assert_undecryptable(vec![hello, hi, welcome, everyone, from_carol]);
}
