//! Names across servers as matrix-sdk (a standard client) shows them: Alice on one node renames
//! herself, and Bob's client on another node sees a rename (the SDK's membership change is a
//! profile change from the old name to the new one, which it can only tell from the event's
//! `unsigned.prev_content`), not a join; and Bob's client reads Alice's profile from her server.

mod common;

use std::time::Duration;

use common::{Person, join};
use hyphae_tests::TestNode;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::events::room::member::{MembershipChange, OriginalSyncRoomMemberEvent};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_on_another_server_shows_as_a_rename_and_the_profile_is_read() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    a.connect(&b).await;
    let alice = Person::register(&a, "alice").await;
    let bob = Person::register(&b, "bob").await;
    let alice_id = alice.client.user_id().unwrap().to_owned();
    alice
        .client
        .account()
        .set_display_name(Some("Alice"))
        .await
        .expect("name");

    let mut request = CreateRoomRequest::new();
    request.invite = vec![bob.client.user_id().unwrap().to_owned()];
    let room = alice.client.create_room(request).await.expect("room");
    let room_id = room.room_id().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while bob.client.get_room(&room_id).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no invite");
        bob.sync().await;
    }
    join(&bob, &room_id).await;
    bob.sync().await;

    // Every membership change of Alice's that Bob's client sees, as the SDK reads it.
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    let watched = alice_id.clone();
    bob.client
        .add_event_handler(move |event: OriginalSyncRoomMemberEvent| {
            let changes_tx = changes_tx.clone();
            let watched = watched.clone();
            async move {
                if event.state_key != watched {
                    return;
                }
                let change = match event.membership_change() {
                    MembershipChange::ProfileChanged {
                        displayname_change: Some(change),
                        ..
                    } => format!(
                        "renamed {:?} -> {:?}",
                        change.old.unwrap_or_default(),
                        change.new.unwrap_or_default()
                    ),
                    other => format!("{other:?}"),
                };
                let _ = changes_tx.send(change);
            }
        });

    alice
        .client
        .account()
        .set_display_name(Some("Alice Liddell"))
        .await
        .expect("rename");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|c: &String| c.contains("Alice Liddell")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Bob's client never saw Alice's rename; it saw {seen:?}"
        );
        bob.sync().await;
        while let Ok(change) = changes.try_recv() {
            seen.push(change);
        }
    }
    assert!(
        seen.contains(&"renamed \"Alice\" -> \"Alice Liddell\"".to_owned()),
        "a rename, not a join: {seen:?}"
    );
    let member = bob
        .room(&room_id)
        .get_member(&alice_id)
        .await
        .expect("members")
        .expect("Alice is a member");
    assert_eq!(member.display_name(), Some("Alice Liddell"));

    // Alice's profile, read by Bob's client from his own node, which asks hers.
    let profile = bob
        .client
        .account()
        .fetch_user_profile_of(&alice_id)
        .await
        .expect("Alice's profile");
    let name = profile.get("displayname").and_then(|n| n.as_str());
    assert_eq!(name, Some("Alice Liddell"), "{profile:?}");
}
