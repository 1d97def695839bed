//! sendToDevice: messages straight to other devices (key sharing, verification), delivered by
//! their `/sync`. Only local users for now: other servers' wait for federation.

use axum::extract::State;
use hyphae_store::ToDeviceMessage;
use ruma::api::client::to_device::send_event_to_device;
use ruma::to_device::DeviceIdOrAllDevices;

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
    let mut messages = Vec::new();
    for (target, devices) in &request.messages {
        if target.server_name() != state.server_name {
            // TODO(federation): send as an m.direct_to_device EDU.
            tracing::debug!(%target, %event_type, "to-device messages for other servers wait for federation");
            continue;
        }
        for (device, content) in devices {
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                content.json().get(),
            )
            .is_err()
            {
                return Err(MatrixError::bad_json(format!(
                    "The message for {target} is not a JSON object"
                )));
            }
            messages.push(ToDeviceMessage {
                localpart: target.localpart().to_owned(),
                device_id: match device {
                    DeviceIdOrAllDevices::DeviceId(device_id) => device_id.to_string(),
                    DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                },
                sender: user.user_id.to_string(),
                event_type: event_type.clone(),
                content: content.json().get().to_owned(),
            });
        }
    }
    let delivered = state
        .store
        .queue_to_device_once(
            user.localpart,
            user.device_id.to_string(),
            request.txn_id.to_string(),
            messages,
        )
        .await?;
    if !delivered {
        tracing::debug!(txn_id = %request.txn_id, "sendToDevice retried; delivered before");
    }
    Ok(Ruma(send_event_to_device::v3::Response::new()))
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
