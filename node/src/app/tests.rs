//! The app's client on real nodes: the owner's account and device, rooms and invites across
//! servers, people nearby, and a decrypted timeline with delivery state.

use std::time::Duration;

use crate::app::{AppEvent, ItemKind};
use crate::client_api::test_support::{app, owned};
use crate::federation::room_tests::eventually;

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

/// Key backup: the app backs up its room keys under a recovery key; on a new device of the same
/// owner (the device forgotten, the node restarted), old messages cannot be read until the
/// backup is restored with that key — a wrong key changes nothing — and then they show,
/// decrypted, both in the timeline and as live updates.
#[tokio::test]
async fn a_new_device_reads_old_messages_after_restoring_the_key_backup() {
    let api = owned("alice").await;
    let alice = app(&api);
    let status = alice.key_backup_status().await.unwrap();
    assert_eq!(status.version, None);
    let room = alice.create_group("notes", &[]).await.unwrap();
    alice.send_text(&room, "first note").await.unwrap();
    alice.send_text(&room, "second note").await.unwrap();
    let recovery_key = alice.enable_key_backup().await.unwrap();
    let key = recovery_key.as_str().to_owned();
    assert!(key.starts_with("Es"), "the spec's recovery key format");
    let status = alice.key_backup_status().await.unwrap();
    assert!(status.version.is_some());
    assert_eq!((status.backed_up, status.pending), (1, 0), "{status:?}");
    let old_device = alice.device_id().to_owned();

    // A new device for the same owner: the app forgets its device, as on a reinstall.
    api.node
        .store()
        .set_account_data(
            "alice".into(),
            None,
            "io.hyphae.app_device".into(),
            "{}".into(),
        )
        .await
        .unwrap();
    let api = api
        .restart_with(|config| config.owner = Some("alice".into()))
        .await;
    let alice = app(&api);
    assert_ne!(alice.device_id(), old_device);
    let text_of = |item: &crate::app::TimelineItem| match &item.kind {
        ItemKind::Text { body } => Some(body.clone()),
        _ => None,
    };
    let undecryptable = |timeline: &[crate::app::TimelineItem]| {
        timeline
            .iter()
            .filter(|i| matches!(i.kind, ItemKind::Undecryptable { .. }))
            .count()
    };
    let timeline = alice.timeline(&room, 50).await.unwrap();
    assert_eq!(undecryptable(&timeline), 2);

    // A key of another backup, and a typo: clear errors, nothing imported.
    let other = crate::app::RecoveryKey::for_tests(&[9; 32]).to_string();
    let wrong = alice.restore_key_backup(&other).await.unwrap_err();
    assert!(
        matches!(wrong, crate::app::AppError::RecoveryKey(_)),
        "{wrong}"
    );
    assert!(wrong.to_string().contains("does not match"), "{wrong}");
    let mut typo: Vec<char> = key.chars().collect();
    typo[6] = if typo[6] == 'x' { 'y' } else { 'x' };
    let typo: String = typo.into_iter().collect();
    assert!(matches!(
        alice.restore_key_backup(&typo).await,
        Err(crate::app::AppError::RecoveryKey(_))
    ));
    assert_eq!(alice.key_backup_status().await.unwrap().version, None);
    assert_eq!(
        undecryptable(&alice.timeline(&room, 50).await.unwrap()),
        2,
        "nothing was imported"
    );

    let mut events = alice.subscribe();
    assert_eq!(alice.restore_key_backup(&key).await.unwrap(), 1);
    // The items that were waiting for the key come again, decrypted.
    let mut live = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while live.len() < 2 {
            if let Ok(AppEvent::Timeline { item }) = events.recv().await
                && let Some(text) = text_of(&item)
            {
                live.push(text);
            }
        }
    })
    .await
    .expect("the waiting items are shown again");
    live.sort();
    assert_eq!(live, ["first note", "second note"]);
    let timeline = alice.timeline(&room, 50).await.unwrap();
    let texts: Vec<_> = timeline.iter().filter_map(text_of).collect();
    assert_eq!(texts, ["first note", "second note"]);

    // The new device backs up to the same backup from now on, its own new keys included.
    alice.send_text(&room, "from the new device").await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the new device's room key backed up",
        || async {
            let status = alice.key_backup_status().await.unwrap();
            status.backed_up == 2 && status.pending == 0
        },
    )
    .await;
}
