//! Floods by hostile servers, each sent over a real libp2p connection by a peer with its own
//! key: PDUs from a server with no member in the room, refused events relayed by a member,
//! EDUs for made-up users and to-device spam, one-time-key drains, invite spam and Sybil
//! members. Each is refused, or taken only within the node's limits (`PeerLimits`, lowered
//! here so a test reaches them in seconds).

use std::time::Duration;

use ruma::RoomVersionId;
use serde_json::{Value, json};

use reqwest::Method;

use super::hostile_peer::{Peer, stranger_key};
use super::hostile_tests::{
    Tip, draft_on, event_id, send_pdus, sign, still_delivers, tip, to_value,
};
use super::room_tests::{eventually, send_text, texts, two_nodes_in_a_room_with};
use crate::RateLimit;
use crate::client_api::test_support::{Api, person};
use crate::signing::SigningKey;

const WITHIN: Duration = Duration::from_secs(10);

/// A limit of `burst` at once and (for the test's length) none after.
fn only(burst: u32) -> RateLimit {
    RateLimit {
        burst,
        per_second: 0.0001,
    }
}

/// A node on the loopback overlay, with limits as `configure` sets them.
async fn node_with(configure: impl FnOnce(&mut crate::PeerLimits)) -> Api {
    Api::start_with(|config| {
        config.p2p = Some(crate::TransportConfig::loopback());
        configure(&mut config.peer_limits);
    })
    .await
}

/// One number the store answers to `sql` with `param` as ?1.
async fn count(on: &Api, sql: &'static str, param: &str) -> i64 {
    let param = param.to_owned();
    on.node
        .store()
        .read(move |conn| Ok(conn.query_row(sql, [param], |row| row.get(0))?))
        .await
        .unwrap()
}

/// A message from `sender` on `tip`, signed by `key`; its id and the PDU.
fn message(tip: &Tip, sender: &str, key: &SigningKey, body: &str) -> (String, Value) {
    let content = json!({"msgtype": "m.text", "body": body});
    let mut pdu = draft_on(tip, sender, "m.room.message", None, content);
    sign(key, &tip.version, &mut pdu);
    (event_id(&tip.version, &pdu), to_value(&pdu))
}

fn error_of<'a>(answer: &'a Value, id: &str) -> &'a str {
    answer["pdus"][id]["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_server_with_no_member_in_a_room_gets_an_error_per_pdu_and_nothing_is_stored() {
    let (a, b, alice, bob, room) = two_nodes_in_a_room_with(|_| {}).await;
    let mallory = Peer::bare().await;
    mallory.connect(&b).await;
    let stored = "SELECT count(*) FROM events WHERE room_id = ?1";
    let before = count(&b, stored, &room).await;

    // A full transaction of large messages from a server that only knows the room's id.
    let base = tip(&b, &room).await;
    let junk = "x".repeat(8 * 1024);
    let (ids, pdus): (Vec<String>, Vec<Value>) = (0..50)
        .map(|n| {
            message(
                &base,
                &mallory.user("mallory"),
                &mallory.key,
                &format!("{n}{junk}"),
            )
        })
        .unzip();
    let (status, answer) = mallory.send_txn(&b, pdus, Vec::new()).await;
    assert_eq!(status, 200, "{answer}");
    for id in &ids {
        assert!(
            error_of(&answer, id).contains("no member"),
            "{id} not refused: {answer}"
        );
    }
    assert_eq!(count(&b, stored, &room).await, before, "nothing stored");
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
}

#[tokio::test]
async fn refused_events_a_member_relays_are_kept_only_within_a_budget() {
    const KEPT: u32 = 5;
    let (a, b, alice, bob, room) = two_nodes_in_a_room_with(|config| {
        config.peer_limits.kept_refusals_per_origin = only(KEPT);
    })
    .await;
    let rejected =
        "SELECT count(*) FROM events WHERE room_id = ?1 AND rejection_reason IS NOT NULL";
    let before = count(&b, rejected, &room).await;

    // Messages from a server not in the room (validly signed by it), relayed by Alice's
    // server, which is: each fails the auth rules.
    let eve = stranger_key();
    let sender = format!("@eve:{}", eve.server_name());
    let base = tip(&b, &room).await;
    let (ids, pdus): (Vec<String>, Vec<Value>) = (0..20)
        .map(|n| message(&base, &sender, &eve, &format!("junk {n}")))
        .unzip();
    let (status, answer) = send_pdus(&a, &b, pdus).await;
    assert_eq!(status, 200, "{answer}");
    for id in &ids {
        assert!(!error_of(&answer, id).is_empty(), "{id} taken: {answer}");
    }
    assert_eq!(
        count(&b, rejected, &room).await - before,
        i64::from(KEPT),
        "only the budget's worth kept"
    );
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
}

#[tokio::test]
async fn edu_floods_cost_no_stream_position_fill_no_inbox_and_are_paced() {
    const EDUS: u32 = 60;
    let b = node_with(|limits| {
        limits.edus_per_origin = only(EDUS);
        limits.to_device_per_sender = 10;
    })
    .await;
    let (bob, token, device) = b.register("bob", "password").await;
    let room = b.create_public_room(&token).await;
    let mallory = Peer::bare().await;
    mallory.connect(&b).await;
    let alice = mallory.user("alice");
    b.add_joined_member(&room, &alice).await;
    let changed = |since: String| {
        let (b, token) = (&b, &token);
        async move {
            let (status, body) = b
                .get(&format!("/v3/sync?since={since}&timeout=0"), Some(token))
                .await;
            assert_eq!(status, 200, "{body}");
            body["device_lists"]["changed"].clone()
        }
    };
    let update = |user: &str, stream_id: u64| {
        json!({"edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": "PHONE", "stream_id": stream_id, "prev_id": [],
            "deleted": false,
        }})
    };
    let (_, synced) = b.get("/v3/sync", Some(&token)).await;
    let since = synced["next_batch"].as_str().unwrap().to_owned();

    // A member of Bob's room changes devices: Bob is told (1 EDU).
    mallory
        .send_txn(&b, Vec::new(), vec![update(&alice, 1)])
        .await;
    assert_eq!(changed(since.clone()).await, json!([alice]));
    let position = || *b.node.store().stream_position().borrow();
    let quiet = position();

    // Made-up users sharing no room with anyone here: nothing kept, no stream position taken,
    // so no waiting /sync wakes (40 EDUs).
    let made_up: Vec<Value> = (0..40)
        .map(|n| update(&mallory.user(&format!("u{n}")), 1))
        .collect();
    let (status, _) = mallory.send_txn(&b, Vec::new(), made_up).await;
    assert_eq!(status, 200);
    assert_eq!(position(), quiet, "the stream did not move");
    let kept = "SELECT count(*) FROM remote_device_lists WHERE user_id LIKE ?1";
    assert_eq!(
        count(&b, kept, &format!("@u%:{}", mallory.server_name())).await,
        0
    );

    // To-device spam for Bob's device from one sender: its share of the inbox, no more
    // (15 EDUs).
    let spam: Vec<Value> = (0..15)
        .map(|n| {
            json!({"edu_type": "m.direct_to_device", "content": {
                "sender": mallory.user("mallory"), "type": "m.room_key_request",
                "message_id": format!("m{n}"),
                "messages": {&bob: {&device: {"n": n}}},
            }})
        })
        .collect();
    mallory.send_txn(&b, Vec::new(), spam).await;
    let inbox = "SELECT count(*) FROM to_device_inbox WHERE sender = ?1";
    assert_eq!(count(&b, inbox, &mallory.user("mallory")).await, 10);

    // Past the origin's pace (60 EDUs so far with these), even a change Bob would be told of
    // is dropped.
    let junk: Vec<Value> = (0..4)
        .map(|_| json!({"edu_type": "org.example.junk", "content": {}}))
        .collect();
    mallory.send_txn(&b, Vec::new(), junk).await;
    let (_, synced) = b.get("/v3/sync?timeout=0", Some(&token)).await;
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    let before = position();
    let (status, _) = mallory
        .send_txn(&b, Vec::new(), vec![update(&alice, 2)])
        .await;
    assert_eq!(status, 200, "the transaction is still taken");
    assert_eq!(position(), before, "the EDU was dropped");
    assert!(
        changed(since).await.as_array().is_none_or(Vec::is_empty),
        "dropped past the pace"
    );
}

#[tokio::test]
async fn one_time_keys_are_claimed_only_for_users_sharing_a_room_and_at_a_pace() {
    let b = node_with(|limits| limits.key_claims_per_origin = only(3)).await;
    let (bob, token, device) = b.register("bob", "password").await;
    let one_time_keys: serde_json::Map<String, Value> = (1..=4)
        .map(|n| {
            (
                format!("signed_curve25519:AAAAA{n}"),
                json!({"key": format!("a2V5{}", ["MQ", "Mg", "Mw", "NA"][n - 1]),
                       "signatures": {&bob: {format!("ed25519:{device}"): "c2ln"}}}),
            )
        })
        .collect();
    let (status, body) = b
        .post(
            "/v3/keys/upload",
            Some(&token),
            json!({"one_time_keys": one_time_keys}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let left = || async {
        b.node
            .store()
            .one_time_key_counts(bob.clone(), device.clone())
            .await
            .unwrap()
            .get("signed_curve25519")
            .copied()
            .unwrap_or(0)
    };
    let mallory = Peer::bare().await;
    mallory.connect(&b).await;
    let claim = || {
        let body = json!({"one_time_keys": {&bob: {&device: "signed_curve25519"}}});
        let (b, mallory) = (&b, &mallory);
        async move {
            mallory
                .request(
                    b,
                    Method::POST,
                    "/_matrix/federation/v1/user/keys/claim",
                    Some(body.clone()),
                )
                .await
        }
    };

    // A server sharing no room with Bob gets none of his keys.
    let (status, body) = claim().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_keys"], json!({}), "{body}");
    assert_eq!(left().await, 4);

    // Once one of its users is in Bob's room, it does, at a pace.
    let room = b.create_public_room(&token).await;
    b.add_joined_member(&room, &mallory.user("carol")).await;
    for _ in 0..2 {
        let (status, body) = claim().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["one_time_keys"][&bob][&device]
                .as_object()
                .map(serde_json::Map::len),
            Some(1),
            "{body}"
        );
    }
    let (status, body) = claim().await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED")),
        "{body}"
    );
    assert_eq!(left().await, 2);
}

/// An invite of `invitee` by `from`'s user to a room of its own, as `/invite` v2 carries it;
/// the answer.
async fn invite(from: &Peer, to: &Api, invitee: &str, n: u32) -> (u16, Value) {
    let version = RoomVersionId::V11;
    let room = format!("!spam{n}:{}", from.server_name());
    let mut event: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "room_id": room, "sender": from.user("mallory"), "type": "m.room.member",
        "state_key": invitee, "content": {"membership": "invite"},
        "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(), "depth": 1,
        "prev_events": [], "auth_events": [],
    }))
    .unwrap();
    sign(&from.key, &version, &mut event);
    let id = event_id(&version, &event);
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        crate::rooms::urlencode(&room),
        crate::rooms::urlencode(&id)
    );
    let body = json!({"room_version": "11", "event": event, "invite_room_state": []});
    from.request(to, Method::PUT, &path, Some(body)).await
}

#[tokio::test]
async fn invites_from_a_server_are_paced_per_invitee_and_those_waiting_capped() {
    let b = node_with(|limits| {
        limits.invites_per_origin = only(4);
        limits.invites_per_invitee = only(2);
        limits.pending_invites = 3;
    })
    .await;
    let bob = person(&b, "bob").await;
    let carol = person(&b, "carol").await;
    let mallory = Peer::bare().await;
    mallory.connect(&b).await;
    let status = |answer: (u16, Value)| (answer.0, answer.1["errcode"].as_str().map(str::to_owned));
    let ok = (200, None);
    let paced = (429, Some("M_LIMIT_EXCEEDED".to_owned()));

    assert_eq!(status(invite(&mallory, &b, &bob.user_id, 1).await), ok);
    assert_eq!(status(invite(&mallory, &b, &bob.user_id, 2).await), ok);
    assert_eq!(
        status(invite(&mallory, &b, &bob.user_id, 3).await),
        paced,
        "a third for the same invitee"
    );
    assert_eq!(status(invite(&mallory, &b, &carol.user_id, 4).await), ok);
    assert_eq!(
        status(invite(&mallory, &b, &carol.user_id, 5).await),
        paced,
        "a fifth from the same server"
    );

    // Another server: Bob may have three waiting, no more.
    let trudy = Peer::bare().await;
    trudy.connect(&b).await;
    assert_eq!(status(invite(&trudy, &b, &bob.user_id, 6).await), ok);
    let (code, body) = invite(&trudy, &b, &bob.user_id, 7).await;
    assert_eq!(
        (code, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("waiting"),
        "{body}"
    );
    let (_, synced) = b.get("/v3/sync", Some(&bob.token)).await;
    let invites = synced["rooms"]["invite"].as_object().map_or(0, |i| i.len());
    assert_eq!(invites, 3, "{synced}");
}

/// A join of `name` of `key`'s server on `on`, signed by that server; `on` moves on to it.
fn join(on: &mut Tip, key: &SigningKey, name: &str) -> (String, Value) {
    let user = format!("@{name}:{}", key.server_name());
    let content = json!({"membership": "join"});
    let mut pdu = draft_on(on, &user, "m.room.member", Some(&user), content);
    sign(key, &on.version, &mut pdu);
    let id = event_id(&on.version, &pdu);
    on.prev_events = vec![id.clone()];
    on.depth += 1;
    on.state
        .insert((ruma::events::StateEventType::RoomMember, user), id.clone());
    (id, to_value(&pdu))
}

#[tokio::test]
async fn sybil_members_cost_a_bounded_fan_out_and_outbox() {
    const DESTINATIONS: usize = 4;
    const KEPT: u32 = 2;
    let (a, b, alice, bob, room) = two_nodes_in_a_room_with(|config| {
        config.peer_limits.membership_changes_per_server = only(3);
        config.peer_limits.max_destinations = DESTINATIONS;
        config.peer_limits.outbox_per_destination = KEPT;
    })
    .await;
    let (status, body) = a
        .put(
            &format!("/v3/rooms/{room}/state/m.room.join_rules/"),
            Some(&alice.token),
            json!({"join_rule": "public"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(WITHIN, "the room public on Bob's server", || async {
        let (_, rule) = b
            .get(
                &format!("/v3/rooms/{room}/state/m.room.join_rules/"),
                Some(&bob.token),
            )
            .await;
        rule["join_rule"] == "public"
    })
    .await;

    // One server churning members (joins of made-up users, signed by their made-up server,
    // relayed by Alice's server, one on top of the other): three taken, the rest refused with
    // the reason.
    let churner = stranger_key();
    let mut on = tip(&b, &room).await;
    let (ids, pdus): (Vec<String>, Vec<Value>) = (0..5)
        .map(|n| join(&mut on, &churner, &format!("s{n}")))
        .unzip();
    let (status, answer) = send_pdus(&a, &b, pdus).await;
    assert_eq!(status, 200, "{answer}");
    for id in &ids[..3] {
        assert_eq!(answer["pdus"][id], json!({}), "{answer}");
    }
    for id in &ids[3..] {
        assert!(error_of(&answer, id).contains("faster"), "{answer}");
    }

    // Many servers, a member each: the room now has eight other servers beside Bob's, seven
    // of which nobody can reach.
    let mut on = tip(&b, &room).await;
    let (ids, pdus): (Vec<String>, Vec<Value>) = (0..6)
        .map(|_| join(&mut on, &stranger_key(), "sybil"))
        .unzip();
    let (status, answer) = send_pdus(&a, &b, pdus).await;
    assert_eq!(status, 200, "{answer}");
    for id in &ids {
        assert_eq!(answer["pdus"][id], json!({}), "{answer}");
    }

    // Each of Bob's messages goes to a few servers (Alice's, which is connected, among them),
    // and what waits for servers nobody reaches stays within their share.
    let queued =
        "SELECT count(DISTINCT destination) FROM outbox WHERE kind = 'pdu' AND payload = ?1";
    for n in 0..10 {
        let id = send_text(&b, &bob, &room, &format!("to few {n}")).await;
        let destinations = count(&b, queued, &id).await;
        assert!(
            destinations <= DESTINATIONS as i64,
            "{destinations} destinations"
        );
    }
    eventually(WITHIN, "Alice to get Bob's messages", || async {
        texts(&a, &alice, &room)
            .await
            .iter()
            .any(|t| t == "to few 9")
    })
    .await;
    let most = "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM outbox
                WHERE kind = 'pdu' AND destination != ?1 GROUP BY destination)";
    eventually(WITHIN, "each unreachable destination's share", || async {
        count(&b, most, a.node.server_name()).await <= i64::from(KEPT)
    })
    .await;
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
}
