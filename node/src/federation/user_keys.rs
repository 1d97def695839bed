//! What other servers ask about this server's users for end-to-end encryption: device and
//! cross-signing keys (`user/keys/query`), one-time keys (`user/keys/claim`), device lists
//! (`user/devices`) and profiles (`query/profile`). Answered for authenticated peers only, with
//! the same queries the Client-Server API uses, and only about local users.

use axum::extract::State;
use ruma::UInt;
use ruma::api::federation::device::get_devices;
use ruma::api::federation::keys::{claim_keys, get_keys};
use ruma::api::federation::query::get_profile_information;

use super::Origin;
use crate::client_api::{
    MatrixError, Req, Ruma, claim_local, local_keys, local_profile, user_keys,
};
use crate::node::AppState;

type FederationResult<T> = Result<Ruma<T>, MatrixError>;

pub(super) async fn query(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Req(request): Req<get_keys::v1::Request>,
) -> FederationResult<get_keys::v1::Response> {
    tracing::debug!(%origin, users = request.device_keys.len(), "keys queried");
    // Other servers never see a user-signing key, nor anyone's signatures but the owner's.
    let keys = local_keys(&state, None, request.device_keys).await?;
    let mut response = get_keys::v1::Response::new(keys.device_keys);
    response.master_keys = keys.master_keys;
    response.self_signing_keys = keys.self_signing_keys;
    Ok(Ruma(response))
}

/// One-time keys are a device's scarce supply for new Olm sessions: a server may claim them
/// only for users who share a room with one of its users, and at a pace, so a stranger cannot
/// drain them (which would push every new session onto the fallback key).
pub(super) async fn claim(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Req(request): Req<claim_keys::v1::Request>,
) -> FederationResult<claim_keys::v1::Response> {
    if let Err(wait) = state.limits.key_claim(&origin) {
        tracing::info!(%origin, "one-time key claims over the pace; refused");
        return Err(MatrixError::limit_exceeded(wait));
    }
    let mut claims = request.one_time_keys;
    let mut shared = Vec::with_capacity(claims.len());
    for user in claims.keys() {
        if state
            .store
            .shares_room_with_server(user.to_string(), origin.to_string())
            .await?
        {
            shared.push(user.clone());
        }
    }
    let asked = claims.len();
    claims.retain(|user, _| shared.contains(user));
    tracing::debug!(%origin, asked, shared = claims.len(), "one-time keys claimed");
    let claimed = claim_local(&state, claims).await?;
    Ok(Ruma(claim_keys::v1::Response::new(claimed)))
}

pub(super) async fn devices(
    State(state): State<AppState>,
    Origin(_): Origin,
    Req(request): Req<get_devices::v1::Request>,
) -> FederationResult<get_devices::v1::Response> {
    if request.user_id.server_name() != state.server_name {
        return Err(MatrixError::invalid_param(format!(
            "{} is not a user of this server",
            request.user_id
        )));
    }
    // Read before the keys: a change after this read has a larger stream id, so the asking
    // server applies its update on top of this answer instead of dropping it.
    let stream_id = UInt::try_from(*state.store.stream_position().borrow()).unwrap_or_default();
    let keys = user_keys(&state, &request.user_id, &[], None)
        .await?
        .ok_or_else(|| MatrixError::not_found("No such user"))?;
    let mut response = get_devices::v1::Response::new(request.user_id, stream_id);
    response.devices = keys
        .devices
        .into_iter()
        .map(|(device_id, (keys, name))| {
            let mut device = get_devices::v1::UserDevice::new(device_id, keys);
            device.device_display_name = name;
            device
        })
        .collect();
    response.master_key = keys.master;
    response.self_signing_key = keys.self_signing;
    Ok(Ruma(response))
}

pub(super) async fn profile(
    State(state): State<AppState>,
    Origin(_): Origin,
    Req(request): Req<get_profile_information::v1::Request>,
) -> FederationResult<get_profile_information::v1::Response> {
    let (displayname, avatar_url) = local_profile(&state, &request.user_id).await?;
    let wanted = |field: &str| {
        request
            .field
            .as_ref()
            .is_none_or(|wanted| wanted.as_str() == field)
    };
    let mut response = get_profile_information::v1::Response::new();
    for (field, value) in [("displayname", displayname), ("avatar_url", avatar_url)] {
        if let Some(value) = value
            && wanted(field)
        {
            response.set(field.to_owned(), value.into());
        }
    }
    let field = crate::backup::mailbox::PROFILE_FIELD;
    if wanted(field)
        && let Some(record) =
            crate::backup::mailbox::own_record(&state, Some(&request.user_id)).await
    {
        response.set(field.to_owned(), record);
    }
    Ok(Ruma(response))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use reqwest::Method;
    use serde_json::json;
    use tower::ServiceExt;

    use crate::client_api::test_support::Api;

    #[tokio::test]
    async fn only_authenticated_peers_are_answered() {
        let api = Api::start().await;
        let (bob, _, _) = api.register("bob", "password").await;
        for (method, path) in [
            ("POST", "/_matrix/federation/v1/user/keys/query".to_owned()),
            ("POST", "/_matrix/federation/v1/user/keys/claim".to_owned()),
            ("GET", format!("/_matrix/federation/v1/user/devices/{bob}")),
            (
                "GET",
                format!("/_matrix/federation/v1/query/profile?user_id={bob}"),
            ),
        ] {
            let body = json!({"device_keys": {&bob: []}, "one_time_keys": {}});
            let request = Request::builder()
                .method(method)
                .uri(&path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let response = api.node.federation_router().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn devices_keys_and_profiles_of_local_users_over_federation() {
        let (a, b) = (Api::start_federated().await, Api::start_federated().await);
        a.connect(&b).await;
        let (bob, token, device) = b.register("bob", "password").await;
        let keys = json!({
            "user_id": bob, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("ed25519:{device}"): "ZWQ"},
            "signatures": {},
        });
        let (status, _) = b
            .post(
                "/v3/keys/upload",
                Some(&token),
                json!({"device_keys": keys}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = b
            .put(
                &format!("/v3/profile/{bob}/displayname"),
                Some(&token),
                json!({"displayname": "Bob"}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = b
            .put(
                &format!("/v3/devices/{device}"),
                Some(&token),
                json!({"display_name": "Bob's phone"}),
            )
            .await;
        assert_eq!(status, 200);

        let (status, body) = a
            .federation(
                &b,
                Method::POST,
                "/_matrix/federation/v1/user/keys/query",
                Some(json!({"device_keys": {&bob: [], "@nobody:elsewhere.example": []}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["device_keys"][&bob][&device]["keys"], keys["keys"]);
        assert_eq!(
            body["device_keys"].as_object().unwrap().len(),
            1,
            "other servers' users are not answered for: {body}"
        );

        let (status, body) = a
            .federation(
                &b,
                Method::GET,
                &format!("/_matrix/federation/v1/user/devices/{bob}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], bob.as_str());
        assert!(
            body["stream_id"].as_u64().is_some_and(|id| id > 0),
            "{body}"
        );
        assert_eq!(body["devices"][0]["device_id"], device.as_str());
        assert_eq!(body["devices"][0]["device_display_name"], "Bob's phone");
        assert_eq!(body["devices"][0]["keys"]["keys"], keys["keys"]);
        let (status, body) = a
            .federation(
                &b,
                Method::GET,
                &format!(
                    "/_matrix/federation/v1/user/devices/@nobody:{}",
                    b.node.server_name()
                ),
                None,
            )
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );

        let profile = |query: String| {
            let path = format!("/_matrix/federation/v1/query/profile?{query}");
            let (a, b) = (&a, &b);
            async move { a.federation(b, Method::GET, &path, None).await }
        };
        let (status, body) = profile(format!("user_id={bob}")).await;
        assert_eq!((status, body), (200, json!({"displayname": "Bob"})));
        let (status, body) = profile(format!("user_id={bob}&field=avatar_url")).await;
        assert_eq!((status, body), (200, json!({})));
        let (status, body) = profile(format!("user_id=@nobody:{}", b.node.server_name())).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );
    }
}
