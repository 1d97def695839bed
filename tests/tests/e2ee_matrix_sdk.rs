//! A real Matrix client, matrix-sdk with its end-to-end encryption on, against one node started
//! in-process: users register, chat in an encrypted room, and decrypt what they are sent.

use hyphae_tests::TestNode;
use matrix_sdk::ruma::OwnedRoomId;

mod common;

use common::{Person, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chat_between_matrix_sdk_clients() {
    let node = TestNode::start().await;
    let mut alice = Person::register(&node, "alice").await;
    let mut bob = Person::register(&node, "bob").await;

    let room = alice
        .create_encrypted_room(vec![bob.client.user_id().unwrap().to_owned()])
        .await;
    let room_id: OwnedRoomId = room.room_id().to_owned();
    // The node's default room version (12, the newest) is one this client handles.
    let version = node
        .node
        .store()
        .room_version(room_id.to_string())
        .await
        .unwrap();
    assert_eq!(version.as_deref(), Some("12"));
    join(&bob, &room_id).await;
    alice.sync().await;

    // Both ways, encrypted on the wire and decrypted by the other client.
    let hello = alice.send(&room_id, "hello bob").await;
    bob.receive("hello bob").await;
    let hi = bob.send(&room_id, "hi alice").await;
    alice.receive("hi alice").await;
    assert!(
        alice
            .room(&room_id)
            .latest_encryption_state()
            .await
            .unwrap()
            .is_encrypted(),
        "the room is encrypted"
    );

    // The node stored only ciphertext.
    let stored = node
        .node
        .store()
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM events WHERE pdu LIKE '%hello bob%' OR pdu LIKE '%hi alice%'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(stored, 0, "plaintext reached the server");

    // Carol is invited; what is said after the invite is shared with her, and she reads it
    // once she joins.
    let mut carol = Person::register(&node, "carol").await;
    alice
        .room(&room_id)
        .invite_user_by_id(carol.client.user_id().unwrap())
        .await
        .expect("invite carol");
    let welcome = alice.send(&room_id, "welcome carol").await;
    join(&carol, &room_id).await;
    let decrypted = carol.history_texts(&room_id).await;
    assert!(
        decrypted.iter().any(|t| t == "welcome carol"),
        "carol read {decrypted:?}"
    );
    carol.receive("welcome carol").await;

    // Alice logs in on a second device; Bob's next message reaches it too.
    let mut alice_phone = Person::log_in_again(&node, "alice").await;
    bob.sync().await;
    bob.send(&room_id, "to all of alice's devices").await;
    alice_phone.receive("to all of alice's devices").await;
    alice.receive("to all of alice's devices").await;
    carol.receive("to all of alice's devices").await;

    alice.assert_undecryptable(Vec::new());
    bob.assert_undecryptable(Vec::new());
    // What was said before Carol was invited was never shared with her, and what was said before
    // Alice's second device existed was never shared with it: both stay unreadable there (keys
    // for them travel between one's own devices through key requests or backup, not the server).
    carol.assert_undecryptable(vec![hello.clone(), hi.clone()]);
    alice_phone.assert_undecryptable(vec![hello, hi, welcome]);
}
