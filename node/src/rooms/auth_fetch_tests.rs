//! A relaying member cannot censor an honest event by withholding what it needs: Henry's
//! server sends an event citing Henry's newer member event; Mallory's, also in the room, relays
//! the event to Bob's node first and stalls or refuses when asked for that auth event. Both
//! are servers the test runs (real libp2p peers with their own keys).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use ruma::events::StateEventType;
use serde_json::{Value, json};

use crate::client_api::test_support::Api;
use crate::federation::hostile_peer::{Peer, accepting};
use crate::federation::hostile_tests::tip;
use crate::federation::room_tests::{Person, eventually, person, texts};
use crate::rooms::urlencode;

/// Requests a server got, by path.
type Asked = Arc<Mutex<Vec<String>>>;

/// The events a server hands out by `/event/{id}` (path → PDU), while `answering`.
#[derive(Clone, Default)]
struct Holds {
    events: Arc<Mutex<HashMap<String, Value>>>,
    answering: Arc<std::sync::atomic::AtomicBool>,
}

/// Henry's server: answers `/event` for what it holds (while answering), takes everything
/// else.
fn honest(holds: Holds) -> axum::Router {
    accepting().route(
        "/_matrix/federation/v1/event/{event_id}",
        axum::routing::get(move |uri: Uri| {
            let holds = holds.clone();
            async move {
                let pdu = holds.events.lock().unwrap().get(uri.path()).cloned();
                match pdu.filter(|_| holds.answering.load(std::sync::atomic::Ordering::SeqCst)) {
                    Some(pdu) => (
                        StatusCode::OK,
                        axum::Json(json!({"origin": "", "origin_server_ts": 0, "pdus": [pdu]})),
                    ),
                    None => (
                        StatusCode::NOT_FOUND,
                        axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "no"})),
                    ),
                }
            }
        }),
    )
}

/// Mallory's server: takes what it is sent, and asked for an event, never answers (`stall`) or
/// says it has none.
fn withholding(stall: bool, asked: Asked) -> axum::Router {
    accepting().route(
        "/_matrix/federation/v1/event/{event_id}",
        axum::routing::get(move |uri: Uri| {
            let asked = asked.clone();
            async move {
                asked.lock().unwrap().push(uri.path().to_owned());
                if stall {
                    std::future::pending::<()>().await;
                }
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"errcode": "M_NOT_FOUND", "error": "no"})),
                )
            }
        }),
    )
}

struct Scene {
    b: Api,
    bob: Person,
    room: String,
    henrys: Peer,
    mallorys: Peer,
    /// Where Henry's new member event is asked for: Bob's node has not got it.
    auth_path: String,
    /// Henry's messages citing it, as signed.
    messages: Vec<(String, Value)>,
}

/// Bob's public room on his node, Henry and Mallory joined from servers of their own; Henry
/// changes his name (not sent to Bob's node, but held by his server in `holds`) and says each
/// of `says` citing that change.
async fn scene(holds: Holds, mallorys: axum::Router, says: &[&str]) -> Scene {
    crate::federation::room_tests::log_to_test_output();
    let b = Api::start_federated().await;
    let bob = person(&b, "bob").await;
    let room = b.create_public_room(&bob.token).await;
    let henrys = Peer::start(honest(holds.clone())).await;
    let mallorys = Peer::start(mallorys).await;
    for (peer, name) in [(&henrys, "henry"), (&mallorys, "mallory")] {
        peer.connect(&b).await;
        peer.join(&b, &room, name).await;
    }
    let henry = henrys.user("henry");
    let tip = tip(&b, &room).await;
    let (renamed_id, renamed) = henrys.event(
        &tip,
        &henry,
        "m.room.member",
        Some(&henry),
        json!({"membership": "join", "displayname": "Henry II"}),
    );
    let auth_path = format!("/_matrix/federation/v1/event/{}", urlencode(&renamed_id));
    holds.events.lock().unwrap().insert(auth_path, renamed);
    let mut after = tip.clone();
    after.state.insert(
        (StateEventType::RoomMember, henry.clone()),
        renamed_id.clone(),
    );
    let messages = says
        .iter()
        .map(|text| {
            henrys.event(
                &after,
                &henry,
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": text}),
            )
        })
        .collect();
    Scene {
        b,
        bob,
        room,
        henrys,
        mallorys,
        auth_path: format!("/_matrix/federation/v1/event/{}", urlencode(&renamed_id)),
        messages,
    }
}

#[tokio::test]
async fn a_relay_that_stalls_an_auth_event_does_not_keep_the_event_out() {
    let holds = Holds::default();
    holds
        .answering
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let asked = Asked::default();
    let s = scene(
        holds.clone(),
        withholding(true, asked.clone()),
        &["honest words"],
    )
    .await;

    // Mallory relays Henry's message before Henry's server sends it, and never answers for the
    // auth event; Henry's server has it.
    let relayed = s.messages[0].1.clone();
    let relay = tokio::spawn({
        let (mallorys, b) = (
            s.mallorys.transport.clone(),
            s.b.node.server_name().to_owned(),
        );
        async move {
            let body =
                json!({"origin": mallorys.server_name(), "origin_server_ts": 0, "pdus": [relayed]});
            let request = axum::http::Request::put("/_matrix/federation/v1/send/relay")
                .header("content-type", "application/json")
                .body(axum::body::Bytes::from(body.to_string()))
                .unwrap();
            mallorys.request(b.as_str(), request).await
        }
    });
    // Mallory's server costs one short wait, then Henry's is asked.
    eventually(
        Duration::from_secs(12),
        "Henry's message on Bob's node",
        || async { texts(&s.b, &s.bob, &s.room).await == ["honest words"] },
    )
    .await;
    assert!(
        asked.lock().unwrap().contains(&s.auth_path),
        "Mallory's server was asked first: {asked:?}"
    );
    let answer = relay.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn an_event_whose_auth_events_no_one_supplies_waits_and_is_taken_later() {
    let holds = Holds::default();
    let s = scene(
        holds.clone(),
        withholding(false, Asked::default()),
        &["first", "second"],
    )
    .await;

    // Nobody answers for the auth event now (Henry's server is as good as away): the messages
    // are refused for the moment, and nothing of them is kept that would refuse them later.
    let (status, answer) = s
        .mallorys
        .send(
            &s.b,
            s.messages.iter().map(|(_, pdu)| pdu.clone()).collect(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for (id, _) in &s.messages {
        assert!(answer["pdus"][id]["error"].is_string(), "{answer}");
        assert!(
            s.b.node.store().pdu(id.clone()).await.unwrap().is_none(),
            "{id} was stored (rejected for good)"
        );
    }
    assert!(texts(&s.b, &s.bob, &s.room).await.is_empty());

    // Henry's server answers again. Its own delivery of the first message is taken; the
    // second is taken when Bob's node tries again.
    holds
        .answering
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, answer) = s.henrys.send(&s.b, vec![s.messages[0].1.clone()]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["pdus"][&s.messages[0].0].get("error").is_none(),
        "{answer}"
    );
    assert_eq!(texts(&s.b, &s.bob, &s.room).await, ["first"]);
    let taken = s.b.node.app_state().rooms.retry_set_aside(true).await;
    assert_eq!(taken, 1, "the second message, tried again");
    assert_eq!(texts(&s.b, &s.bob, &s.room).await, ["first", "second"]);
}

#[tokio::test]
async fn one_server_cannot_push_everyone_elses_events_out_of_those_set_aside() {
    let api = Api::start().await;
    let rooms = &api.node.app_state().rooms;
    let room: ruma::OwnedRoomId = "!room:example".try_into().unwrap();
    let set_aside = |n: usize, server: &str| {
        let id = ruma::EventId::parse(format!("${server}{n:040}")).unwrap();
        let pdu = serde_json::value::to_raw_value(&json!({"sender": format!("@u:{server}")}));
        rooms.set_aside(&room, &id, pdu.unwrap());
        id
    };
    let honest = set_aside(0, "honest.example");
    let flood: Vec<_> = (0..100).map(|n| set_aside(n, "flood.example")).collect();
    let waiting = rooms.inner.set_aside.lock();
    let held: Vec<&ruma::OwnedEventId> = waiting.iter().map(|w| &w.event_id).collect();
    assert!(
        held.contains(&&honest),
        "the honest server's event was pushed out"
    );
    assert_eq!(held.len(), 33, "32 of the flood and the honest one");
    assert!(
        held.contains(&&flood[99]) && !held.contains(&&flood[67]),
        "the flood's newest stay"
    );
}
