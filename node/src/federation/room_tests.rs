//! Rooms across servers over real libp2p connections: invites, joins, messages both ways, what
//! each side's users see, and what happens to hostile input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client_api::test_support::Api;

pub(crate) use crate::client_api::test_support::{Person, person};

pub(crate) async fn send_text(api: &Api, who: &Person, room: &str, text: &str) -> String {
    let txn = format!("t{}", rand_suffix());
    let (status, body) = api
        .put(
            &format!("/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

/// The texts of the room's messages as `who` reads them with /messages, oldest first.
pub(crate) async fn texts(api: &Api, who: &Person, room: &str) -> Vec<String> {
    let (status, body) = api
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=1000"),
            Some(&who.token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut texts: Vec<String> = body["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    texts.reverse();
    texts
}

/// Polls until `check` holds (or fails the test after `within`).
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes connected over loopback libp2p, Alice on the first and Bob on the second, and a
/// room Alice created with `create` (a createRoom body, to which Bob's invite is added); Bob
/// has not answered yet.
pub(crate) async fn alice_invites_bob(create: Value) -> (Api, Api, Person, Person, String) {
    alice_invites_bob_with(create, |_| {}).await
}

/// The same, with the second node (Bob's) started as `configure` says, on the loopback overlay.
pub(crate) async fn alice_invites_bob_with(
    mut create: Value,
    configure: impl FnOnce(&mut crate::Config),
) -> (Api, Api, Person, Person, String) {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_with(|config| {
        config.p2p = Some(crate::TransportConfig::loopback());
        configure(config);
    })
    .await;
    a.connect(&b).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    create["invite"] = json!([bob.user_id]);
    let (status, body) = a.post("/v3/createRoom", Some(&alice.token), create).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    (a, b, alice, bob, room)
}

/// Two nodes connected over loopback libp2p, Alice on the first and Bob on the second, in a
/// room Alice created and Bob joined by invite.
pub(crate) async fn two_nodes_in_a_room() -> (Api, Api, Person, Person, String) {
    two_nodes_in_a_room_with(|_| {}).await
}

/// The same, with Bob's node started as `configure` says.
pub(crate) async fn two_nodes_in_a_room_with(
    configure: impl FnOnce(&mut crate::Config),
) -> (Api, Api, Person, Person, String) {
    let (a, b, alice, bob, room) = alice_invites_bob_with(
        json!({"preset": "private_chat", "name": "Across"}),
        configure,
    )
    .await;

    // Bob's client sees the invite with the room's name, then joins by room id alone.
    let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
    let invite = &synced["rooms"]["invite"][&room]["invite_state"]["events"];
    assert!(
        invite.as_array().is_some_and(|events| events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Across")),
        "Bob sees the invite with the room's name: {synced}"
    );
    let (status, body) = b
        .post(&format!("/v3/join/{room}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    (a, b, alice, bob, room)
}

/// Another room of Alice's (made with `create`, a createRoom body to which Bob's invite is
/// added) that Bob joined, on the nodes `two_nodes_in_a_room` started.
pub(crate) async fn another_room(
    (a, alice): (&Api, &Person),
    (b, bob): (&Api, &Person),
    mut create: Value,
) -> String {
    create["invite"] = json!([bob.user_id]);
    let (status, body) = a.post("/v3/createRoom", Some(&alice.token), create).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let (status, body) = b
        .post(&format!("/v3/join/{room}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    room
}

/// Shows the nodes' logs in a failing test's output (RUST_LOG picks the level).
pub(crate) fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hyphae_node=info".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn members(api: &Api, who: &Person, room: &str) -> Vec<String> {
    let (status, body) = api
        .get(
            &format!("/v3/rooms/{room}/joined_members"),
            Some(&who.token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut members: Vec<String> = body["joined"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    members.sort();
    members
}

#[tokio::test]
async fn users_on_two_servers_invite_join_and_chat_both_ways() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let both = {
        let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
        both.sort();
        both
    };
    assert_eq!(members(&b, &bob, &room).await, both);
    eventually(
        Duration::from_secs(10),
        "Alice's server to see Bob join",
        || async { members(&a, &alice, &room).await == both },
    )
    .await;

    send_text(&a, &alice, &room, "hello Bob").await;
    eventually(
        Duration::from_secs(10),
        "Alice's message on Bob's server",
        || async { texts(&b, &bob, &room).await == ["hello Bob"] },
    )
    .await;
    send_text(&b, &bob, &room, "hi Alice").await;
    eventually(
        Duration::from_secs(10),
        "Bob's reply on Alice's server",
        || async { texts(&a, &alice, &room).await == ["hello Bob", "hi Alice"] },
    )
    .await;

    // Both servers hold the same room state.
    let (_, state_a) = a
        .get(&format!("/v3/rooms/{room}/state"), Some(&alice.token))
        .await;
    let (_, state_b) = b
        .get(&format!("/v3/rooms/{room}/state"), Some(&bob.token))
        .await;
    assert_eq!(event_ids(&state_a), event_ids(&state_b));
}

pub(crate) fn event_ids(events: &Value) -> Vec<String> {
    let mut ids: Vec<String> = events
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_invite_from_another_server_can_be_declined() {
    let (a, b, alice, bob, room) = alice_invites_bob(json!({"preset": "private_chat"})).await;
    let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
    assert!(synced["rooms"]["invite"][&room].is_object(), "{synced}");
    let since = synced["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = b
        .post(
            &format!("/v3/rooms/{room}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, synced) = b
        .get(&format!("/v3/sync?since={since}"), Some(&bob.token))
        .await;
    assert!(synced["rooms"]["leave"][&room].is_object(), "{synced}");
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");

    // Alice's server learns of the refusal.
    let bob_id = bob.user_id.clone();
    eventually(
        Duration::from_secs(10),
        "Bob's refusal on Alice's server",
        || async {
            let (_, member) = a
                .get(
                    &format!("/v3/rooms/{room}/state/m.room.member/{bob_id}"),
                    Some(&alice.token),
                )
                .await;
            member["membership"] == "leave"
        },
    )
    .await;
}

#[tokio::test]
async fn typing_and_read_receipts_reach_the_other_server() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room().await;
    let event_id = send_text(&a, &alice, &room, "read me").await;
    eventually(
        Duration::from_secs(10),
        "the message on Bob's server",
        || async { texts(&b, &bob, &room).await == ["read me"] },
    )
    .await;
    let (status, body) = b
        .put(
            &format!("/v3/rooms/{room}/typing/{}", bob.user_id),
            Some(&bob.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = b
        .post(
            &format!("/v3/rooms/{room}/receipt/m.read/{event_id}"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let ephemeral = |kind: &'static str| {
        let (a, alice, room) = (&a, &alice, room.clone());
        async move {
            let (_, synced) = a.get("/v3/sync", Some(&alice.token)).await;
            synced["rooms"]["join"][&room]["ephemeral"]["events"]
                .as_array()
                .and_then(|events| events.iter().find(|e| e["type"] == kind).cloned())
                .unwrap_or_default()
        }
    };
    let bob_id = bob.user_id.clone();
    eventually(
        Duration::from_secs(10),
        "Bob typing, seen on Alice's server",
        || {
            let typing = ephemeral("m.typing");
            let bob_id = bob_id.clone();
            async move { typing.await["content"]["user_ids"] == json!([bob_id]) }
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "Bob's receipt on Alice's server",
        || {
            let receipt = ephemeral("m.receipt");
            let (bob_id, event_id) = (bob_id.clone(), event_id.clone());
            async move { receipt.await["content"][&event_id]["m.read"][&bob_id].is_object() }
        },
    )
    .await;
}

#[tokio::test]
async fn a_public_room_on_another_server_is_joined_by_its_alias() {
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    let (status, body) = a
        .post(
            "/v3/createRoom",
            Some(&alice.token),
            json!({"preset": "public_chat", "room_alias_name": "hall"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#hall:{}", a.node.server_name());
    send_text(&a, &alice, &room, "welcome to the hall").await;

    let (status, body) = b
        .post(
            &format!("/v3/join/{}", crate::rooms::urlencode(&alias)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room);
    // What was said before Bob's server joined comes as history.
    assert_eq!(texts(&b, &bob, &room).await, ["welcome to the hall"]);

    // An alias nobody has is a clear 404, not a hang.
    let missing = format!("#nowhere:{}", a.node.server_name());
    let (status, body) = b
        .post(
            &format!("/v3/join/{}", crate::rooms::urlencode(&missing)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errcode"], "M_NOT_FOUND");
}

/// The state events a client learns of a joined room from one sync: its `state` section and
/// the state events in its timeline, as (type, state key).
fn synced_state(sync: &Value, room: &str) -> Vec<(String, String)> {
    let joined = &sync["rooms"]["join"][room];
    ["state", "timeline"]
        .iter()
        .flat_map(|section| {
            joined[section]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|e| {
            Some((
                e["type"].as_str()?.to_owned(),
                e["state_key"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_room_joined_on_another_server_comes_whole_whatever_the_timeline_limit() {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let alice = person(&a, "alice").await;
    let bob = person(&b, "bob").await;
    for limit in [1, 20] {
        let room = a
            .create_room(
                &alice.token,
                json!({
                    "preset": "private_chat",
                    "name": format!("Secret {limit}"),
                    "invite": [bob.user_id],
                    "initial_state": [{
                        "type": "m.room.encryption",
                        "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                    }],
                }),
            )
            .await;
        let filter = json!({"room": {"timeline": {"limit": limit}}}).to_string();
        let filter = crate::rooms::urlencode(&filter);
        let (_, before) = b
            .get(&format!("/v3/sync?filter={filter}"), Some(&bob.token))
            .await;
        let since = before["next_batch"].as_str().unwrap().to_owned();
        assert!(before["rooms"]["invite"][&room].is_object(), "{before}");
        let (status, body) = b
            .post(&format!("/v3/join/{room}"), Some(&bob.token), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");

        for since in [Some(since.as_str()), None] {
            let path = match since {
                Some(since) => format!("/v3/sync?filter={filter}&since={since}"),
                None => format!("/v3/sync?filter={filter}"),
            };
            let (status, sync) = b.get(&path, Some(&bob.token)).await;
            assert_eq!(status, 200, "{sync}");
            let state = synced_state(&sync, &room);
            for (kind, key) in [
                ("m.room.create", ""),
                ("m.room.encryption", ""),
                ("m.room.name", ""),
                ("m.room.power_levels", ""),
                ("m.room.member", alice.user_id.as_str()),
                ("m.room.member", bob.user_id.as_str()),
            ] {
                assert!(
                    state.contains(&(kind.to_owned(), key.to_owned())),
                    "limit {limit}, since {since:?}: Bob's client is not told of {kind} {key:?} \
                     in the room he joined on another server: {}",
                    sync["rooms"]["join"][&room]
                );
            }
        }
    }
}

/// The types of the events in a sync response's section (`state` or `timeline`).
fn event_types(section: &Value) -> Vec<String> {
    section["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_room_joined_through_another_server_comes_whole_in_sync() {
    let (_a, b, _alice, bob, room) = alice_invites_bob(json!({
        "preset": "private_chat",
        "initial_state": [{"type": "m.room.encryption", "state_key": "",
                           "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
    }))
    .await;
    let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
    assert!(synced["rooms"]["invite"][&room].is_object(), "{synced}");
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = b
        .post(&format!("/v3/join/{room}"), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Bob's server knew only the invite before the join: the room still comes with its state
    // (a client without it cannot tell the room is encrypted, nor send in it), the timeline
    // starting at the join, limited so the client pages back for the rest. So on an
    // incremental sync and on a first one.
    let (_, incremental) = b
        .get(&format!("/v3/sync?since={since}"), Some(&bob.token))
        .await;
    let (_, first) = b.get("/v3/sync", Some(&bob.token)).await;
    for synced in [&incremental, &first] {
        let joined = &synced["rooms"]["join"][&room];
        let state = event_types(&joined["state"]);
        for kind in [
            "m.room.create",
            "m.room.power_levels",
            "m.room.encryption",
            "m.room.member",
        ] {
            assert!(state.iter().any(|k| k == kind), "no {kind} in {joined}");
        }
        let timeline = &joined["timeline"];
        assert_eq!(event_types(timeline), ["m.room.member"], "{joined}");
        assert_eq!(timeline["events"][0]["content"]["membership"], "join");
        assert_eq!(timeline["limited"], true, "{joined}");
    }

    // Paging back from the timeline's start finds the invite, then the room's creation.
    let from = incremental["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .unwrap();
    let (status, page) = b
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&from={from}&limit=100"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let older = event_types(&json!({"events": page["chunk"]}));
    assert_eq!(
        older.first().map(String::as_str),
        Some("m.room.member"),
        "{page}"
    );
    assert_eq!(page["chunk"][0]["content"]["membership"], "invite");
    assert_eq!(
        older.last().map(String::as_str),
        Some("m.room.create"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_sent_the_moment_a_join_is_accepted_reaches_the_joining_server() {
    let (a, b, alice, bob, room) = alice_invites_bob(json!({"preset": "private_chat"})).await;
    eventually(Duration::from_secs(10), "Bob's invite", || async {
        let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
        synced["rooms"]["invite"][&room].is_object()
    })
    .await;

    // Alice writes as soon as her server has accepted Bob's join: while his server is still
    // reading the answer to it. The message must not be lost on the way.
    let join_path = format!("/v3/join/{room}");
    let join = b.post(&join_path, Some(&bob.token), json!({}));
    let write_at_once = async {
        let both = 2;
        eventually(
            Duration::from_secs(10),
            "Bob's join on Alice's server",
            || async { members(&a, &alice, &room).await.len() == both },
        )
        .await;
        send_text(&a, &alice, &room, "right after your join").await;
    };
    let ((status, body), ()) = tokio::join!(join, write_at_once);
    assert_eq!(status, 200, "{body}");
    // Seen live, in Bob's sync (paging back would fetch it from Alice's server anyway).
    let mut since: Option<String> = None;
    let mut seen = Vec::new();
    let started = Instant::now();
    while !seen.iter().any(|t| t == "right after your join") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Bob's sync never showed Alice's message: {seen:?}"
        );
        let path = match &since {
            Some(since) => format!("/v3/sync?since={since}&timeout=1000"),
            None => "/v3/sync".to_owned(),
        };
        let (_, synced) = b.get(&path, Some(&bob.token)).await;
        since = synced["next_batch"].as_str().map(str::to_owned);
        let events = synced["rooms"]["join"][&room]["timeline"]["events"].clone();
        seen.extend(
            events
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)),
        );
    }
}
