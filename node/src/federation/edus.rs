//! Inbound EDUs: to-device messages for local devices (`m.direct_to_device`), other servers'
//! device-list and cross-signing changes (`m.device_list_update`, `m.signing_key_update`),
//! typing notifications, read receipts and presence (`people::presence` takes it). An EDU speaks for users of its origin server only;
//! one that is malformed or speaks for anyone else is dropped with a logged reason, never
//! failing the transaction that carried it.

use std::time::Duration;

use hyphae_store::StoreError;
use ruma::api::federation::transactions::edu::{
    DeviceListUpdateContent, DirectDeviceContent, PresenceContent, ReceiptContent,
    SigningKeyUpdateContent, TypingContent,
};
use ruma::{OwnedUserId, RoomId, ServerName, UserId};
use serde_json::value::RawValue;

use crate::client_api::sort_messages;
use crate::node::AppState;

/// How long a remote user shows as typing: the EDU carries no timeout, and their server sends
/// another while they go on typing.
const REMOTE_TYPING: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub(crate) enum EduError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("{user} is not a user of the origin server")]
    NotFromOrigin { user: OwnedUserId },
    #[error("{user} is not joined to {room}")]
    NotInRoom { user: OwnedUserId, room: String },
    #[error("{0}")]
    Refused(String),
    #[error("{user} shares no room with a user of this server")]
    NoSharedRoom { user: OwnedUserId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An EDU's type, with its content left raw until the type says what to parse it as.
#[derive(serde::Deserialize)]
struct RawEdu<'a> {
    #[serde(default)]
    edu_type: String,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct RecordContent {
    record: String,
}

/// An EDU read as what its type says, nothing of it stored or acted on yet.
pub(crate) enum InboundEdu {
    MailboxRecord(String),
    Invite(Box<super::membership::InviteRequest>),
    DirectToDevice(DirectDeviceContent),
    DeviceListUpdate(DeviceListUpdateContent),
    SigningKeyUpdate(SigningKeyUpdateContent),
    Typing(TypingContent),
    Receipt(ReceiptContent),
    Presence(PresenceContent),
    /// A type this node does not handle; ignored.
    Other,
}

/// Parses one EDU (its size was checked with the transaction's): its type first, its content
/// left raw until the type says what to parse it as. The type comes back for the log.
pub(crate) fn parse(edu: &RawValue) -> (String, Result<InboundEdu, EduError>) {
    let RawEdu { edu_type, content } = match serde_json::from_str::<RawEdu>(edu.get()) {
        Ok(raw) => raw,
        Err(e) => return (String::new(), Err(EduError::Malformed(e.to_string()))),
    };
    let content = content.map_or("null", RawValue::get);
    // Straight into the type's content: a content of the wrong shape fails at its first byte,
    // where going through ruma's `Edu` would first copy it whole into a generic tree.
    fn typed<T: serde::de::DeserializeOwned>(content: &str) -> Result<T, EduError> {
        serde_json::from_str(content).map_err(|e| EduError::Malformed(e.to_string()))
    }
    let parsed = match edu_type.as_str() {
        crate::backup::mailbox::RECORD_EDU => typed::<RecordContent>(content)
            .map(|c| InboundEdu::MailboxRecord(c.record))
            .map_err(|_| EduError::Malformed("no record".into())),
        super::membership::INVITE_EDU => {
            super::membership::InviteRequest::parse(content.as_bytes())
                .map(|request| InboundEdu::Invite(Box::new(request)))
                .map_err(|e| EduError::Malformed(e.to_string()))
        }
        "m.direct_to_device" => typed(content).map(InboundEdu::DirectToDevice),
        "m.device_list_update" => typed(content).map(InboundEdu::DeviceListUpdate),
        "m.signing_key_update" => typed(content).map(InboundEdu::SigningKeyUpdate),
        "m.typing" => typed(content).map(InboundEdu::Typing),
        "m.receipt" => typed(content).map(InboundEdu::Receipt),
        "m.presence" => typed(content).map(InboundEdu::Presence),
        _ => Ok(InboundEdu::Other),
    };
    (edu_type, parsed)
}

/// Handles one EDU of a transaction from `origin` (the authenticated peer), within the pace
/// allowed per origin: past it the EDU is dropped unread (an EDU has no answer to refuse it
/// with).
pub(super) async fn receive(state: &AppState, origin: &ServerName, edu: &RawValue) {
    if state.limits.edu(origin).is_err() {
        tracing::debug!(%origin, "EDU over the origin's pace; dropped");
        return;
    }
    let (edu_type, parsed) = parse(edu);
    let edu_type = edu_type.as_str();
    let result = match parsed {
        // Signed by the server it speaks for, so it may come from anywhere.
        Ok(InboundEdu::MailboxRecord(record)) => {
            let from = hyphae_store::RecordSource::Peer(origin.to_string());
            crate::backup::mailbox::learn_record(&state.store, &record, from).await;
            Ok(())
        }
        Ok(InboundEdu::Invite(request)) => {
            super::membership::take_invite(state, origin, *request, None)
                .await
                .map(drop)
                .map_err(|e| EduError::Refused(e.to_string()))
        }
        Ok(InboundEdu::DirectToDevice(content)) => direct_to_device(state, origin, content).await,
        Ok(InboundEdu::DeviceListUpdate(content)) => {
            device_list_update(state, origin, content).await
        }
        Ok(InboundEdu::SigningKeyUpdate(content)) => {
            signing_key_update(state, origin, content).await
        }
        Ok(InboundEdu::Typing(content)) => typing(state, origin, content).await,
        Ok(InboundEdu::Receipt(content)) => receipt(state, origin, content).await,
        Ok(InboundEdu::Presence(content)) => (state.people.presence)
            .take_edu(origin, content.push)
            .await
            .map_err(EduError::Refused),
        Ok(InboundEdu::Other) => {
            tracing::debug!(%origin, edu_type, "EDU type not handled; ignored");
            Ok(())
        }
        Err(e) => Err(e),
    };
    if let Err(reason) = result {
        tracing::warn!(%origin, edu_type, %reason, "EDU dropped");
    }
}

pub(crate) fn from_origin(user: &UserId, origin: &ServerName) -> Result<(), EduError> {
    if user.server_name() == origin {
        Ok(())
    } else {
        Err(EduError::NotFromOrigin {
            user: user.to_owned(),
        })
    }
}

/// Delivers to local devices' inboxes, as a local sendToDevice does (device `*`: all of the
/// user's devices), once per (origin, message id).
async fn direct_to_device(
    state: &AppState,
    origin: &ServerName,
    content: DirectDeviceContent,
) -> Result<(), EduError> {
    from_origin(&content.sender, origin)?;
    let (local, others) = sort_messages(
        &state.server_name,
        &content.sender,
        &content.ev_type.to_string(),
        content.messages,
    )
    .map_err(|target| EduError::Malformed(format!("the message for {target} is not an object")))?;
    if !others.is_empty() {
        // Not ours to forward: the sender's server sends to each server itself.
        tracing::debug!(%origin, servers = others.len(), "to-device messages for other servers ignored");
    }
    let (new, dropped) = state
        .store
        .queue_remote_to_device_once(
            origin.to_string(),
            content.message_id.to_string(),
            local,
            state.limits.config.to_device_per_sender,
        )
        .await?;
    if !new {
        tracing::debug!(%origin, message_id = %content.message_id, "to-device EDU repeated; delivered before");
    }
    if dropped > 0 {
        tracing::info!(%origin, sender = %content.sender, dropped, "to-device messages for devices holding this sender's share already; dropped");
    }
    Ok(())
}

/// A device-list or cross-signing change is kept only for a user who shares a room with a
/// user of this server: no one else here would ever be told of it, and each one kept takes a
/// stream position, which wakes every waiting `/sync`.
async fn require_shared_room(state: &AppState, user: &UserId) -> Result<(), EduError> {
    if state
        .store
        .shares_room_with_server(user.to_string(), state.server_name.to_string())
        .await?
    {
        Ok(())
    } else {
        Err(EduError::NoSharedRoom {
            user: user.to_owned(),
        })
    }
}

/// Records the change, so that local users who share a room with the user see them in
/// `device_lists.changed` and query their keys again (from their server: nothing is cached).
async fn device_list_update(
    state: &AppState,
    origin: &ServerName,
    content: DeviceListUpdateContent,
) -> Result<(), EduError> {
    from_origin(&content.user_id, origin)?;
    require_shared_room(state, &content.user_id).await?;
    let stream_id = i64::try_from(u64::from(content.stream_id))
        .map_err(|_| EduError::Malformed("stream_id out of range".into()))?;
    state
        .store
        .note_remote_device_list_change(content.user_id.to_string(), Some(stream_id))
        .await?;
    Ok(())
}

/// A cross-signing change shows to clients as a device-list change too.
async fn signing_key_update(
    state: &AppState,
    origin: &ServerName,
    content: SigningKeyUpdateContent,
) -> Result<(), EduError> {
    from_origin(&content.user_id, origin)?;
    require_shared_room(state, &content.user_id).await?;
    state
        .store
        .note_remote_device_list_change(content.user_id.to_string(), None)
        .await?;
    Ok(())
}

async fn require_joined(state: &AppState, room: &RoomId, user: &UserId) -> Result<(), EduError> {
    let membership = state
        .store
        .membership(room.to_string(), user.to_string())
        .await?;
    if membership.is_some_and(|m| m.membership == "join") {
        Ok(())
    } else {
        Err(EduError::NotInRoom {
            user: user.to_owned(),
            room: room.to_string(),
        })
    }
}

async fn typing(
    state: &AppState,
    origin: &ServerName,
    content: TypingContent,
) -> Result<(), EduError> {
    from_origin(&content.user_id, origin)?;
    require_joined(state, &content.room_id, &content.user_id).await?;
    let timeout = content.typing.then_some(REMOTE_TYPING);
    state
        .typing
        .set(&content.room_id, &content.user_id, timeout);
    Ok(())
}

/// Read receipts of the origin's users for events this server has in the room; the others in
/// the EDU still count when one is refused.
async fn receipt(
    state: &AppState,
    origin: &ServerName,
    content: ReceiptContent,
) -> Result<(), EduError> {
    let mut refused = None;
    for (room_id, receipts) in content.receipts {
        for (user_id, data) in receipts.read {
            let checked = async {
                from_origin(&user_id, origin)?;
                require_joined(state, &room_id, &user_id).await?;
                Ok::<_, EduError>(())
            };
            if let Err(e) = checked.await {
                refused = Some(e);
                continue;
            }
            let thread = data.data.thread.as_str().unwrap_or_default().to_owned();
            // Several event ids mean the same: the user has read up to there. Keep the last
            // one this server knows in the room.
            let mut known = None;
            for event_id in data.event_ids.iter().rev() {
                let in_room = state
                    .rooms
                    .event(event_id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|pdu| pdu.room_id().as_deref() == Some(&*room_id));
                if in_room {
                    known = Some(event_id);
                    break;
                }
            }
            let Some(event_id) = known else {
                tracing::debug!(%origin, %room_id, %user_id, "receipt for events not known here; ignored");
                continue;
            };
            state
                .store
                .set_receipt(
                    room_id.to_string(),
                    user_id.to_string(),
                    "m.read".to_owned(),
                    thread,
                    event_id.to_string(),
                )
                .await?;
        }
    }
    refused.map_or(Ok(()), Err)
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use hyphae_p2p::Identity;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::client_api::test_support::Api;

    /// A server that never runs: its key authenticates the requests it makes in these tests.
    struct Peer {
        identity: Identity,
        _dir: tempfile::TempDir,
    }

    impl Peer {
        fn new() -> Peer {
            let dir = tempfile::tempdir().unwrap();
            Peer {
                identity: Identity::load_or_create(dir.path()).unwrap(),
                _dir: dir,
            }
        }

        fn name(&self) -> &str {
            self.identity.server_name()
        }

        /// Sends a transaction of `edus` to `api`, as the transport would hand it over: with
        /// this peer as the authenticated remote.
        async fn send(&self, api: &Api, edus: Vec<Value>) {
            static TXN: AtomicU32 = AtomicU32::new(0);
            let txn = TXN.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "origin": self.name(), "origin_server_ts": 0, "pdus": [], "edus": edus,
            });
            let mut request = Request::put(format!("/_matrix/federation/v1/send/t{txn}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(self.identity.peer_id()));
            let response = api.node.federation_router().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
        }
    }

    fn to_device(sender: &str, message_id: &str, messages: Value) -> Value {
        json!({"edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.room_key_request", "message_id": message_id,
            "messages": messages,
        }})
    }

    /// Bob's to-device inbox on `device`: (sender, content) pairs.
    pub(in crate::federation) async fn inbox(api: &Api, device: &str) -> Vec<(String, String)> {
        api.node
            .store()
            .to_device_messages("bob".into(), device.into(), 0, i64::MAX, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, _, sender, content)| (sender, content))
            .collect()
    }

    #[tokio::test]
    async fn to_device_edus_reach_local_inboxes_once_and_only_from_their_senders_server() {
        let api = Api::start().await;
        let (bob, _, phone) = api.register("bob", "password").await;
        let (_, laptop) = api.login("bob", "password").await;
        let laptop = laptop["device_id"].as_str().unwrap().to_owned();
        let peer = Peer::new();
        let alice = format!("@alice:{}", peer.name());

        let to_phone = json!({bob.as_str(): {phone.as_str(): {"request_id": "1"}}});
        let edu = to_device(&alice, "m1", to_phone.clone());
        peer.send(&api, vec![edu.clone(), edu]).await;
        peer.send(
            &api,
            vec![to_device(
                &alice,
                "m2",
                json!({bob.as_str(): {"*": {"n": 2}}}),
            )],
        )
        .await;
        let phone_inbox = inbox(&api, &phone).await;
        assert_eq!(
            phone_inbox.len(),
            2,
            "a repeated message id is delivered once"
        );
        assert_eq!(phone_inbox[0].0, alice);
        assert_eq!(
            serde_json::from_str::<Value>(&phone_inbox[0].1).unwrap(),
            json!({"request_id": "1"})
        );
        assert_eq!(
            inbox(&api, &laptop).await.len(),
            1,
            "\"*\" reaches every device"
        );

        // Sent for a user of another server, not a JSON object, or malformed: dropped, and the
        // transaction is still taken.
        let mallory = format!("@mallory:{}", Peer::new().name());
        peer.send(
            &api,
            vec![
                to_device(&mallory, "m3", to_phone.clone()),
                to_device(
                    &alice,
                    "m4",
                    json!({bob.as_str(): {phone.as_str(): "not an object"}}),
                ),
                json!({"edu_type": "m.direct_to_device", "content": {"sender": alice}}),
            ],
        )
        .await;
        assert_eq!(inbox(&api, &phone).await.len(), 2);
    }

    #[tokio::test]
    async fn device_list_updates_show_in_sync_for_users_sharing_a_room() {
        let api = Api::start().await;
        let (_, token, _) = api.register("bob", "password").await;
        let peer = Peer::new();
        let alice = format!("@alice:{}", peer.name());
        let stranger = format!("@stranger:{}", peer.name());
        let room_id = api.create_public_room(&token).await;
        api.add_joined_member(&room_id, &alice).await;
        let (_, body) = api.get("/v3/sync", Some(&token)).await;
        let since = body["next_batch"].as_str().unwrap().to_owned();

        let update = |user: &str, stream_id: u64| {
            json!({"edu_type": "m.device_list_update", "content": {
                "user_id": user, "device_id": "PHONE", "stream_id": stream_id, "prev_id": [],
                "deleted": false,
            }})
        };
        // A server speaks only for its own users.
        let other = format!("@carol:{}", Peer::new().name());
        peer.send(
            &api,
            vec![update(&other, 1), update(&stranger, 1), update(&alice, 1)],
        )
        .await;
        let (status, body) = api
            .get(&format!("/v3/sync?since={since}&timeout=0"), Some(&token))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["device_lists"]["changed"],
            json!([alice]),
            "only users sharing a room, and only the origin's"
        );
        let since = body["next_batch"].as_str().unwrap().to_owned();

        // A repeat changes nothing; a cross-signing change does.
        peer.send(&api, vec![update(&alice, 1)]).await;
        let (_, body) = api
            .get(&format!("/v3/sync?since={since}&timeout=0"), Some(&token))
            .await;
        assert!(
            body["device_lists"]["changed"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{body}"
        );
        peer.send(
            &api,
            vec![json!({"edu_type": "m.signing_key_update", "content": {"user_id": alice}})],
        )
        .await;
        let (_, body) = api
            .get(&format!("/v3/sync?since={since}&timeout=0"), Some(&token))
            .await;
        assert_eq!(body["device_lists"]["changed"], json!([alice]));
    }

    #[tokio::test]
    async fn typing_and_receipts_of_remote_members_show_and_of_others_do_not() {
        let api = Api::start().await;
        let (_, token, _) = api.register("bob", "password").await;
        let peer = Peer::new();
        let alice = format!("@alice:{}", peer.name());
        let room_id = api.create_public_room(&token).await;
        api.add_joined_member(&room_id, &alice).await;
        let typing = |user: &str, typing: bool| {
            json!({"edu_type": "m.typing", "content": {
                "room_id": room_id, "user_id": user, "typing": typing,
            }})
        };
        let outsider = format!("@outsider:{}", peer.name());
        peer.send(&api, vec![typing(&outsider, true), typing(&alice, true)])
            .await;
        let ephemeral = |event_type: &'static str| {
            let (api, token, room_id) = (&api, &token, &room_id);
            async move {
                let (_, body) = api.get("/v3/sync", Some(token)).await;
                body["rooms"]["join"][room_id]["ephemeral"]["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["type"] == event_type)
                    .map(|e| e["content"].clone())
                    .unwrap_or(json!({}))
            }
        };
        assert_eq!(ephemeral("m.typing").await["user_ids"], json!([alice]));
        peer.send(&api, vec![typing(&alice, false)]).await;
        assert_eq!(ephemeral("m.typing").await["user_ids"], json!([]));

        // Receipts: a member's for an event of the room counts; an outsider's does not.
        let (_, body) = api.get("/v3/sync", Some(&token)).await;
        let event_id = body["rooms"]["join"][&room_id]["timeline"]["events"][0]["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let receipt = |user: &str| {
            json!({"edu_type": "m.receipt", "content": {room_id.as_str(): {"m.read": {
                user: {"event_ids": [event_id], "data": {"ts": 1}},
            }}}})
        };
        peer.send(&api, vec![receipt(&outsider), receipt(&alice)])
            .await;
        let receipts = ephemeral("m.receipt").await;
        let readers = receipts[&event_id]["m.read"].as_object().unwrap();
        assert_eq!(readers.keys().collect::<Vec<_>>(), [&alice], "{receipts}");
    }

    #[tokio::test]
    async fn presence_edus_count_only_for_the_origins_users_in_a_room_here() {
        let api = Api::start().await;
        let (_, token, _) = api.register("bob", "password").await;
        let peer = Peer::new();
        let alice = format!("@alice:{}", peer.name());
        let outsider = format!("@outsider:{}", peer.name());
        let carol = format!("@carol:{}", Peer::new().name());
        let room_id = api.create_public_room(&token).await;
        api.add_joined_member(&room_id, &alice).await;
        api.add_joined_member(&room_id, &carol).await;
        let update = |user: &str, status: &str| {
            json!({"user_id": user, "presence": "unavailable", "status_msg": status,
                   "last_active_ago": 5000, "currently_active": false})
        };
        let presence =
            |push: Vec<Value>| json!({"edu_type": "m.presence", "content": {"push": push}});
        // Another server's user, a user in no room here, a status message of a novel's size.
        peer.send(
            &api,
            vec![presence(vec![
                update(&carol, "not the origin's to say"),
                update(&outsider, "in no room"),
                update(&alice, &"x".repeat(2000)),
            ])],
        )
        .await;
        let kept = || async {
            let rows = api.node.store().presence_rows().await.unwrap();
            rows.into_iter()
                .map(|row| (row.user_id, row.state, row.status_msg))
                .collect::<Vec<_>>()
        };
        assert_eq!(kept().await, []);
        peer.send(&api, vec![presence(vec![update(&alice, "away")])])
            .await;
        assert_eq!(
            kept().await,
            [(
                alice.clone(),
                "unavailable".to_owned(),
                Some("away".to_owned())
            )]
        );
        let (status, body) = api
            .get(&format!("/v3/presence/{alice}/status"), Some(&token))
            .await;
        assert_eq!(status, 200, "{body}");
        // Said by her server, but her server is not connected here: offline, with her status.
        assert_eq!(
            (&body["presence"], &body["status_msg"]),
            (&json!("offline"), &json!("away"))
        );
    }
}
