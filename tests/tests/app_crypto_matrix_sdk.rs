//! The app's own client (its end-to-end encryption is Hyphae's, on vodozemac) on one node and a
//! standard client (matrix-sdk) on another: they exchange encrypted messages both ways, across
//! servers, and each reads what the other wrote.

use std::time::Duration;

use hyphae_node::app::ItemKind;
use hyphae_tests::TestNode;
use matrix_sdk::ruma::OwnedRoomId;

mod common;

use common::{Person, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_client_and_matrix_sdk_chat_encrypted_both_ways() {
    let node = TestNode::start_with(|config| {
        config.owner = Some("alice".into());
    })
    .await;
    let bobs_node = TestNode::start().await;
    node.connect(&bobs_node).await;
    let app = node.node.app().expect("the node has an owner").clone();
    let mut bob = Person::register(&bobs_node, "bob").await;
    assert_ne!(
        bob.client.user_id().unwrap().server_name().as_str(),
        app.user_id().server_name().as_str(),
        "the two clients are on different servers"
    );
    // The node's ruma (0.17) ids; matrix-sdk brings its own ruma (0.16).
    let bob_id = ruma::UserId::parse(bob.client.user_id().unwrap().as_str()).unwrap();

    let room = app.create_group("chat", &[bob_id]).await.expect("room");
    let room_id: OwnedRoomId = room.as_str().try_into().unwrap();
    join(&bob, &room_id).await;

    // App -> matrix-sdk: Megolm session shared over Olm by the app's crypto.
    app.send_text(&room, "hello from the app")
        .await
        .expect("send");
    bob.receive("hello from the app").await;

    // matrix-sdk -> app: the room key arrives as a to-device Olm message the app decrypts.
    bob.send(&room_id, "hello from matrix-sdk").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let items = app.timeline(&room, 50).await.expect("timeline");
        let found = items.iter().find(
            |item| matches!(&item.kind, ItemKind::Text { body } if body == "hello from matrix-sdk"),
        );
        if let Some(item) = found {
            assert!(item.encrypted, "it travelled encrypted");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app never decrypted matrix-sdk's message: {items:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second message each way reuses the sessions.
    app.send_text(&room, "again from the app")
        .await
        .expect("send");
    bob.receive("again from the app").await;
    bob.assert_undecryptable(Vec::new());
}
