//! sendToDevice: messages straight to other devices (key sharing, verification), delivered by
//! their `/sync`. Other servers' users' messages go to their servers as `m.direct_to_device`
//! EDUs, through the durable outbox; what other servers send us comes in through the same
//! inboxes (see `federation::edus`).

use std::collections::BTreeMap;

use axum::extract::State;
use hyphae_store::ToDeviceMessage;
use ruma::api::client::to_device::send_event_to_device;
use ruma::api::federation::transactions::edu::{DirectDeviceContent, DirectDeviceMessages, Edu};
use ruma::to_device::DeviceIdOrAllDevices;
use ruma::{OwnedServerName, OwnedTransactionId, OwnedUserId, ServerName, UserId};
use sha2::{Digest, Sha256};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;

pub(crate) async fn send(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    let event_type = request.event_type.to_string();
    let (local, remote) = sort_messages(
        &state.server_name,
        &user.user_id,
        &event_type,
        request.messages,
    )
    .map_err(|target| {
        MatrixError::bad_json(format!("The message for {target} is not a JSON object"))
    })?;
    // Other servers' first: the message id is the same on a retry, so their servers drop a
    // repeat, while a failure here leaves the transaction undelivered for the client to retry.
    let message_id = message_id(&user, request.txn_id.as_str());
    for (server, messages) in remote {
        // A server takes EDUs up to a size: many devices' messages go as several EDUs.
        for (n, messages) in split_for_edus(messages).into_iter().enumerate() {
            let message_id = match n {
                0 => message_id.clone(),
                n => format!("{message_id}-{n}").into(),
            };
            let mut content = DirectDeviceContent::new(
                user.user_id.clone(),
                request.event_type.clone(),
                message_id,
            );
            content.messages = messages;
            let edu = serde_json::to_value(Edu::DirectToDevice(content))
                .map_err(|e| MatrixError::unknown(format!("Cannot encode the EDU: {e}")))?;
            state
                .federation
                .queue_edu(vec![server.clone()], edu)
                .await
                .map_err(|e| {
                    tracing::error!(%server, error = %e, "could not queue to-device messages");
                    MatrixError::unknown("Could not queue the messages for other servers")
                })?;
        }
    }
    let delivered = state
        .store
        .queue_to_device_once(
            user.localpart,
            user.device_id.to_string(),
            request.txn_id.to_string(),
            local,
        )
        .await?;
    if !delivered {
        tracing::debug!(txn_id = %request.txn_id, "sendToDevice retried; delivered before");
    }
    Ok(Ruma(send_event_to_device::v3::Response::new()))
}

/// Splits one server's messages into groups that each fit an EDU (with room for the envelope).
/// A message too large for an EDU on its own goes alone (and the receiving server refuses it).
fn split_for_edus(messages: DirectDeviceMessages) -> Vec<DirectDeviceMessages> {
    const ROOM: usize = crate::federation::limits::MAX_EDU_BYTES - 2048;
    let mut groups = vec![DirectDeviceMessages::new()];
    let mut size = 0;
    for (user, devices) in messages {
        for (device, content) in devices {
            let item =
                user.as_str().len() + device.to_string().len() + content.json().get().len() + 16;
            let last = groups.last().is_some_and(|g| !g.is_empty());
            if last && size + item > ROOM {
                groups.push(DirectDeviceMessages::new());
                size = 0;
            }
            size += item;
            if let Some(group) = groups.last_mut() {
                group
                    .entry(user.clone())
                    .or_default()
                    .insert(device, content);
            }
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// The `m.direct_to_device` message id of a client's transaction: the same for a retry.
fn message_id(user: &User, txn_id: &str) -> OwnedTransactionId {
    let mut hash = Sha256::new();
    for part in [user.user_id.as_str(), user.device_id.as_str(), txn_id] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..16]).into()
}

/// Sorts `messages` from `sender` into inbox entries for the users of `server_name` (this
/// server) and, by server, the messages for other servers' users. A message that is not a JSON
/// object fails the lot: the error is its recipient.
pub(crate) fn sort_messages(
    server_name: &ServerName,
    sender: &UserId,
    event_type: &str,
    messages: DirectDeviceMessages,
) -> Result<
    (
        Vec<ToDeviceMessage>,
        BTreeMap<OwnedServerName, DirectDeviceMessages>,
    ),
    OwnedUserId,
> {
    let mut local = Vec::new();
    let mut remote: BTreeMap<OwnedServerName, DirectDeviceMessages> = BTreeMap::new();
    for (target, devices) in messages {
        for content in devices.values() {
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                content.json().get(),
            )
            .is_err()
            {
                return Err(target);
            }
        }
        if target.server_name() != server_name {
            remote
                .entry(target.server_name().to_owned())
                .or_default()
                .insert(target, devices);
            continue;
        }
        for (device, content) in devices {
            local.push(ToDeviceMessage {
                localpart: target.localpart().to_owned(),
                device_id: match device {
                    DeviceIdOrAllDevices::DeviceId(device_id) => device_id.to_string(),
                    DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                },
                sender: sender.to_string(),
                event_type: event_type.to_owned(),
                content: content.json().get().to_owned(),
            });
        }
    }
    Ok((local, remote))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::Api;

    #[tokio::test]
    async fn to_device_messages_are_delivered_once_per_transaction() {
        let api = Api::start().await;
        let (alice, token, _) = api.register("alice", "password").await;
        let (bob, _, phone) = api.register("bob", "password").await;
        let (_, laptop) = api.login("bob", "password").await;
        let laptop = laptop["device_id"].as_str().unwrap().to_owned();
        let inbox = |device: &str| {
            api.node
                .store()
                .to_device_messages("bob".into(), device.into(), 0, i64::MAX, 100)
        };

        let (api, token) = (&api, token.as_str());
        let send = |txn: &'static str, messages: serde_json::Value| async move {
            api.put(
                &format!("/v3/sendToDevice/m.room_key_request/{txn}"),
                Some(token),
                json!({"messages": messages}),
            )
            .await
        };
        let to_phone = json!({bob.as_str(): {phone.as_str(): {"request_id": "1"}}});
        for _ in 0..2 {
            let (status, body) = send("txn1", to_phone.clone()).await;
            assert_eq!(status, 200, "{body}");
        }
        let delivered = inbox(&phone).await.unwrap();
        assert_eq!(
            delivered.len(),
            1,
            "a retried transaction is delivered once"
        );
        let (_, event_type, sender, content) = &delivered[0];
        assert_eq!(
            (event_type.as_str(), sender.as_str()),
            ("m.room_key_request", alice.as_str())
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(content).unwrap()["request_id"],
            "1"
        );
        assert!(inbox(&laptop).await.unwrap().is_empty());

        // "*" reaches every device; other servers' users and unknown devices are skipped.
        let (status, _) = send(
            "txn2",
            json!({
                bob.as_str(): {"*": {"request_id": "2"}},
                "@carol:other.example": {"DEVICE": {"request_id": "3"}},
            }),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(inbox(&phone).await.unwrap().len(), 2);
        assert_eq!(inbox(&laptop).await.unwrap().len(), 1);
        let (status, _) = send(
            "txn3",
            json!({bob.as_str(): {"NOSUCHDEVICE": {"request_id": "4"}}}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(inbox(&phone).await.unwrap().len(), 2);
    }
}
