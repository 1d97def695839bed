//! Hostile federation input: forged, altered, unauthorised and malformed PDUs and transactions
//! sent straight to a node's `/send` by a server in the room (or by Mallory's, which is not),
//! what the node's users see of them afterwards (nothing, or a redacted event where the spec
//! says so), and that the node keeps working.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use ruma::events::StateEventType;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::room_tests::{Person, event_ids, eventually, person, send_text, texts};
use crate::client_api::test_support::Api;
use crate::rooms::rules;
use crate::signing::{KEY_ID, SigningKey};

const WITHIN: Duration = Duration::from_secs(10);

/// A server's signing key as its node holds it: read from the node's data folder.
pub(crate) fn key_of(api: &Api) -> SigningKey {
    let identity = hyphae_p2p::Identity::load_or_create(api.data_dir()).unwrap();
    SigningKey::new(name_of(api), &identity.secret_bytes())
}

/// A key that signs in `server`'s name but is not `server`'s key.
fn impostor_key(server: &str) -> SigningKey {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    SigningKey::new(server.try_into().unwrap(), &secret)
}

fn name_of(api: &Api) -> OwnedServerName {
    api.node.server_name().try_into().unwrap()
}

/// A random server name that is a valid ed25519 key: a server nobody in the test runs.
pub(crate) fn stranger_server() -> String {
    super::hostile_peer::stranger_key()
        .server_name()
        .to_string()
}

pub(crate) async fn room_version(on: &Api, room: &str) -> RoomVersionId {
    let version = on
        .node
        .store()
        .room_version(room.to_owned())
        .await
        .unwrap()
        .expect("a room the node is in");
    RoomVersionId::try_from(version.as_str()).unwrap()
}

/// Where a new event goes in a room: its prev events, its depth, and the state it is built
/// on (its auth events come from there).
#[derive(Clone)]
pub(crate) struct Tip {
    pub(crate) room: String,
    pub(crate) version: RoomVersionId,
    pub(crate) prev_events: Vec<String>,
    pub(crate) depth: i64,
    pub(crate) state: HashMap<(StateEventType, String), String>,
}

/// The room as `on` sees it now: its latest events and current state.
pub(crate) async fn tip(on: &Api, room: &str) -> Tip {
    let store = on.node.store();
    let state = store
        .current_state(room.to_owned())
        .await
        .unwrap()
        .into_iter()
        .map(|(kind, key, id)| ((kind.into(), key), id))
        .collect();
    let prev_events = store.forward_extremities(room.to_owned()).await.unwrap();
    let depth = store
        .pdus(prev_events.clone())
        .await
        .unwrap()
        .iter()
        .map(|p| p.depth)
        .max()
        .unwrap_or(0);
    Tip {
        room: room.to_owned(),
        version: room_version(on, room).await,
        prev_events,
        depth: depth + 1,
        state,
    }
}

/// An unsigned PDU from `sender` as it would be built on the room as `on` sees it now.
pub(crate) async fn draft(
    on: &Api,
    room: &str,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> CanonicalJsonObject {
    draft_on(&tip(on, room).await, sender, kind, state_key, content)
}

/// An unsigned PDU from `sender` built on `tip`.
pub(crate) fn draft_on(
    tip: &Tip,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> CanonicalJsonObject {
    let rules = rules(&tip.version).unwrap();
    let raw_content = serde_json::value::to_raw_value(&content).unwrap();
    let auth_types = ruma::state_res::auth_types_for_event(
        &kind.into(),
        &UserId::parse(sender).unwrap(),
        state_key,
        &raw_content,
        &rules.authorization,
    )
    .unwrap();
    let mut auth_events: Vec<&String> =
        auth_types.iter().filter_map(|k| tip.state.get(k)).collect();
    auth_events.sort();
    auth_events.dedup();
    let mut pdu = json!({
        "room_id": tip.room,
        "sender": sender,
        "type": kind,
        "content": content,
        "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
        "depth": tip.depth,
        "prev_events": tip.prev_events,
        "auth_events": auth_events,
    });
    if let Some(state_key) = state_key {
        pdu["state_key"] = state_key.into();
    }
    serde_json::from_value(pdu).unwrap()
}

/// Adds the content hash and `key`'s signature, as a server signs its events.
pub(crate) fn sign(key: &SigningKey, version: &RoomVersionId, pdu: &mut CanonicalJsonObject) {
    key.hash_and_sign_event(pdu, &rules(version).unwrap().redaction)
        .unwrap();
}

/// The event id of a PDU (its reference hash), whatever its signatures say.
pub(crate) fn event_id(version: &RoomVersionId, pdu: &CanonicalJsonObject) -> String {
    let hash = ruma::signatures::reference_hash(pdu, &rules(version).unwrap()).unwrap();
    format!("${hash}")
}

pub(crate) fn to_value(pdu: &CanonicalJsonObject) -> Value {
    serde_json::to_value(pdu).unwrap()
}

/// Sends `pdus` to `to` in one transaction from `from`; returns the answer.
pub(crate) async fn send_pdus(from: &Api, to: &Api, pdus: Vec<Value>) -> (u16, Value) {
    send_transaction(
        from,
        to,
        json!({
            "origin": from.node.server_name(),
            "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
        }),
    )
    .await
}

async fn send_transaction(from: &Api, to: &Api, body: Value) -> (u16, Value) {
    from.federation(to, Method::PUT, &txn_path(), Some(body))
        .await
}

pub(crate) fn txn_path() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    format!("/_matrix/federation/v1/send/{}", hex::encode(bytes))
}

/// The room's events as `who` reads them with /messages, newest first.
async fn messages(api: &Api, who: &Person, room: &str) -> Vec<Value> {
    let (status, body) = api
        .get(
            &format!("/v3/rooms/{room}/messages?dir=b&limit=1000"),
            Some(&who.token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["chunk"].as_array().unwrap().clone()
}

/// The room's timeline in a fresh /sync of `who`.
async fn sync_timeline(api: &Api, who: &Person, room: &str) -> Vec<Value> {
    let (status, body) = api.get("/v3/sync", Some(&who.token)).await;
    assert_eq!(status, 200, "{body}");
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asserts `who` sees none of `event_ids`: not in /messages, not in /sync, not by id.
async fn assert_unseen(api: &Api, who: &Person, room: &str, event_ids: &[&str]) {
    assert_not_in_timeline(api, who, room, event_ids).await;
    for id in event_ids {
        let (status, body) = api
            .get(&format!("/v3/rooms/{room}/event/{id}"), Some(&who.token))
            .await;
        assert_eq!(status, 404, "{id} can be read by id: {body}");
    }
}

/// Asserts none of `event_ids` is in `who`'s /messages or /sync.
async fn assert_not_in_timeline(api: &Api, who: &Person, room: &str, event_ids: &[&str]) {
    let history = messages(api, who, room).await;
    let timeline = sync_timeline(api, who, room).await;
    for id in event_ids {
        for (what, events) in [("/messages", &history), ("/sync", &timeline)] {
            assert!(
                !events.iter().any(|e| e["event_id"] == *id),
                "{id} is in {what}: {events:?}"
            );
        }
    }
}

/// The room's state event ids as `who` reads them.
pub(crate) async fn state_ids(api: &Api, who: &Person, room: &str) -> Vec<String> {
    let (status, body) = api
        .get(&format!("/v3/rooms/{room}/state"), Some(&who.token))
        .await;
    assert_eq!(status, 200, "{body}");
    event_ids(&body)
}

/// The node still takes federation: a message the first sends now reaches the second.
pub(crate) async fn still_delivers(
    (a, alice): (&Api, &Person),
    (b, bob): (&Api, &Person),
    room: &str,
    text: &str,
) {
    send_text(a, alice, room, text).await;
    eventually(WITHIN, &format!("{text:?} on the other server"), || async {
        texts(b, bob, room).await.iter().any(|t| t == text)
    })
    .await;
}

/// Asserts the /send answer refused the PDU `id` (an error under its id).
pub(crate) fn assert_refused(answer: &Value, id: &str, what: &str) {
    assert!(
        answer["pdus"][id]["error"].is_string(),
        "{what} ({id}) was not refused: {answer}"
    );
}

#[tokio::test]
async fn forged_signatures_and_impersonated_senders_are_refused() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let version = room_version(&b, &room).await;
    let a_key = key_of(&a);
    let state_before = state_ids(&b, &bob, &room).await;
    let message = |text: &str| json!({"msgtype": "m.text", "body": text});

    let mut cases: Vec<(&str, CanonicalJsonObject)> = Vec::new();

    // The signature's bytes altered.
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("altered signature"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    let Some(CanonicalJsonValue::Object(signatures)) = pdu.get_mut("signatures") else {
        panic!("signed");
    };
    let Some(CanonicalJsonValue::Object(ours)) = signatures.get_mut(a.node.server_name()) else {
        panic!("signed by a");
    };
    let Some(CanonicalJsonValue::String(signature)) = ours.get_mut(KEY_ID) else {
        panic!("signed with the node key");
    };
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    signature.replace_range(0..1, flipped);
    cases.push(("a signature with altered bytes", pdu));

    // Signed in a's name by a key that is not a's.
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("impostor key"),
    )
    .await;
    sign(&impostor_key(a.node.server_name()), &version, &mut pdu);
    cases.push(("a signature by another key", pdu));

    // A field the signature covers changed after signing.
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("altered timestamp"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    pdu.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(1_000u32.into()),
    );
    cases.push(("a signed field altered", pdu));

    // No signature at all.
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("unsigned"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    pdu.remove("signatures");
    cases.push(("no signature", pdu));

    // Senders of other servers, signed by a: Bob's server, a server that is a valid key but not
    // in the room, a name that is not a key at all.
    let mut pdu = draft(
        &b,
        &room,
        &bob.user_id,
        "m.room.message",
        None,
        message("as Bob"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    cases.push(("Bob impersonated by a", pdu));
    let stranger = format!("@carol:{}", stranger_server());
    let mut pdu = draft(
        &b,
        &room,
        &stranger,
        "m.room.message",
        None,
        message("as a stranger"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    cases.push(("another server's user impersonated by a", pdu));
    let mut pdu = draft(
        &b,
        &room,
        "@dave:evil.example",
        "m.room.message",
        None,
        message("as a DNS name"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    cases.push(("a user of a server whose name is no key", pdu));

    // Bob impersonated changing the room's name: state too.
    let mut pdu = draft(
        &b,
        &room,
        &bob.user_id,
        "m.room.name",
        Some(""),
        json!({"name": "Bob's now"}),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    cases.push(("a state change in Bob's name", pdu));

    let ids: Vec<String> = cases
        .iter()
        .map(|(_, pdu)| event_id(&version, pdu))
        .collect();
    let (status, answer) =
        send_pdus(&a, &b, cases.iter().map(|(_, pdu)| to_value(pdu)).collect()).await;
    assert_eq!(status, 200, "{answer}");
    for ((what, _), id) in cases.iter().zip(&ids) {
        assert_refused(&answer, id, what);
    }

    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_unseen(&b, &bob, &room, &ids).await;
    assert_eq!(
        state_ids(&b, &bob, &room).await,
        state_before,
        "Bob's room state changed"
    );
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
    assert_eq!(texts(&b, &bob, &room).await, ["still here"]);
}

#[tokio::test]
async fn content_altered_after_signing_arrives_redacted() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let version = room_version(&b, &room).await;
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "what Alice wrote"}),
    )
    .await;
    sign(&key_of(&a), &version, &mut pdu);
    pdu.insert(
        "content".into(),
        serde_json::from_value(json!({"msgtype": "m.text", "body": "what Mallory wants"})).unwrap(),
    );
    // The signature covers the redacted event, so the event id is unchanged by the content.
    let id = event_id(&version, &pdu);

    let (status, answer) = send_pdus(&a, &b, vec![to_value(&pdu)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["pdus"][&id],
        json!({}),
        "taken, as the spec asks: {answer}"
    );

    // The spec: an event whose content does not match its hash is redacted, not dropped.
    let history = messages(&b, &bob, &room).await;
    let event = history
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("the event is in Bob's history: {history:?}"));
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(event["content"], json!({}), "shown redacted: {event}");
    let timeline = sync_timeline(&b, &bob, &room).await;
    let event = timeline
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("the event is in Bob's sync: {timeline:?}"));
    assert_eq!(event["content"], json!({}), "shown redacted: {event}");
    assert!(texts(&b, &bob, &room).await.is_empty());

    // The room goes on around it, both ways (Bob's next event builds on the redacted one,
    // which Alice's server then fetches from Bob's).
    still_delivers((&a, &alice), (&b, &bob), &room, "next").await;
    send_text(&b, &bob, &room, "reply").await;
    eventually(WITHIN, "Bob's reply on Alice's server", || async {
        texts(&a, &alice, &room).await == ["next", "reply"]
    })
    .await;
}

#[tokio::test]
async fn events_that_fail_the_auth_rules_are_rejected() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let version = room_version(&b, &room).await;
    let a_key = key_of(&a);
    let bobs = send_text(&b, &bob, &room, "Bob's own words").await;
    eventually(WITHIN, "Bob's message on Alice's server", || async {
        texts(&a, &alice, &room).await == ["Bob's own words"]
    })
    .await;

    // Eve, a user of Alice's server who is not in the room, writes into it.
    let eve = person(&a, "eve").await;
    let mut outsider = draft(
        &b,
        &room,
        &eve.user_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "from outside"}),
    )
    .await;
    sign(&a_key, &version, &mut outsider);
    let outsider_id = event_id(&version, &outsider);
    let (status, answer) = send_pdus(&a, &b, vec![to_value(&outsider)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_refused(&answer, &outsider_id, "a message from a non-member");

    // Eve joins properly (invited by Alice) and has no power.
    join_local(&a, &alice, &eve, &b, &bob, &room).await;
    let state_before = state_ids(&b, &bob, &room).await;

    // Eve makes herself all-powerful.
    let (_, mut levels) = b
        .get(
            &format!("/v3/rooms/{room}/state/m.room.power_levels/"),
            Some(&bob.token),
        )
        .await;
    levels["users"][&eve.user_id] = 100.into();
    let mut power_grab = draft(
        &b,
        &room,
        &eve.user_id,
        "m.room.power_levels",
        Some(""),
        levels,
    )
    .await;
    sign(&a_key, &version, &mut power_grab);
    let power_grab_id = event_id(&version, &power_grab);

    // Eve redacts Bob's message: a redaction event is allowed, but with neither power nor Bob's
    // server behind it, it must not redact.
    let mut redaction = draft(
        &b,
        &room,
        &eve.user_id,
        "m.room.redaction",
        None,
        json!({"redacts": bobs}),
    )
    .await;
    redaction.insert("redacts".into(), CanonicalJsonValue::String(bobs.clone()));
    sign(&a_key, &version, &mut redaction);

    // Mallory's server, never invited, joins the invite-only room and writes into it, each
    // event signed by its own, valid key.
    let m = Api::start_federated().await;
    m.connect(&b).await;
    let mallory = format!("@mallory:{}", m.node.server_name());
    let mut join = draft(
        &b,
        &room,
        &mallory,
        "m.room.member",
        Some(&mallory),
        json!({"membership": "join"}),
    )
    .await;
    sign(&key_of(&m), &version, &mut join);
    let mut mallorys = draft(
        &b,
        &room,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "from Mallory"}),
    )
    .await;
    sign(&key_of(&m), &version, &mut mallorys);

    // An event on history nobody can show: its prev event exists nowhere.
    let mut dangling = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "on nothing"}),
    )
    .await;
    dangling.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(format!(
            "${}",
            "A".repeat(43)
        ))]),
    );
    sign(&a_key, &version, &mut dangling);
    let dangling_id = event_id(&version, &dangling);

    let (status, answer) =
        send_pdus(&a, &b, vec![to_value(&power_grab), to_value(&redaction)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_refused(
        &answer,
        &power_grab_id,
        "a power-levels change without power",
    );
    let (status, answer) = send_pdus(&m, &b, vec![to_value(&join), to_value(&mallorys)]).await;
    assert_eq!(status, 200, "{answer}");
    let (join_id, mallorys_id) = (event_id(&version, &join), event_id(&version, &mallorys));
    assert_refused(&answer, &join_id, "a join to an invite-only room");
    assert_refused(&answer, &mallorys_id, "a message from a non-member");
    let (status, answer) = send_pdus(&a, &b, vec![to_value(&dangling)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_refused(&answer, &dangling_id, "an event on unknown history");

    assert_unseen(
        &b,
        &bob,
        &room,
        &[
            &outsider_id,
            &power_grab_id,
            &join_id,
            &mallorys_id,
            &dangling_id,
        ],
    )
    .await;
    assert_eq!(
        state_ids(&b, &bob, &room).await,
        state_before,
        "Bob's room state changed"
    );
    let (_, levels) = b
        .get(
            &format!("/v3/rooms/{room}/state/m.room.power_levels/"),
            Some(&bob.token),
        )
        .await;
    assert!(
        levels["users"][&eve.user_id].is_null(),
        "Eve has power: {levels}"
    );
    let history = messages(&b, &bob, &room).await;
    let kept = history
        .iter()
        .find(|e| e["event_id"] == bobs.as_str())
        .unwrap();
    assert_eq!(
        kept["content"]["body"], "Bob's own words",
        "redacted by Eve: {kept}"
    );

    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
    assert_eq!(
        texts(&b, &bob, &room).await,
        ["Bob's own words", "still here"]
    );
}

#[tokio::test]
async fn malformed_transactions_are_refused_and_the_node_keeps_working() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let version = room_version(&b, &room).await;
    let a_key = key_of(&a);
    let state_before = state_ids(&b, &bob, &room).await;
    let a_name = a.node.server_name().to_owned();
    let message = |text: &str| json!({"msgtype": "m.text", "body": text});

    // Claiming to come from another server: Bob's own, or a stranger's.
    let mut pdu = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("wrong origin"),
    )
    .await;
    sign(&a_key, &version, &mut pdu);
    let wrong_origin_id = event_id(&version, &pdu);
    for origin in [b.node.server_name().to_owned(), stranger_server()] {
        let (status, answer) = send_transaction(
            &a,
            &b,
            json!({"origin": origin, "origin_server_ts": 0, "pdus": [to_value(&pdu)]}),
        )
        .await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["errcode"], "M_FORBIDDEN");
    }

    // Over the spec's limits: 51 PDUs, 101 EDUs.
    let mut many = Vec::new();
    let mut many_ids = Vec::new();
    for n in 0..51 {
        let mut pdu = draft(
            &b,
            &room,
            &alice.user_id,
            "m.room.message",
            None,
            message(&format!("one of many {n}")),
        )
        .await;
        sign(&a_key, &version, &mut pdu);
        many_ids.push(event_id(&version, &pdu));
        many.push(to_value(&pdu));
    }
    let (status, answer) = send_pdus(&a, &b, many).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errcode"], "M_TOO_LARGE");
    let edus: Vec<Value> = (0..101)
        .map(|_| json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": alice.user_id, "typing": true}}))
        .collect();
    let (status, answer) = send_transaction(
        &a,
        &b,
        json!({"origin": a_name, "origin_server_ts": 0, "pdus": [], "edus": edus}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errcode"], "M_TOO_LARGE");

    // Not a transaction: broken JSON, JSON of the wrong shape, no origin.
    let path = txn_path();
    for body in [
        "{\"origin\": ".to_owned(),
        "not json at all".to_owned(),
        String::new(),
        "[]".to_owned(),
        format!("{{\"origin\": \"{a_name}\", \"pdus\": 5}}"),
        format!("{{\"origin\": \"{a_name}\", \"pdus\": {{}}}}"),
        "{\"pdus\": []}".to_owned(),
    ] {
        let (status, answer) = a
            .federation_bytes(&b, Method::PUT, &path, body.clone().into())
            .await
            .unwrap();
        assert_eq!(status, 400, "{body:?}: {answer}");
        assert_eq!(answer["errcode"], "M_BAD_JSON", "{body:?}: {answer}");
    }

    // PDUs that are not events, or lack what an event has, or are for a room Bob's server is
    // not in, each in a transaction with a good one: the good one is taken.
    let unknown_room = format!("!{}", "B".repeat(43));
    let mut elsewhere = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("elsewhere"),
    )
    .await;
    elsewhere.insert(
        "room_id".into(),
        CanonicalJsonValue::String(unknown_room.clone()),
    );
    sign(&a_key, &version, &mut elsewhere);
    let elsewhere_id = event_id(&version, &elsewhere);
    let mut no_type = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("no type"),
    )
    .await;
    // Signed whole first: ruma cannot sign an event without it.
    sign(&a_key, &version, &mut no_type);
    no_type.remove("type");
    let mut no_sender = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("no sender"),
    )
    .await;
    // Signed whole first: ruma cannot sign an event without it.
    sign(&a_key, &version, &mut no_sender);
    no_sender.remove("sender");
    let mut content_not_object = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("x"),
    )
    .await;
    content_not_object.insert(
        "content".into(),
        CanonicalJsonValue::String("a string".into()),
    );
    sign(&a_key, &version, &mut content_not_object);
    let mut good = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("the good one"),
    )
    .await;
    sign(&a_key, &version, &mut good);
    let good_id = event_id(&version, &good);
    let (status, answer) = send_pdus(
        &a,
        &b,
        vec![
            json!(42),
            json!("a string"),
            Value::Null,
            json!([]),
            json!({}),
            json!({"room_id": room}),
            json!({"room_id": 7}),
            to_value(&elsewhere),
            to_value(&no_type),
            to_value(&no_sender),
            to_value(&content_not_object),
            to_value(&good),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["pdus"][&good_id],
        json!({}),
        "the good PDU was taken: {answer}"
    );
    assert_refused(&answer, &elsewhere_id, "a PDU for an unknown room");
    assert!(
        b.node
            .store()
            .room_version(unknown_room.clone())
            .await
            .unwrap()
            .is_none(),
        "Bob's server made up the unknown room"
    );
    eventually(WITHIN, "the good PDU in Bob's history", || async {
        texts(&b, &bob, &room).await == ["the good one"]
    })
    .await;

    // A PDU over the spec's 64 KiB (ruma signs none that large, so its content grows after
    // signing): refused outright, not taken redacted.
    let mut oversized = draft(
        &b,
        &room,
        &alice.user_id,
        "m.room.message",
        None,
        message("small"),
    )
    .await;
    sign(&a_key, &version, &mut oversized);
    let oversized_id = event_id(&version, &oversized);
    let with_body = |body: String| {
        let mut pdu = oversized.clone();
        pdu.insert(
            "content".into(),
            serde_json::from_value(message(&body)).unwrap(),
        );
        to_value(&pdu)
    };
    let (status, answer) = send_pdus(&a, &b, vec![with_body("x".repeat(70 * 1024))]).await;
    assert_eq!(status, 200, "{answer}");
    assert_refused(&answer, &oversized_id, "a PDU over 64 KiB");

    // A body over the transport's cap (8 MiB): refused before it is read, or the stream is
    // cut; either way nothing of it is taken.
    let body = json!({
        "origin": a_name,
        "origin_server_ts": 0,
        "pdus": [with_body("x".repeat(10 * 1024 * 1024))],
    })
    .to_string();
    assert!(body.len() > 10 * 1024 * 1024);
    match a
        .federation_bytes(&b, Method::PUT, &txn_path(), body.into())
        .await
    {
        Ok((status, answer)) => assert_eq!(status, 413, "{answer}"),
        Err(e) => tracing::info!(error = %e, "the huge transaction was cut off"),
    }

    assert_unseen(
        &b,
        &bob,
        &room,
        &[&wrong_origin_id, &elsewhere_id, &oversized_id],
    )
    .await;
    let many_ids: Vec<&str> = many_ids.iter().map(String::as_str).collect();
    assert_unseen(&b, &bob, &room, &many_ids).await;
    let mut state_now = state_ids(&b, &bob, &room).await;
    state_now.retain(|id| !state_before.contains(id));
    assert!(
        state_now.is_empty(),
        "Bob's room state changed: {state_now:?}"
    );
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
    assert_eq!(texts(&b, &bob, &room).await, ["the good one", "still here"]);
}

/// Invites `who` (a user of Alice's server) and joins them, and waits until Bob's server has
/// their join.
async fn join_local(a: &Api, alice: &Person, who: &Person, b: &Api, bob: &Person, room: &str) {
    let (status, body) = a
        .post(
            &format!("/v3/rooms/{room}/invite"),
            Some(&alice.token),
            json!({"user_id": who.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = a
        .post(&format!("/v3/join/{room}"), Some(&who.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(b, bob, room, &who.user_id, "join").await;
}

async fn wait_for_membership(on: &Api, who: &Person, room: &str, user: &str, membership: &str) {
    eventually(
        WITHIN,
        &format!("{user} {membership} on {}", on.node.server_name()),
        || async {
            let (_, state) = on
                .get(&format!("/v3/rooms/{room}/state"), Some(&who.token))
                .await;
            state.as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.room.member"
                        && e["state_key"] == user
                        && e["content"]["membership"] == membership
                })
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_kicked_members_backdated_message_is_not_shown() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let eve = person(&a, "eve").await;
    join_local(&a, &alice, &eve, &b, &bob, &room).await;
    let while_joined = tip(&b, &room).await;
    let (status, body) = a
        .post(
            &format!("/v3/rooms/{room}/kick"),
            Some(&alice.token),
            json!({"user_id": eve.user_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&b, &bob, &room, &eve.user_id, "leave").await;
    let state_before = state_ids(&b, &bob, &room).await;

    // Eve's server writes in her name as if the kick had not happened yet: allowed by the
    // state it claims to build on, not by the room's state now (the spec's soft failure).
    let mut backdated = draft_on(
        &while_joined,
        &eve.user_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "after my kick"}),
    );
    sign(&key_of(&a), &while_joined.version, &mut backdated);
    let id = event_id(&while_joined.version, &backdated);
    let (status, answer) = send_pdus(&a, &b, vec![to_value(&backdated)]).await;
    assert_eq!(status, 200, "{answer}");

    assert_unseen(&b, &bob, &room, &[&id]).await;
    assert_eq!(state_ids(&b, &bob, &room).await, state_before);
    // Bob's server builds nothing on it.
    let reply = send_text(&b, &bob, &room, "reply").await;
    let stored = b.node.store().pdu(reply).await.unwrap().unwrap();
    let reply: Value = serde_json::from_str(&stored.json).unwrap();
    assert!(
        !reply["prev_events"]
            .as_array()
            .unwrap()
            .contains(&json!(id)),
        "Bob's reply builds on the soft-failed event: {reply}"
    );
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
    assert_eq!(texts(&b, &bob, &room).await, ["reply", "still here"]);
}

#[tokio::test]
async fn an_event_on_another_rooms_history_is_refused() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let other = super::room_tests::another_room(
        (&a, &alice),
        (&b, &bob),
        json!({"preset": "private_chat", "name": "Elsewhere"}),
    )
    .await;
    let state_before = state_ids(&b, &bob, &room).await;
    let other_state_before = state_ids(&b, &bob, &other).await;

    // A message into the first room whose prev event is the other room's latest: the state
    // "before" it would be the other room's.
    let here = tip(&b, &room).await;
    let there = tip(&b, &other).await;
    let across = Tip {
        prev_events: there.prev_events,
        depth: there.depth.max(here.depth),
        ..here
    };
    let mut pdu = draft_on(
        &across,
        &alice.user_id,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "across rooms"}),
    );
    sign(&key_of(&a), &across.version, &mut pdu);
    let id = event_id(&across.version, &pdu);
    let (status, answer) = send_pdus(&a, &b, vec![to_value(&pdu)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_refused(&answer, &id, "an event on another room's history");

    assert_unseen(&b, &bob, &room, &[&id]).await;
    assert_eq!(state_ids(&b, &bob, &room).await, state_before);
    assert_eq!(state_ids(&b, &bob, &other).await, other_state_before);
    still_delivers((&a, &alice), (&b, &bob), &room, "still here").await;
    assert_eq!(texts(&b, &bob, &room).await, ["still here"]);
}

/// Mallory's server as a bare transport whose federation API takes every request and never
/// answers; `asked` is told of each request.
pub(crate) async fn silent_server(
    asked: tokio::sync::mpsc::UnboundedSender<String>,
) -> (hyphae_p2p::Transport, SigningKey, tempfile::TempDir) {
    let peer = super::hostile_peer::Peer::start(axum::Router::new().fallback(
        move |uri: axum::http::Uri| {
            let asked = asked.clone();
            async move {
                let _ = asked.send(uri.path().to_owned());
                std::future::pending::<()>().await
            }
        },
    ))
    .await;
    (peer.transport, peer.key, peer.dir)
}

#[tokio::test]
async fn a_server_that_never_answers_does_not_hold_up_the_room() {
    let (a, b, alice, bob, room) = super::room_tests::two_nodes_in_a_room().await;
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let (mallory_server, mallory_key, _dir) = silent_server(asked_tx).await;
    let theirs = b.node.transport().unwrap();
    mallory_server
        .dial(theirs.local_peer_id(), theirs.listen_addrs().await.unwrap())
        .await
        .unwrap();

    // Messages from Mallory, whose server is not in the room: one on history Bob's server does
    // not have, one with auth events it does not have. Were they asked of her server, which
    // takes requests and never answers, the room would wait with them, locked.
    let mut on_nothing = tip(&b, &room).await;
    on_nothing.prev_events = vec![format!("${}", "C".repeat(43))];
    let mallory = format!("@mallory:{}", mallory_server.server_name());
    let mut pdu = draft_on(
        &on_nothing,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "wait for me"}),
    );
    sign(&mallory_key, &on_nothing.version, &mut pdu);
    let mut unknown_auth = draft(
        &b,
        &room,
        &mallory,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "authorised by nothing"}),
    )
    .await;
    unknown_auth.insert(
        "auth_events".into(),
        CanonicalJsonValue::Array(vec![CanonicalJsonValue::String(format!(
            "${}",
            "D".repeat(43)
        ))]),
    );
    sign(&mallory_key, &on_nothing.version, &mut unknown_auth);
    let ids = [
        event_id(&on_nothing.version, &pdu),
        event_id(&on_nothing.version, &unknown_auth),
    ];
    let body = json!({
        "origin": mallory_server.server_name(),
        "origin_server_ts": 0,
        "pdus": [to_value(&pdu), to_value(&unknown_auth)],
    });
    let request = axum::http::Request::builder()
        .method("PUT")
        .uri(txn_path())
        .header("content-type", "application/json")
        .body(axum::body::Bytes::from(body.to_string()))
        .unwrap();
    let quick = Duration::from_secs(5);
    let answer = tokio::time::timeout(quick, mallory_server.request(b.node.server_name(), request))
        .await
        .expect("Bob's server waited on Mallory's")
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = serde_json::from_slice(answer.body()).unwrap();
    assert_refused(
        &answer,
        &ids[0],
        "an event on a gap, from a server not in the room",
    );
    assert_refused(
        &answer,
        &ids[1],
        "an event on unknown auth events, from the same",
    );
    assert!(
        asked.try_recv().is_err(),
        "Bob's server asked Mallory's for something"
    );

    // The room goes on at its usual pace.
    let sent = tokio::time::timeout(quick, send_text(&b, &bob, &room, "not waiting")).await;
    assert!(sent.is_ok(), "Bob's message waited on Mallory's server");
    let delivered = tokio::time::timeout(
        quick,
        still_delivers((&a, &alice), (&b, &bob), &room, "nor me"),
    )
    .await;
    assert!(
        delivered.is_ok(),
        "Alice's message waited on Mallory's server"
    );
    assert_unseen(&b, &bob, &room, &[&ids[0], &ids[1]]).await;
}

#[tokio::test]
async fn a_user_leaves_through_make_leave_and_send_leave_and_only_its_own_server_may() {
    let (a, b, alice, bob, room) = crate::federation::room_tests::two_nodes_in_a_room().await;
    wait_for_membership(&a, &alice, &room, &bob.user_id, "join").await;
    let encode = crate::rooms::urlencode;
    // Another server may not make a leave for Alice.
    let (status, body) = b
        .federation(
            &a,
            reqwest::Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                encode(&room),
                encode(&alice.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, body) = b
        .federation(
            &a,
            reqwest::Method::GET,
            &format!(
                "/_matrix/federation/v1/make_leave/{}/{}",
                encode(&room),
                encode(&bob.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let version: RoomVersionId = serde_json::from_value(body["room_version"].clone()).unwrap();
    let mut leave: CanonicalJsonObject = serde_json::from_value(body["event"].clone()).unwrap();
    leave.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(1_000_000_000_000i64.try_into().unwrap()),
    );
    sign(&key_of(&b), &version, &mut leave);
    let id = event_id(&version, &leave);

    // Sent by a server that is not the leaver's: refused.
    let outsider = Api::start_federated().await;
    outsider.connect(&a).await;
    let path = format!(
        "/_matrix/federation/v2/send_leave/{}/{}",
        encode(&room),
        encode(&id)
    );
    let (status, body) = outsider
        .federation(&a, reqwest::Method::PUT, &path, Some(to_value(&leave)))
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = b
        .federation(&a, reqwest::Method::PUT, &path, Some(to_value(&leave)))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_membership(&a, &alice, &room, &bob.user_id, "leave").await;
}
