//! A real Matrix client, matrix-sdk with its end-to-end encryption on, against one node started
//! in-process: users register, chat in an encrypted room, and decrypt what they are sent.

use std::time::Duration;

use hyphae_tests::TestNode;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::account::register::v3::Request as RegistrationRequest;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room};
use tokio::sync::mpsc;

/// A client with what it decrypted (and failed to) as its event handlers saw it.
struct Person {
    client: Client,
    texts: mpsc::UnboundedReceiver<String>,
    unable_to_decrypt: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Person {
    async fn new(node: &TestNode) -> Person {
        let client = Client::builder()
            .homeserver_url(format!("http://{}", node.node.client_addr()))
            .respect_login_well_known(false)
            .request_config(
                RequestConfig::new()
                    .retry_limit(2)
                    .timeout(Duration::from_secs(20)),
            )
            .with_enable_share_history_on_invite(false)
            .build()
            .await
            .expect("client");
        let (text_tx, texts) = mpsc::unbounded_channel();
        client.add_event_handler(move |event: OriginalSyncRoomMessageEvent, _room: Room| {
            let text_tx = text_tx.clone();
            async move {
                if let MessageType::Text(text) = event.content.msgtype {
                    let _ = text_tx.send(text.body);
                }
            }
        });
        let (utd_tx, unable_to_decrypt) = mpsc::unbounded_channel();
        // Runs only for events still encrypted after the client tried to decrypt them.
        client.add_event_handler(move |event: OriginalSyncRoomEncryptedEvent| {
            let utd_tx = utd_tx.clone();
            async move {
                let _ = utd_tx.send(event.event_id.to_string());
            }
        });
        Person {
            client,
            texts,
            unable_to_decrypt,
            seen: Vec::new(),
        }
    }

    async fn register(node: &TestNode, name: &str) -> Person {
        let person = Person::new(node).await;
        let mut request = RegistrationRequest::new();
        request.username = Some(name.to_owned());
        request.password = Some(format!("{name}'s password"));
        let session = match person.client.matrix_auth().register(request.clone()).await {
            Ok(_) => panic!("registered without user-interactive auth"),
            Err(e) => e
                .as_uiaa_response()
                .and_then(|info| info.session.clone())
                .expect("a 401 with a session"),
        };
        let mut dummy = uiaa::Dummy::new();
        dummy.session = Some(session);
        request.auth = Some(uiaa::AuthData::Dummy(dummy));
        person
            .client
            .matrix_auth()
            .register(request)
            .await
            .expect("register");
        person.sync().await;
        person
    }

    async fn log_in_again(node: &TestNode, name: &str) -> Person {
        let person = Person::new(node).await;
        person
            .client
            .matrix_auth()
            .login_username(name, &format!("{name}'s password"))
            .initial_device_display_name("second device")
            .await
            .expect("login");
        person.sync().await;
        person
    }

    async fn sync(&self) {
        self.client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
            .await
            .expect("sync");
    }

    /// Syncs until `text` has been decrypted, failing after 20 s.
    async fn receive(&mut self, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.seen.iter().any(|t| t == text) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never decrypted {text:?}; decrypted {:?}",
                self.client.user_id().unwrap(),
                self.seen
            );
            self.sync().await;
            while let Ok(text) = self.texts.try_recv() {
                self.seen.push(text);
            }
        }
    }

    /// Checks that exactly `expected` (event ids) were left undecryptable.
    fn assert_undecryptable(&mut self, mut expected: Vec<String>) {
        let mut failed = Vec::new();
        while let Ok(event_id) = self.unable_to_decrypt.try_recv() {
            failed.push(event_id);
        }
        failed.sort();
        failed.dedup();
        expected.sort();
        assert_eq!(
            failed,
            expected,
            "{} could not decrypt other events than expected",
            self.client.user_id().unwrap()
        );
    }

    fn room(&self, room_id: &RoomId) -> Room {
        self.client.get_room(room_id).expect("the room is known")
    }

    async fn send(&self, room_id: &RoomId, text: &str) -> String {
        self.room(room_id)
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .expect("send")
            .response
            .event_id
            .to_string()
    }
}

async fn join(person: &Person, room_id: &RoomId) {
    person.sync().await;
    person.client.join_room_by_id(room_id).await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chat_between_matrix_sdk_clients() {
    let node = TestNode::start().await;
    let mut alice = Person::register(&node, "alice").await;
    let mut bob = Person::register(&node, "bob").await;

    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.client.user_id().unwrap().to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice
        .client
        .create_room(request)
        .await
        .expect("create room");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    // The node's default room version (12, the newest) is one this client handles.
    let version = node
        .node
        .store()
        .room_version(room_id.to_string())
        .await
        .unwrap();
    assert_eq!(version.as_deref(), Some("12"));
    join(&bob, &room_id).await;
    alice.sync().await;

    // Both ways, encrypted on the wire and decrypted by the other client.
    let hello = alice.send(&room_id, "hello bob").await;
    bob.receive("hello bob").await;
    let hi = bob.send(&room_id, "hi alice").await;
    alice.receive("hi alice").await;
    assert!(
        alice
            .room(&room_id)
            .latest_encryption_state()
            .await
            .unwrap()
            .is_encrypted(),
        "the room is encrypted"
    );

    // The node stored only ciphertext.
    let stored = node
        .node
        .store()
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM events WHERE pdu LIKE '%hello bob%' OR pdu LIKE '%hi alice%'",
                [],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(stored, 0, "plaintext reached the server");

    // Carol is invited; what is said after the invite is shared with her, and she reads it
    // once she joins.
    let mut carol = Person::register(&node, "carol").await;
    alice
        .room(&room_id)
        .invite_user_by_id(carol.client.user_id().unwrap())
        .await
        .expect("invite carol");
    let welcome = alice.send(&room_id, "welcome carol").await;
    join(&carol, &room_id).await;
    let history = carol
        .room(&room_id)
        .messages(MessagesOptions::backward())
        .await
        .expect("history");
    let decrypted: Vec<String> = history
        .chunk
        .iter()
        .filter_map(|event| match event.raw().deserialize().ok()? {
            AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(message)) => {
                let message = message.as_original()?;
                Some(message.content.body().to_owned())
            }
            _ => None,
        })
        .collect();
    assert!(
        decrypted.iter().any(|t| t == "welcome carol"),
        "carol read {decrypted:?}"
    );
    carol.receive("welcome carol").await;

    // Alice logs in on a second device; Bob's next message reaches it too.
    let mut alice_phone = Person::log_in_again(&node, "alice").await;
    bob.sync().await;
    bob.send(&room_id, "to all of alice's devices").await;
    alice_phone.receive("to all of alice's devices").await;
    alice.receive("to all of alice's devices").await;
    carol.receive("to all of alice's devices").await;

    alice.assert_undecryptable(Vec::new());
    bob.assert_undecryptable(Vec::new());
    // What was said before Carol was invited was never shared with her, and what was said before
    // Alice's second device existed was never shared with it: both stay unreadable there (keys
    // for them travel between one's own devices through key requests or backup, not the server).
    carol.assert_undecryptable(vec![hello.clone(), hi.clone()]);
    alice_phone.assert_undecryptable(vec![hello, hi, welcome]);
}
