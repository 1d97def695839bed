//! Presence as clients see it: set and read, refused to others, `set_presence` on `/sync`, the
//! `presence` section of `/sync` (waking a long-poll for room-mates only), and other servers'
//! users online while their node is connected.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client_api::test_support::{Api, Person, person};
use crate::federation::room_tests::{eventually, two_nodes_in_a_room};

async fn set_presence(api: &Api, who: &Person, of: &str, body: Value) -> (u16, Value) {
    api.put(&format!("/v3/presence/{of}/status"), Some(&who.token), body)
        .await
}

async fn presence(api: &Api, who: &Person, of: &str) -> (u16, Value) {
    api.get(&format!("/v3/presence/{of}/status"), Some(&who.token))
        .await
}

async fn sync(api: &Api, who: &Person, query: &str) -> Value {
    let (status, body) = api
        .get(&format!("/v3/sync?{query}"), Some(&who.token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `m.presence` events of a sync response, as (sender, presence, status_msg).
fn presence_events(synced: &Value) -> Vec<(String, String, Option<String>)> {
    synced["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.presence")
        .map(|e| {
            (
                e["sender"].as_str().unwrap_or_default().to_owned(),
                e["content"]["presence"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["content"]["status_msg"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Alice and Dave in a room on one node; Carol in none.
pub(crate) async fn room_mates_and_a_stranger() -> (Api, Person, Person, Person) {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let dave = person(&api, "dave").await;
    let carol = person(&api, "carol").await;
    let room = api
        .create_room(
            &alice.token,
            json!({"preset": "public_chat", "invite": [dave.user_id]}),
        )
        .await;
    let (status, body) = api
        .post(&format!("/v3/join/{room}"), Some(&dave.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    (api, alice, dave, carol)
}

#[tokio::test]
async fn presence_is_set_by_its_user_and_read_by_room_mates_only() {
    let (api, alice, dave, carol) = room_mates_and_a_stranger().await;
    let (status, body) = set_presence(
        &api,
        &alice,
        &alice.user_id,
        json!({"presence": "unavailable", "status_msg": "at lunch"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for reader in [&alice, &dave] {
        let (status, body) = presence(&api, reader, &alice.user_id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                &body["presence"],
                &body["status_msg"],
                &body["currently_active"]
            ),
            (&json!("unavailable"), &json!("at lunch"), &json!(false))
        );
        assert!(
            body["last_active_ago"]
                .as_u64()
                .is_some_and(|ago| ago < 60_000)
        );
    }

    // Nobody sets another's presence; a stranger does not read it.
    let (status, body) =
        set_presence(&api, &dave, &alice.user_id, json!({"presence": "online"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    let (status, body) = presence(&api, &carol, &alice.user_id).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    // A presence this server does not know, or a status message of a novel's size.
    let (status, body) =
        set_presence(&api, &alice, &alice.user_id, json!({"presence": "busy"})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    let novel = json!({"presence": "online", "status_msg": "x".repeat(2000)});
    let (status, body) = set_presence(&api, &alice, &alice.user_id, novel).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    assert_eq!(
        presence(&api, &alice, &alice.user_id).await.1["status_msg"],
        "at lunch"
    );

    // A sync does not override what Alice set; a sync's set_presence does what it says.
    sync(&api, &alice, "timeout=0").await;
    assert_eq!(
        presence(&api, &dave, &alice.user_id).await.1["presence"],
        "unavailable"
    );
    assert_eq!(
        presence(&api, &carol, &carol.user_id).await.1["presence"],
        "offline"
    );
    sync(&api, &carol, "timeout=0&set_presence=offline").await;
    assert_eq!(
        presence(&api, &carol, &carol.user_id).await.1["presence"],
        "offline"
    );
    sync(&api, &carol, "timeout=0").await;
    let (_, body) = presence(&api, &carol, &carol.user_id).await;
    assert_eq!(
        (&body["presence"], &body["currently_active"]),
        (&json!("online"), &json!(true))
    );
    sync(&api, &carol, "timeout=0&set_presence=unavailable").await;
    assert_eq!(
        presence(&api, &carol, &carol.user_id).await.1["presence"],
        "unavailable"
    );

    // What Alice set survives a restart.
    let api = api.restart_with(|_| {}).await;
    let (_, body) = presence(&api, &dave, &alice.user_id).await;
    assert_eq!(
        (&body["presence"], &body["status_msg"]),
        (&json!("unavailable"), &json!("at lunch"))
    );
}

#[tokio::test]
async fn sync_carries_room_mates_presence_and_a_long_poll_wakes_for_them_only() {
    let (api, alice, dave, carol) = room_mates_and_a_stranger().await;
    let first = sync(&api, &alice, "timeout=0").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    assert!(since.contains("_p"), "{since}");
    assert!(
        presence_events(&first).contains(&(alice.user_id.clone(), "online".into(), None)),
        "a first sync shows who is online, Alice herself too: {first}"
    );
    // Tokens from before presence still work.
    for old in ["s12_t3", "s12"] {
        sync(&api, &alice, &format!("since={old}&timeout=0")).await;
    }
    let (status, body) = api
        .get("/v3/sync?since=s12_t3_pX", Some(&alice.token))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );

    // Dave sets a status while Alice waits: her long-poll ends with it.
    let waiting = api.sync_in_background(&alice.token, &since, 20_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "sync returned with nothing new");
    set_presence(
        &api,
        &dave,
        &dave.user_id,
        json!({"presence": "unavailable", "status_msg": "brb"}),
    )
    .await;
    let (waited, synced) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(
        presence_events(&synced),
        [(
            dave.user_id.clone(),
            "unavailable".to_owned(),
            Some("brb".to_owned())
        )],
        "{synced}"
    );
    let since = synced["next_batch"].as_str().unwrap().to_owned();

    // A stranger's change neither wakes Alice nor shows to her.
    let query = format!("since={since}&timeout=1500");
    let started = Instant::now();
    let (synced, _) = tokio::join!(sync(&api, &alice, &query), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        set_presence(
            &api,
            &carol,
            &carol.user_id,
            json!({"presence": "unavailable"}),
        )
        .await
    });
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(presence_events(&synced), [], "{synced}");
}

#[tokio::test]
async fn another_servers_user_is_online_while_connected_and_says_when_away() {
    let (a, b, alice, bob, _room) = two_nodes_in_a_room().await;
    let (status, body) = presence(&a, &alice, &bob.user_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["presence"], &body["currently_active"]),
        (&json!("online"), &json!(true))
    );

    // Bob says he is away: his server tells Alice's (an m.presence EDU).
    let since = sync(&a, &alice, "timeout=0").await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    set_presence(
        &b,
        &bob,
        &bob.user_id,
        json!({"presence": "unavailable", "status_msg": "meeting"}),
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "Bob away on Alice's server",
        || async {
            let body = presence(&a, &alice, &bob.user_id).await.1;
            body["presence"] == "unavailable" && body["status_msg"] == "meeting"
        },
    )
    .await;
    let synced = sync(&a, &alice, &format!("since={since}&timeout=0")).await;
    assert!(
        presence_events(&synced).contains(&(
            bob.user_id.clone(),
            "unavailable".into(),
            Some("meeting".into())
        )),
        "{synced}"
    );

    // Bob's node stops: offline, last active when it went.
    b.stop().await;
    eventually(Duration::from_secs(15), "Bob offline", || async {
        presence(&a, &alice, &bob.user_id).await.1["presence"] == "offline"
    })
    .await;
    let (_, body) = presence(&a, &alice, &bob.user_id).await;
    assert!(
        body["last_active_ago"]
            .as_u64()
            .is_some_and(|ago| ago < 60_000),
        "{body}"
    );
}
