//! Entry points for fuzzing and property tests: each feeds arbitrary bytes to a parser a peer
//! reaches (PDUs, canonical JSON, `/send` transactions, EDUs, invites, mailbox records, policy
//! globs) and must never panic (what they parse is thrown away). The cargo-fuzz targets in
//! `tests/fuzz/` call them, and so do the bounded property tests below. Not an API.

use ruma::api::client::sync::sync_events::v3::InviteState;
use ruma::events::AnyStrippedStateEvent;
use ruma::serde::Raw;
use ruma::{CanonicalJsonObject, OwnedServerName, RoomVersionId, ServerName, UserId};
use serde_json::value::RawValue;

use crate::backup::mailbox::verify_record;
use crate::federation::edus::{self, InboundEdu};
use crate::federation::limits::{RawTransaction, check_counts, check_items};
use crate::federation::membership::InviteRequest;
use crate::federation::send::event_id_hint;
use crate::policy::glob::Glob;
use crate::rooms::{Pdu, ROOM_VERSIONS, membership_of, parse_and_verify, stripped};

/// The server fuzzed input is taken as coming from, and the one it is taken at.
const ORIGIN: &str = "5866666666666666666666666666666666666666666666666666666666666666";
const OWN: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// One PDU as `/send`, `/event`, backfill and the auth-chain fetch take it: canonical JSON,
/// format, signatures and content hash, checked under every room version the node supports.
pub fn pdu(data: &[u8]) {
    let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(data) else {
        return;
    };
    for version in &ROOM_VERSIONS {
        if let Ok(pdu) = parse_and_verify(version, &raw) {
            use_pdu(&pdu);
        }
    }
    let _ = event_id_hint(&raw);
}

/// What the node does with a PDU it accepted: its room, its client form, its stored form.
fn use_pdu(pdu: &Pdu) {
    let room = pdu.room_id();
    let _ = pdu.to_client_json(true);
    let _ = pdu.to_new_pdu(room.as_ref().map_or("!room:x", |r| r.as_str()));
    let _ = stripped(pdu);
    let _ = membership_of(&pdu.content);
}

/// Canonical JSON: parsed, redacted and hashed as for an event id, written back and read again.
pub fn canonical_json(data: &[u8]) {
    let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(data) else {
        return;
    };
    let Ok(text) = serde_json::to_string(&object) else {
        return;
    };
    let again: CanonicalJsonObject =
        serde_json::from_str(&text).expect("canonical JSON written out reads back");
    assert_eq!(again, object, "canonical JSON changed on a round trip");
    let Some(rules) = RoomVersionId::V12.rules() else {
        return;
    };
    let _ = ruma::signatures::reference_hash(&object, &rules);
    let _ = ruma::canonical_json::redact(object, &rules.redaction, None);
}

/// A `/send` transaction body as the handler reads it: raw items counted and sized first, then
/// each PDU (as room version 12) and each EDU.
pub fn transaction(data: &[u8]) {
    let Ok(transaction) = serde_json::from_slice::<RawTransaction>(data) else {
        return;
    };
    let _ = ServerName::parse(&transaction.origin);
    if check_counts(&transaction.pdus, &transaction.edus).is_err()
        || check_items(&transaction.pdus, &transaction.edus).is_err()
    {
        return;
    }
    for raw in &transaction.pdus {
        if let Ok(pdu) = parse_and_verify(&RoomVersionId::V12, raw) {
            use_pdu(&pdu);
        }
        let _ = event_id_hint(raw);
    }
    for edu in &transaction.edus {
        take_edu(edu);
    }
}

/// One EDU of a transaction.
pub fn edu(data: &[u8]) {
    if let Ok(edu) = serde_json::from_slice::<&RawValue>(data) {
        take_edu(edu);
    }
}

/// What `federation::edus::receive` does before it reaches the store: the EDU parsed as its
/// type says, then the checks made of its content.
fn take_edu(edu: &RawValue) {
    let origin = ServerName::parse(ORIGIN).expect("a server name");
    let (_, parsed) = edus::parse(edu);
    match parsed {
        Ok(InboundEdu::MailboxRecord(record)) => mailbox_record(record.as_bytes()),
        Ok(InboundEdu::Invite(request)) => take_invite(*request),
        Ok(InboundEdu::DirectToDevice(content)) => {
            let own = ServerName::parse(OWN).expect("a server name");
            let _ = edus::from_origin(&content.sender, &origin);
            let _ = crate::client_api::sort_messages(
                &own,
                &content.sender,
                &content.ev_type.to_string(),
                content.messages,
            );
        }
        Ok(InboundEdu::DeviceListUpdate(content)) => {
            let _ = edus::from_origin(&content.user_id, &origin);
            let _ = i64::try_from(u64::from(content.stream_id));
        }
        Ok(InboundEdu::Receipt(content)) => {
            for (_, receipts) in content.receipts {
                for (user, data) in receipts.read {
                    let _ = edus::from_origin(&user, &origin);
                    let _ = data.data.thread.as_str();
                }
            }
        }
        _ => {}
    }
}

/// An invite as `/invite` v2 carries it (and the `io.hyphae.invite` EDU): read with its sizes
/// checked, the invite event, then the stripped state it shows, as kept and as `/sync` later
/// serves it.
pub fn invite(data: &[u8]) {
    if let Ok(request) = InviteRequest::parse(data) {
        take_invite(request);
    }
}

fn take_invite(request: InviteRequest) {
    if !ROOM_VERSIONS.contains(&request.room_version) {
        return;
    }
    let Ok(invite) = crate::rooms::verify_pdu(&request.room_version, request.event) else {
        return;
    };
    use_pdu(&invite);
    let _ = invite
        .state_key
        .as_deref()
        .and_then(|k| UserId::parse(k).ok());
    let Ok(kept) = serde_json::to_string(&request.invite_room_state) else {
        return;
    };
    let shown: Vec<Raw<AnyStrippedStateEvent>> = serde_json::from_str(&kept).unwrap_or_default();
    for event in &shown {
        let _ = event.deserialize();
    }
    let _ = serde_json::to_string(&InviteState::from(shown));
}

/// A mailbox record, as the DHT and the `io.hyphae.mailbox` EDU deliver it: verified, then
/// read as `find_mailbox` reads it.
pub fn mailbox_record(data: &[u8]) {
    let Ok(record) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(record) = verify_record(record) else {
        return;
    };
    let _ = record.mailbox.map(OwnedServerName::try_from);
    for address in &record.addresses {
        let _ = address.parse::<hyphae_p2p::Multiaddr>();
    }
}

/// A policy rule's glob (everything up to the first newline) matched against the rest, as
/// policy lists from rooms anyone may write to are compiled and applied.
pub fn policy_glob(data: &[u8]) {
    let (pattern, text) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let pattern = String::from_utf8_lossy(pattern);
    let text = String::from_utf8_lossy(text);
    let Ok(glob) = Glob::compile(&pattern) else {
        return;
    };
    let _ = (glob.as_str(), glob.is_exact(), glob.prefix(), glob.suffix());
    let _ = glob.longest_literal();
    let _ = glob.matches(&text);
    let mut budget = 1000;
    let _ = glob.matches_within(&text, &mut budget);
}

#[cfg(test)]
mod tests {
    use hyphae_p2p::fuzz::harness::{check, corpus, corpus_dir};

    #[test]
    fn pdu_never_panics() {
        check("pdu", super::pdu);
    }

    #[test]
    fn canonical_json_never_panics() {
        check("canonical_json", super::canonical_json);
    }

    #[test]
    fn transaction_never_panics() {
        check("transaction", super::transaction);
    }

    #[test]
    fn edu_never_panics() {
        check("edu", super::edu);
    }

    #[test]
    fn invite_never_panics() {
        check("invite", super::invite);
    }

    #[test]
    fn mailbox_record_never_panics() {
        check("mailbox_record", super::mailbox_record);
    }

    #[test]
    fn policy_glob_never_panics() {
        check("policy_glob", super::policy_glob);
    }

    /// The seed PDUs are valid: mutations start from inputs that reach the signature checks.
    #[test]
    fn seed_pdus_verify() {
        for seed in corpus("pdu") {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_slice(&seed).unwrap();
            assert!(
                crate::rooms::ROOM_VERSIONS
                    .iter()
                    .any(|v| crate::rooms::parse_and_verify(v, &raw).is_ok()),
                "{raw}"
            );
        }
        for seed in corpus("mailbox_record") {
            crate::backup::mailbox::verify_record(std::str::from_utf8(&seed).unwrap()).unwrap();
        }
    }

    /// Writes the seed corpus of the node's targets (signed by a made-up server):
    /// `cargo test -p hyphae-node --lib fuzz::tests::write_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes tests/fuzz/corpus"]
    fn write_seed_corpus() {
        use ruma::{CanonicalJsonObject, RoomVersionId};
        use serde_json::{Value, json};

        let key = crate::federation::hostile_peer::stranger_key();
        let server = key.server_name().to_string();
        let alice = format!("@alice:{server}");
        let bob = format!("@bob:{}", super::OWN);
        let sign = |version: &RoomVersionId, event: Value| -> (String, Value) {
            let mut object: CanonicalJsonObject = serde_json::from_value(event).unwrap();
            let rules = crate::rooms::rules(version).unwrap();
            key.hash_and_sign_event(&mut object, &rules.redaction)
                .unwrap();
            let pdu = crate::rooms::verify_pdu(version, object.clone()).unwrap();
            (
                pdu.event_id.to_string(),
                serde_json::to_value(&object).unwrap(),
            )
        };
        let v12 = RoomVersionId::V12;
        let (create_id, create) = sign(
            &v12,
            json!({"type": "m.room.create", "sender": alice, "state_key": "",
                "content": {"room_version": "12"}, "origin_server_ts": 1, "depth": 1,
                "auth_events": [], "prev_events": []}),
        );
        let room = format!("!{}", &create_id[1..]);
        let (join_id, join) = sign(
            &v12,
            json!({"type": "m.room.member", "room_id": room, "sender": alice,
                "state_key": alice, "content": {"membership": "join"},
                "origin_server_ts": 2, "depth": 2, "auth_events": [],
                "prev_events": [create_id]}),
        );
        let (_, message) = sign(
            &v12,
            json!({"type": "m.room.message", "room_id": room, "sender": alice,
                "content": {"msgtype": "m.text", "body": "hi"},
                "origin_server_ts": 3, "depth": 3, "auth_events": [join_id],
                "prev_events": [join_id]}),
        );
        let (_, invite) = sign(
            &v12,
            json!({"type": "m.room.member", "room_id": room, "sender": alice,
                "state_key": bob, "content": {"membership": "invite"},
                "origin_server_ts": 4, "depth": 4, "auth_events": [join_id],
                "prev_events": [join_id]}),
        );
        let (_, old) = sign(
            &RoomVersionId::V10,
            json!({"type": "m.room.topic", "room_id": format!("!old:{server}"),
                "sender": alice, "state_key": "", "content": {"topic": "v10"},
                "origin_server_ts": 5, "depth": 5, "auth_events": [create_id],
                "prev_events": [create_id], "unsigned": {"age": 1}}),
        );
        let record = crate::backup::mailbox::signed_record(
            &key,
            Some(super::OWN),
            &["/ip4/10.1.2.3/udp/4001/quic-v1".to_owned()],
        )
        .unwrap()
        .record;
        let withdrawn = crate::backup::mailbox::signed_record(&key, None, &[])
            .unwrap()
            .record;
        let invite_request = json!({"room_version": "12", "event": invite,
        "invite_room_state": [
            {"type": "m.room.create", "state_key": "", "sender": alice,
                "content": {"room_version": "12"}},
            {"type": "m.room.name", "state_key": "", "sender": alice,
                "content": {"name": "A room"}},
        ]});
        let edus = [
            (
                "typing",
                json!({"edu_type": "m.typing", "content":
                {"room_id": room, "user_id": alice, "typing": true}}),
            ),
            (
                "receipt",
                json!({"edu_type": "m.receipt", "content": {room.clone(): {"m.read": {
                alice.clone(): {"event_ids": [join_id], "data": {"ts": 5, "thread_id": "main"}}}}}}),
            ),
            (
                "to_device",
                json!({"edu_type": "m.direct_to_device", "content": {
                "sender": alice, "type": "m.room_key_request", "message_id": "m1",
                "messages": {bob.clone(): {"*": {"action": "request"}}}}}),
            ),
            (
                "device_list",
                json!({"edu_type": "m.device_list_update", "content": {
                "user_id": alice, "device_id": "DEV", "stream_id": 7, "prev_id": [6],
                "deleted": false, "keys": {}}}),
            ),
            (
                "presence",
                json!({"edu_type": "m.presence", "content": {"push": [
                {"user_id": alice, "presence": "online", "last_active_ago": 10,
                    "currently_active": true, "status_msg": "here"}]}}),
            ),
            (
                "signing_key",
                json!({"edu_type": "m.signing_key_update", "content": {"user_id": alice}}),
            ),
            (
                "mailbox",
                json!({"edu_type": crate::backup::mailbox::RECORD_EDU, "content": {"record": record}}),
            ),
            (
                "invite",
                json!({"edu_type": crate::federation::INVITE_EDU, "content": invite_request}),
            ),
        ];
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.seed")), bytes).unwrap();
        };
        let text = |value: &Value| serde_json::to_string(value).unwrap().into_bytes();
        for (name, pdu) in [
            ("create", &create),
            ("join", &join),
            ("message", &message),
            ("v10_topic", &old),
        ] {
            write("pdu", name, &text(pdu));
            write("canonical_json", name, &text(pdu));
        }
        write(
            "canonical_json",
            "numbers_escapes",
            br#"{"a":[1,-9007199254740991,"\u00e9\ud83d\ude00"],"b":{"":null,"c":true}}"#,
        );
        write(
            "transaction",
            "pdus_and_edus",
            &text(&json!({"origin": server, "origin_server_ts": 6,
                "pdus": [join, message], "edus": edus.iter().map(|(_, e)| e).collect::<Vec<_>>()})),
        );
        write(
            "transaction",
            "empty",
            &text(&json!({"origin": server, "origin_server_ts": 6, "pdus": []})),
        );
        for (name, edu) in &edus {
            write("edu", name, &text(edu));
        }
        write("invite", "v12", &text(&invite_request));
        write("mailbox_record", "mailbox", record.as_bytes());
        write("mailbox_record", "withdrawn", withdrawn.as_bytes());
    }
}
