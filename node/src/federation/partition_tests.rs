//! Federation across outages: a node that is stopped or cut off while the room goes on, and
//! what its users (and the other side's) see once it is back: every message, in order, and
//! the same room state on every server.

use std::time::Duration;

use serde_json::{Value, json};

use super::room_tests::{Person, event_ids, eventually, send_text, texts, two_nodes_in_a_room};
use crate::client_api::test_support::Api;

/// How long a node that is back may take to catch up: it redials its peers at start, and the
/// other side's sender flushes as soon as the connection is up.
const CATCH_UP: Duration = Duration::from_secs(20);

async fn send_all(api: &Api, who: &Person, room: &str, texts: &[String]) {
    for text in texts {
        send_text(api, who, room, text).await;
    }
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{prefix} {n}")).collect()
}

/// Waits until `who` on `api` reads exactly `expected` (oldest first) in /messages.
async fn wait_for_texts(api: &Api, who: &Person, room: &str, expected: &[String]) {
    let start = std::time::Instant::now();
    loop {
        let now = texts(api, who, room).await;
        if now == expected {
            return;
        }
        assert!(
            start.elapsed() < CATCH_UP,
            "{} sees {now:?}, not {expected:?}",
            who.user_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state(api: &Api, who: &Person, room: &str) -> Value {
    let (status, body) = api
        .get(&format!("/v3/rooms/{room}/state"), Some(&who.token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn set_state(api: &Api, who: &Person, room: &str, kind: &str, content: Value) {
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/state/{kind}/"),
            Some(&who.token),
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn content_of<'a>(state: &'a Value, kind: &str) -> &'a Value {
    state
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == kind))
        .map_or(&Value::Null, |e| &e["content"])
}

#[tokio::test]
async fn messages_sent_while_the_other_node_is_down_arrive_in_order_when_it_is_back() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    send_text(&a, &alice, &room, "before").await;
    wait_for_texts(&b, &bob, &room, &["before".to_owned()]).await;

    let b = b.stop().await;
    let while_down = numbered("while Bob's node was down", 0..20);
    send_all(&a, &alice, &room, &while_down).await;
    // On new ports: Alice's server cannot know them; Bob's redials Alice's from its peer book.
    let b = b.start_federated().await;

    let mut expected = vec!["before".to_owned()];
    expected.extend(while_down);
    wait_for_texts(&b, &bob, &room, &expected).await;
    // And the room goes on both ways.
    send_text(&b, &bob, &room, "back").await;
    expected.push("back".to_owned());
    wait_for_texts(&a, &alice, &room, &expected).await;
}

#[tokio::test]
async fn messages_wait_in_the_outbox_across_their_own_nodes_restarts() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;

    // Alice's node is cut off (no overlay): her messages are accepted and wait in its outbox
    // (more than one transaction's worth).
    let a = a.restart_offline().await;
    let offline = numbered("sent offline", 0..60);
    send_all(&a, &alice, &room, &offline).await;
    assert!(
        texts(&b, &bob, &room).await.is_empty(),
        "nothing can have left Alice's node"
    );
    // Back online, and at once more messages, and the node stopped right after them: some may
    // be on their way, some not yet sent.
    let a = a.restart_federated().await;
    let hurried = numbered("sent just before a stop", 0..10);
    send_all(&a, &alice, &room, &hurried).await;
    let a = a.restart_federated().await;

    let mut expected = offline;
    expected.extend(hurried);
    wait_for_texts(&b, &bob, &room, &expected).await;
    // Nothing is sent twice into the timeline (a repeat of a delivered one is a duplicate).
    wait_for_texts(&a, &alice, &room, &expected).await;
}

#[tokio::test]
async fn both_sides_of_a_partition_converge_on_the_same_state_and_messages() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    // Bob may change the topic too, so both sides can change the same state.
    let mut levels = content_of(&state(&a, &alice, &room).await, "m.room.power_levels").clone();
    levels["users"][&bob.user_id] = 50.into();
    set_state(&a, &alice, &room, "m.room.power_levels", levels).await;
    eventually(CATCH_UP, "Bob's power on his server", || async {
        content_of(&state(&b, &bob, &room).await, "m.room.power_levels")["users"][&bob.user_id]
            == 50
    })
    .await;

    // The partition: Bob's node loses the network; each side goes on alone.
    let b = b.restart_offline().await;
    set_state(
        &a,
        &alice,
        &room,
        "m.room.name",
        json!({"name": "Alice's name"}),
    )
    .await;
    set_state(
        &a,
        &alice,
        &room,
        "m.room.topic",
        json!({"topic": "Alice's topic"}),
    )
    .await;
    let alices = numbered("Alice, partitioned", 0..5);
    send_all(&a, &alice, &room, &alices).await;
    set_state(
        &b,
        &bob,
        &room,
        "m.room.topic",
        json!({"topic": "Bob's topic"}),
    )
    .await;
    let bobs = numbered("Bob, partitioned", 0..5);
    send_all(&b, &bob, &room, &bobs).await;

    // Healed: Bob's node is back on the network.
    let b = b.restart_federated().await;
    let mut all: Vec<String> = alices.iter().chain(&bobs).cloned().collect();
    all.sort();
    for (api, who) in [(&a, &alice), (&b, &bob)] {
        eventually(
            CATCH_UP,
            &format!("every message on {}", who.user_id),
            || async {
                let mut seen = texts(api, who, &room).await;
                seen.sort();
                seen == all
            },
        )
        .await;
    }
    eventually(CATCH_UP, "the same state on both servers", || async {
        event_ids(&state(&a, &alice, &room).await) == event_ids(&state(&b, &bob, &room).await)
    })
    .await;
    let resolved = state(&b, &bob, &room).await;
    assert_eq!(content_of(&resolved, "m.room.name")["name"], "Alice's name");
    let topic = content_of(&resolved, "m.room.topic")["topic"].clone();
    assert!(
        topic == "Alice's topic" || topic == "Bob's topic",
        "{resolved:#}"
    );

    // The room goes on from the merged state: a message from each side reaches the other.
    send_text(&a, &alice, &room, "together again").await;
    send_text(&b, &bob, &room, "indeed").await;
    all.extend(["indeed".to_owned(), "together again".to_owned()]);
    all.sort();
    for (api, who) in [(&a, &alice), (&b, &bob)] {
        eventually(
            CATCH_UP,
            &format!("the last messages on {}", who.user_id),
            || async {
                let mut seen = texts(api, who, &room).await;
                seen.sort();
                seen == all
            },
        )
        .await;
    }
    assert_eq!(
        event_ids(&state(&a, &alice, &room).await),
        event_ids(&state(&b, &bob, &room).await)
    );
}

#[tokio::test]
async fn a_node_cut_off_from_two_others_converges_with_them_when_back() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let c = Api::start_federated().await;
    c.connect(&a).await;
    c.connect(&b).await;
    let carol = super::room_tests::person(&c, "carol").await;
    let (status, body) = a
        .post(
            &format!("/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c
        .post(&format!("/v3/join/{room}"), Some(&carol.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Carol may change the room's name and topic too.
    let mut levels = content_of(&state(&a, &alice, &room).await, "m.room.power_levels").clone();
    levels["users"][&carol.user_id] = 50.into();
    set_state(&a, &alice, &room, "m.room.power_levels", levels).await;
    let everyone = [(&a, &alice), (&b, &bob), (&c, &carol)];
    eventually(CATCH_UP, "Carol's power everywhere", || async {
        for (api, who) in everyone {
            let levels = content_of(&state(api, who, &room).await, "m.room.power_levels").clone();
            if levels["users"][&carol.user_id] != 50 {
                return false;
            }
        }
        true
    })
    .await;

    // Carol's node is cut off; the two others go on together, Carol alone.
    let c = c.restart_offline().await;
    set_state(
        &a,
        &alice,
        &room,
        "m.room.topic",
        json!({"topic": "Alice's topic"}),
    )
    .await;
    let mut all = numbered("Alice, with Bob", 0..3);
    send_all(&a, &alice, &room, &all).await;
    let bobs = numbered("Bob, with Alice", 0..3);
    send_all(&b, &bob, &room, &bobs).await;
    set_state(
        &c,
        &carol,
        &room,
        "m.room.topic",
        json!({"topic": "Carol's topic"}),
    )
    .await;
    set_state(
        &c,
        &carol,
        &room,
        "m.room.name",
        json!({"name": "Carol's name"}),
    )
    .await;
    let carols = numbered("Carol, alone", 0..3);
    send_all(&c, &carol, &room, &carols).await;

    let c = c.restart_federated().await;
    let everyone = [(&a, &alice), (&b, &bob), (&c, &carol)];
    all.extend(bobs);
    all.extend(carols);
    all.sort();
    for (api, who) in everyone {
        eventually(
            CATCH_UP,
            &format!("every message on {}", who.user_id),
            || async {
                let mut seen = texts(api, who, &room).await;
                seen.sort();
                seen == all
            },
        )
        .await;
    }
    eventually(CATCH_UP, "the same state on the three servers", || async {
        let a_state = event_ids(&state(&a, &alice, &room).await);
        a_state == event_ids(&state(&b, &bob, &room).await)
            && a_state == event_ids(&state(&c, &carol, &room).await)
    })
    .await;
    let resolved = state(&a, &alice, &room).await;
    assert_eq!(content_of(&resolved, "m.room.name")["name"], "Carol's name");
}

#[tokio::test]
async fn events_lost_on_the_way_are_fetched_when_a_later_one_names_them() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    send_text(&a, &alice, &room, "before").await;
    wait_for_texts(&b, &bob, &room, &["before".to_owned()]).await;

    // Bob's node is away while Alice writes, and what was queued for it is lost (as if Alice's
    // node had been restored from an older copy): only what she sends next reaches Bob.
    let b = b.stop().await;
    let lost = numbered("lost on the way", 0..150);
    send_all(&a, &alice, &room, &lost).await;
    let b_name = bob.user_id.split_once(':').unwrap().1.to_owned();
    a.node
        .store()
        .outbox_drop_destination(b_name)
        .await
        .unwrap();
    let b = b.start_federated().await;
    send_text(&a, &alice, &room, "after").await;

    let mut expected = vec!["before".to_owned()];
    expected.extend(lost);
    expected.push("after".to_owned());
    wait_for_texts(&b, &bob, &room, &expected).await;
}

#[tokio::test]
async fn a_change_by_a_member_whose_power_was_taken_meanwhile_does_not_win() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let mut levels = content_of(&state(&a, &alice, &room).await, "m.room.power_levels").clone();
    levels["users"][&bob.user_id] = 50.into();
    set_state(&a, &alice, &room, "m.room.power_levels", levels.clone()).await;
    set_state(
        &a,
        &alice,
        &room,
        "m.room.topic",
        json!({"topic": "Alice's topic"}),
    )
    .await;
    eventually(
        CATCH_UP,
        "Bob's power and the topic on his server",
        || async {
            let state = state(&b, &bob, &room).await;
            content_of(&state, "m.room.power_levels")["users"][&bob.user_id] == 50
                && content_of(&state, "m.room.topic")["topic"] == "Alice's topic"
        },
    )
    .await;

    // Partitioned: Alice takes Bob's power back; Bob, not knowing, changes the topic, and his
    // own server shows his topic meanwhile.
    let b = b.restart_offline().await;
    levels["users"][&bob.user_id] = 0.into();
    set_state(&a, &alice, &room, "m.room.power_levels", levels).await;
    set_state(
        &b,
        &bob,
        &room,
        "m.room.topic",
        json!({"topic": "Bob's topic"}),
    )
    .await;
    assert_eq!(
        content_of(&state(&b, &bob, &room).await, "m.room.topic")["topic"],
        "Bob's topic"
    );

    // Healed: Alice's change came first in the room's auth order, so Bob's is not allowed.
    let b = b.restart_federated().await;
    eventually(
        CATCH_UP,
        "Bob's server to learn he lost his power",
        || async {
            content_of(&state(&b, &bob, &room).await, "m.room.power_levels")["users"][&bob.user_id]
                == 0
        },
    )
    .await;
    eventually(CATCH_UP, "the same state on both servers", || async {
        event_ids(&state(&a, &alice, &room).await) == event_ids(&state(&b, &bob, &room).await)
    })
    .await;
    for (api, who) in [(&a, &alice), (&b, &bob)] {
        assert_eq!(
            content_of(&state(api, who, &room).await, "m.room.topic")["topic"],
            "Alice's topic",
            "on {}",
            who.user_id
        );
    }
}
