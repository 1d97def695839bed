//! A real Matrix client for the scenarios: matrix-sdk with end-to-end encryption on, logged in
//! to a node in-process, remembering what it decrypted and what it could not.
#![allow(dead_code)]

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
use matrix_sdk::ruma::{OwnedUserId, RoomId};
use matrix_sdk::{Client, Room};
use tokio::sync::mpsc;

/// A client with what it decrypted (and failed to) as its event handlers saw it.
pub struct Person {
    pub client: Client,
    texts: mpsc::UnboundedReceiver<String>,
    unable_to_decrypt: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Person {
    pub async fn new(node: &TestNode) -> Person {
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

    pub async fn register(node: &TestNode, name: &str) -> Person {
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

    pub async fn log_in_again(node: &TestNode, name: &str) -> Person {
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

    pub async fn sync(&self) {
        self.client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(200)))
            .await
            .expect("sync");
    }

    /// Syncs until `text` has been decrypted, failing after 20 s.
    pub async fn receive(&mut self, text: &str) {
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
    pub fn assert_undecryptable(&mut self, mut expected: Vec<String>) {
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

    /// Creates a private room with encryption on, inviting `invite`.
    pub async fn create_encrypted_room(&self, invite: Vec<OwnedUserId>) -> Room {
        let mut request = CreateRoomRequest::new();
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = invite;
        request.initial_state = vec![
            InitialStateEvent::with_empty_state_key(
                RoomEncryptionEventContent::with_recommended_defaults(),
            )
            .to_raw_any(),
        ];
        self.client.create_room(request).await.expect("create room")
    }

    /// The texts of the room's history as /messages gives it and this client decrypts it.
    pub async fn history_texts(&self, room_id: &RoomId) -> Vec<String> {
        let history = self
            .room(room_id)
            .messages(MessagesOptions::backward())
            .await
            .expect("history");
        history
            .chunk
            .iter()
            .filter_map(|event| match event.raw().deserialize().ok()? {
                AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    message,
                )) => {
                    let message = message.as_original()?;
                    Some(message.content.body().to_owned())
                }
                _ => None,
            })
            .collect()
    }

    pub fn room(&self, room_id: &RoomId) -> Room {
        self.client.get_room(room_id).expect("the room is known")
    }

    pub async fn send(&self, room_id: &RoomId, text: &str) -> String {
        self.room(room_id)
            .send(RoomMessageEventContent::text_plain(text))
            .await
            .expect("send")
            .response
            .event_id
            .to_string()
    }
}

pub async fn join(person: &Person, room_id: &RoomId) {
    person.sync().await;
    person.client.join_room_by_id(room_id).await.expect("join");
}
