//! `key/v2/server` and `federation/v1/version`. A Hyphae server's verify key is its own name
//! (the hex of the key), so nobody needs this answer to check our signatures; it is served for
//! standard tooling and for servers that ask anyway.

use std::time::Duration;

use axum::extract::State;
use ruma::api::federation::discovery::{
    ServerSigningKeys, VerifyKey, get_server_keys, get_server_version,
};
use ruma::serde::{Base64, Raw};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerSigningKeyId, UInt};

use crate::client_api::{MatrixError, Ruma};
use crate::node::AppState;
use crate::signing::KEY_ID;

/// How long others may cache the key answer; the key never changes, it is the name.
const KEY_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) async fn version() -> Ruma<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hyphae".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ruma(response)
}

pub(crate) async fn server_keys(
    State(state): State<AppState>,
) -> Result<Ruma<get_server_keys::v2::Response>, MatrixError> {
    let key = &state.signing_key;
    let valid_until = MilliSecondsSinceUnixEpoch::now().get()
        + UInt::try_from(KEY_VALIDITY.as_millis() as u64).unwrap_or_default();
    let mut keys = ServerSigningKeys::new(
        key.server_name().clone(),
        MilliSecondsSinceUnixEpoch(valid_until),
    );
    let key_id = OwnedServerSigningKeyId::try_from(KEY_ID)
        .map_err(|e| MatrixError::unknown(format!("key id: {e}")))?;
    keys.verify_keys.insert(
        key_id,
        VerifyKey::new(Base64::new(key.public_key().to_vec())),
    );
    let mut object: ruma::CanonicalJsonObject = serde_json::to_value(&keys)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| MatrixError::unknown("cannot encode the key response"))?;
    key.sign_json(&mut object)
        .map_err(|e| MatrixError::unknown(format!("cannot sign the key response: {e}")))?;
    let raw = serde_json::value::to_raw_value(&object)
        .map_err(|e| MatrixError::unknown(e.to_string()))?;
    Ok(Ruma(get_server_keys::v2::Response::new(Raw::from_json(
        raw,
    ))))
}

/// `io.hyphae/owner`: who owns this node (the user the app on this device signs in as), so
/// devices nearby can show a person rather than a key. Nodes without an owner say 404.
pub(crate) async fn owner(
    State(state): State<AppState>,
    super::Origin(_): super::Origin,
) -> Result<axum::Json<serde_json::Value>, MatrixError> {
    let Some(localpart) = &state.owner else {
        return Err(MatrixError::not_found("This node has no owner"));
    };
    let profile = state.store.profile(localpart.clone()).await?;
    let displayname = profile.and_then(|(name, _)| name);
    Ok(axum::Json(serde_json::json!({
        "user_id": format!("@{localpart}:{}", state.server_name),
        "displayname": displayname,
        "mailbox": crate::backup::mailbox::own_record(&state, None).await,
    })))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::client_api::test_support::Api;

    #[tokio::test]
    async fn the_key_answer_is_signed_by_the_key_the_name_spells() {
        let api = Api::start().await;
        let router = api.node.federation_router();
        let response = router
            .oneshot(
                Request::get("/_matrix/key/v2/server")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let keys: ruma::CanonicalJsonObject = serde_json::from_slice(&body).unwrap();
        let name = api.node.server_name();
        assert_eq!(
            keys["server_name"],
            ruma::CanonicalJsonValue::String(name.into())
        );

        // Verified with nothing but the name: the hex is the public key.
        let public = hex::decode(name).unwrap();
        let key_map = BTreeMap::from([(
            name.to_owned(),
            BTreeMap::from([("ed25519:p2p".to_owned(), ruma::serde::Base64::new(public))]),
        )]);
        ruma::signatures::verify_json(&key_map, &keys).expect("signed by the name's key");
    }

    #[tokio::test]
    async fn unknown_federation_paths_get_matrix_errors() {
        let api = Api::start().await;
        let router = api.node.federation_router();
        let response = router
            .oneshot(
                Request::get("/_matrix/federation/v1/nothing")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let version = api
            .node
            .federation_router()
            .oneshot(
                Request::get("/_matrix/federation/v1/version")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = version.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["server"]["name"], "Hyphae");
    }
}
