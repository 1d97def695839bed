//! The app's client on real nodes: the owner's account and device, rooms and invites across
//! servers, people nearby, and a decrypted timeline with delivery state.

use std::time::Duration;

use crate::app::{AppClient, AppEvent, ItemKind};
use crate::client_api::test_support::Api;
use crate::federation::room_tests::eventually;

async fn owned(name: &str) -> Api {
    let name = name.to_owned();
    Api::start_with(move |config| {
        config.owner = Some(name);
        config.p2p = Some(crate::TransportConfig::loopback());
    })
    .await
}

fn app(api: &Api) -> &AppClient {
    api.node.app().expect("the node has an owner")
}

#[tokio::test]
async fn the_owner_is_signed_in_on_first_start_and_keeps_its_device() {
    let api = owned("alice").await;
    let user_id = app(&api).user_id().to_owned();
    assert_eq!(
        user_id.as_str(),
        format!("@alice:{}", api.node.server_name())
    );
    let device = app(&api).device_id().to_owned();
    // The owner has no password: nobody logs in as them from outside.
    let (status, _) = api.login("alice", "").await;
    assert_eq!(status, 403);

    let api = api
        .restart_with(|config| config.owner = Some("alice".into()))
        .await;
    assert_eq!(app(&api).user_id(), user_id);
    assert_eq!(
        app(&api).device_id(),
        device,
        "the same device after a restart"
    );
    assert!(app(&api).rooms().await.unwrap().is_empty());
}

#[tokio::test]
async fn owners_on_two_devices_find_each_other_and_chat_encrypted() {
    let a = owned("alice").await;
    let b = owned("bob").await;
    a.connect(&b).await;
    let (alice, bob) = (app(&a), app(&b));
    alice.set_display_name("Alice").await.unwrap();
    bob.set_display_name("Bob").await.unwrap();

    // Each sees the other's owner nearby, by name.
    eventually(Duration::from_secs(10), "Bob nearby for Alice", || async {
        alice
            .nearby()
            .await
            .iter()
            .any(|p| p.user_id.as_deref() == Some(bob.user_id().as_str()) && p.connected)
    })
    .await;
    let nearby = alice.nearby().await;
    let peer = nearby
        .iter()
        .find(|p| p.user_id.as_deref() == Some(bob.user_id().as_str()))
        .unwrap();
    assert_eq!(peer.display_name.as_deref(), Some("Bob"));

    // Alice opens a DM; Bob is told of the invite, accepts it, and they chat both ways.
    let mut bob_events = bob.subscribe();
    let room = alice.create_dm(bob.user_id()).await.unwrap();
    assert_eq!(
        alice.create_dm(bob.user_id()).await.unwrap(),
        room,
        "the DM is reused"
    );
    let invite = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(AppEvent::Invite { invite }) = bob_events.recv().await {
                break invite;
            }
        }
    })
    .await
    .expect("Bob hears of the invite");
    assert_eq!(invite.room_id, room);
    assert!(invite.is_direct && invite.encrypted);
    assert_eq!(bob.invites().await.unwrap().len(), 1);
    bob.join(&room).await.unwrap();
    let rooms = bob.rooms().await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert!(rooms[0].encrypted);
    assert!(
        rooms[0].is_direct,
        "the accepted DM is Bob's DM with Alice too"
    );
    eventually(
        Duration::from_secs(10),
        "Bob joined, seen by Alice",
        || async {
            alice
                .members(&room)
                .await
                .unwrap()
                .iter()
                .any(|m| m.user_id == bob.user_id().as_str() && m.membership == "join")
        },
    )
    .await;

    alice.send_text(&room, "hello Bob").await.unwrap();
    let text_of = |item: &crate::app::TimelineItem| match &item.kind {
        ItemKind::Text { body } => Some(body.clone()),
        _ => None,
    };
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(AppEvent::Timeline { item }) = bob_events.recv().await
                && text_of(&item).is_some()
            {
                break item;
            }
        }
    })
    .await
    .expect("Bob's client shows Alice's message live");
    assert_eq!(text_of(&live).as_deref(), Some("hello Bob"));
    assert!(live.encrypted, "it travelled encrypted");
    assert_eq!(live.sender_name.as_deref(), Some("Alice"));

    bob.send_text(&room, "hi Alice").await.unwrap();
    eventually(
        Duration::from_secs(10),
        "Bob's reply in Alice's timeline",
        || async {
            let timeline = alice.timeline(&room, 50).await.unwrap();
            let texts: Vec<_> = timeline.iter().filter_map(text_of).collect();
            texts == ["hello Bob", "hi Alice"]
        },
    )
    .await;
    let timeline = alice.timeline(&room, 50).await.unwrap();
    let mine = timeline
        .iter()
        .find(|i| text_of(i).as_deref() == Some("hello Bob"))
        .unwrap();
    assert!(mine.own && mine.encrypted);
    eventually(
        Duration::from_secs(10),
        "Alice's message delivered to Bob's server",
        || async {
            let timeline = alice.timeline(&room, 50).await.unwrap();
            timeline.iter().any(|i| {
                text_of(i).as_deref() == Some("hello Bob")
                    && i.delivery
                        == Some(crate::app::Delivery {
                            stored: true,
                            sent_to: 1,
                            of: 1,
                        })
            })
        },
    )
    .await;

    // Neither server holds the plaintext.
    for api in [&a, &b] {
        let plaintext = api
            .node
            .store()
            .read(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM events WHERE pdu LIKE '%hello Bob%' OR pdu LIKE '%hi Alice%'",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(plaintext, 0);
    }
}
