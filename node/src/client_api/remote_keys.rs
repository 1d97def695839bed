//! End-to-end keys across servers: `keys/query` and `keys/claim` ask other servers for their
//! users' keys (one request per server, all at once, each under a deadline), and a local user's
//! device and cross-signing changes are announced to every server that shares a room with them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::Method;
use hyphae_store::StoreError;
use ruma::api::IncomingResponseExt;
use ruma::api::client::keys::{claim_keys, get_keys};
use ruma::api::federation::keys::{claim_keys as federation_claim, get_keys as federation_get};
use ruma::api::federation::transactions::edu::{
    DeviceListUpdateContent, Edu, SigningKeyUpdateContent,
};
use ruma::{DeviceId, OwnedServerName, OwnedUserId, UInt, UserId};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Value as JsonValue, json};

use super::error::MatrixError;
use super::keys::{ByServer, user_keys};
use crate::federation::FederationError;
use crate::node::AppState;

/// How long a client waits for other servers' keys when it does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client may not hold a request longer than this waiting on other servers.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks each server for its users' device and cross-signing keys and merges the answers into
/// `response`; a server that fails or is late is named in `response.failures`.
pub(super) async fn query(
    state: &AppState,
    remote: ByServer<Vec<ruma::OwnedDeviceId>>,
    timeout: Option<Duration>,
    response: &mut get_keys::v3::Response,
) {
    let path = "/_matrix/federation/v1/user/keys/query";
    let answers: Vec<(_, federation_get::v1::Response)> = ask_all(
        state,
        remote,
        path,
        "device_keys",
        timeout,
        &mut response.failures,
    )
    .await;
    for (asked, answer) in answers {
        response
            .device_keys
            .extend(only_asked(&asked, answer.device_keys));
        response
            .master_keys
            .extend(only_asked(&asked, answer.master_keys));
        response
            .self_signing_keys
            .extend(only_asked(&asked, answer.self_signing_keys));
    }
}

/// Claims one-time keys of other servers' devices, merging them into `response`; a server that
/// fails or is late is named in `response.failures`.
pub(super) async fn claim(
    state: &AppState,
    remote: ByServer<BTreeMap<ruma::OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
    timeout: Option<Duration>,
    response: &mut claim_keys::v3::Response,
) {
    let path = "/_matrix/federation/v1/user/keys/claim";
    let answers: Vec<(_, federation_claim::v1::Response)> = ask_all(
        state,
        remote,
        path,
        "one_time_keys",
        timeout,
        &mut response.failures,
    )
    .await;
    for (asked, answer) in answers {
        response
            .one_time_keys
            .extend(only_asked(&asked, answer.one_time_keys));
    }
}

/// A server answers for its own users only, and only for those it was asked about.
fn only_asked<V>(
    asked: &BTreeSet<OwnedUserId>,
    answer: BTreeMap<OwnedUserId, V>,
) -> impl Iterator<Item = (OwnedUserId, V)> {
    answer
        .into_iter()
        .filter(move |(user_id, _)| asked.contains(user_id))
}

/// POSTs `{field: users}` to `path` on every server at once. Returns the users asked and the
/// answer of each server that answered in time; the others go into `failures` (by server name,
/// as the spec's `failures` maps want).
async fn ask_all<T: serde::Serialize, R: IncomingResponseExt>(
    state: &AppState,
    servers: ByServer<T>,
    path: &str,
    field: &str,
    timeout: Option<Duration>,
    failures: &mut BTreeMap<String, JsonValue>,
) -> Vec<(BTreeSet<OwnedUserId>, R)> {
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT);
    let asks = servers.into_iter().map(|(server, users)| {
        let body = json!({ field: users });
        let asked: BTreeSet<OwnedUserId> = users.into_keys().collect();
        async move {
            let answer = tokio::time::timeout(
                timeout,
                state.federation.request::<Box<RawJsonValue>>(
                    &server,
                    Method::POST,
                    path,
                    Some(&body),
                ),
            )
            .await;
            let answer = match answer {
                Ok(Ok(raw)) => {
                    R::try_from_http_response(axum::http::Response::new(raw.get().as_bytes()))
                        .map_err(|e| (502, format!("Unreadable answer: {e}")))
                }
                Ok(Err(e)) => Err((failure_status(&e), e.to_string())),
                Err(_) => Err((504, format!("No answer within {timeout:?}"))),
            };
            (server, asked, answer)
        }
    });
    let mut answers = Vec::new();
    for (server, asked, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(answer) => answers.push((asked, answer)),
            Err((status, message)) => {
                tracing::debug!(%server, %path, status, %message, "another server's keys are unavailable");
                failures.insert(
                    server.to_string(),
                    json!({ "status": status, "message": message }),
                );
            }
        }
    }
    answers
}

fn failure_status(error: &FederationError) -> u16 {
    match error {
        FederationError::Refused { status, .. } => status.as_u16(),
        FederationError::BadResponse { .. } => 502,
        _ => 503,
    }
}

#[derive(Debug, thiserror::Error)]
enum AnnounceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error("cannot encode the EDU: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot read the keys: {0:?}")]
    Keys(MatrixError),
}

impl From<MatrixError> for AnnounceError {
    fn from(error: MatrixError) -> Self {
        AnnounceError::Keys(error)
    }
}

/// Tells the servers that share a room with `user_id` that one of their devices changed (new
/// or changed keys, new signatures, or deleted), as an `m.device_list_update` EDU carrying the
/// device as it is now. The change itself is made; a failure here is logged.
pub(crate) async fn announce_device(state: &AppState, user_id: &UserId, device_id: &DeviceId) {
    if let Err(e) = try_announce_device(state, user_id, device_id).await {
        tracing::warn!(%user_id, %device_id, error = %e, "could not announce a device change");
    }
}

async fn try_announce_device(
    state: &AppState,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<(), AnnounceError> {
    let servers = servers_sharing_rooms(state, user_id).await?;
    if servers.is_empty() {
        return Ok(());
    }
    // The change is committed, so the stream is at or past it: a later change gets a larger id.
    let stream_id = UInt::try_from(*state.store.stream_position().borrow()).unwrap_or_default();
    let mut content =
        DeviceListUpdateContent::new(user_id.to_owned(), device_id.to_owned(), stream_id);
    let device = state
        .store
        .device(user_id.localpart().to_owned(), device_id.to_string())
        .await?;
    if device.is_none() {
        content.deleted = Some(true);
    } else if let Some((keys, name)) = user_keys(state, user_id, &[device_id.to_owned()], None)
        .await?
        .and_then(|mut keys| keys.devices.remove(device_id))
    {
        content.keys = Some(keys);
        content.device_display_name = name;
    }
    let edu = serde_json::to_value(Edu::DeviceListUpdate(content))?;
    state.federation.queue_edu(servers, edu).await?;
    Ok(())
}

/// Tells the servers that share a room with `user_id` that their cross-signing keys changed,
/// as an `m.signing_key_update` EDU with the master and self-signing keys as they are now (the
/// user-signing key stays private). A failure is logged.
pub(crate) async fn announce_cross_signing(state: &AppState, user_id: &UserId) {
    if let Err(e) = try_announce_cross_signing(state, user_id).await {
        tracing::warn!(%user_id, error = %e, "could not announce a cross-signing change");
    }
}

async fn try_announce_cross_signing(
    state: &AppState,
    user_id: &UserId,
) -> Result<(), AnnounceError> {
    let servers = servers_sharing_rooms(state, user_id).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let Some(keys) = user_keys(state, user_id, &[], None).await? else {
        return Ok(());
    };
    let mut content = SigningKeyUpdateContent::new(user_id.to_owned());
    content.master_key = keys.master;
    content.self_signing_key = keys.self_signing;
    let edu = serde_json::to_value(Edu::SigningKeyUpdate(content))?;
    state.federation.queue_edu(servers, edu).await?;
    Ok(())
}

/// The other servers with a member joined to a room `user_id` is joined to: the servers whose
/// users may encrypt to `user_id`'s devices.
pub(crate) async fn servers_sharing_rooms(
    state: &AppState,
    user_id: &UserId,
) -> Result<Vec<OwnedServerName>, StoreError> {
    let mut servers = BTreeSet::new();
    for membership in state.store.memberships_of(user_id.to_string()).await? {
        if membership.membership != "join" {
            continue;
        }
        for member in state
            .store
            .room_members(membership.room_id, "join".into())
            .await?
        {
            if let Ok(member) = UserId::parse(&member)
                && member.server_name() != state.server_name
            {
                servers.insert(member.server_name().to_owned());
            }
        }
    }
    Ok(servers.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::super::keys::tests::{cross_signing_key, device_keys, new_key, one_time_key};
    use super::super::test_support::Api;

    /// Long-polls `/sync` until `until` holds for a response, for at most ten seconds.
    async fn sync_until(
        api: &Api,
        token: &str,
        since: &str,
        until: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut since = since.to_owned();
        loop {
            let (status, body) = api
                .get(&format!("/v3/sync?since={since}&timeout=2000"), Some(token))
                .await;
            assert_eq!(status, 200, "{body}");
            if until(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not in time: {body}"
            );
            since = body["next_batch"].as_str().unwrap().to_owned();
        }
    }

    async fn initial_sync(api: &Api, token: &str) -> String {
        let (status, body) = api.get("/v3/sync", Some(token)).await;
        assert_eq!(status, 200, "{body}");
        body["next_batch"].as_str().unwrap().to_owned()
    }

    /// A server name nobody answers for: a fresh key that never ran a node.
    fn unreachable_server() -> String {
        let dir = tempfile::tempdir().unwrap();
        hyphae_p2p::Identity::load_or_create(dir.path())
            .unwrap()
            .server_name()
            .to_owned()
    }

    #[tokio::test]
    async fn another_servers_keys_are_queried_and_claimed_over_federation() {
        let (a, b) = (Api::start_federated().await, Api::start_federated().await);
        a.connect(&b).await;
        let (alice, alice_token, _) = a.register("alice", "password").await;
        let (bob, bob_token, bob_device) = b.register("bob", "password").await;
        let keys = device_keys(&bob, &bob_device, "ZWQyNTUxOQ");
        let (status, body) = b
            .post(
                "/v3/keys/upload",
                Some(&bob_token),
                json!({
                    "device_keys": keys,
                    "one_time_keys": {
                        "signed_curve25519:AAAAAQ": one_time_key(&bob, &bob_device, "b25l"),
                        "signed_curve25519:AAAAAg": one_time_key(&bob, &bob_device, "dHdv"),
                    },
                    "fallback_keys": {
                        "signed_curve25519:AAAAAw": one_time_key(&bob, &bob_device, "ZmFsbGJhY2s"),
                    },
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let master = new_key(None);
        let (status, body) = b
            .post(
                "/v3/keys/device_signing/upload",
                Some(&bob_token),
                json!({"master_key": cross_signing_key(&bob, "master", &master)}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        let nowhere = unreachable_server();
        let (status, body) = a
            .post(
                "/v3/keys/query",
                Some(&alice_token),
                json!({"timeout": 3000, "device_keys": {
                    bob.as_str(): [],
                    format!("@carol:{nowhere}"): [],
                    alice.as_str(): [],
                }}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let queried = &body["device_keys"][bob.as_str()][bob_device.as_str()];
        assert_eq!(queried["keys"], keys["keys"], "{body}");
        assert_eq!(queried["user_id"], bob.as_str());
        assert_eq!(
            body["master_keys"][bob.as_str()]["keys"],
            json!({format!("ed25519:{}", master.public): master.public})
        );
        assert!(body["failures"][&nowhere].is_object(), "{body}");
        assert!(
            body["failures"].get(b.node.server_name()).is_none(),
            "{body}"
        );
        assert!(
            body["device_keys"][alice.as_str()].is_object(),
            "local users still answered"
        );

        // Claims take Bob's one-time keys on B, then his fallback key: Alice shares a room
        // with him (a server that shares none gets none).
        let room = b.create_public_room(&bob_token).await;
        b.add_joined_member(&room, &alice).await;
        let claim = || {
            a.post(
                "/v3/keys/claim",
                Some(&alice_token),
                json!({"timeout": 3000, "one_time_keys": {
                    bob.as_str(): {bob_device.as_str(): "signed_curve25519"},
                    format!("@carol:{nowhere}"): {"DEVICE": "signed_curve25519"},
                }}),
            )
        };
        let mut claimed = Vec::new();
        for _ in 0..3 {
            let (status, body) = claim().await;
            assert_eq!(status, 200, "{body}");
            assert!(body["failures"][&nowhere].is_object(), "{body}");
            let keys = body["one_time_keys"][bob.as_str()][bob_device.as_str()]
                .as_object()
                .unwrap_or_else(|| panic!("no key claimed: {body}"))
                .clone();
            assert_eq!(keys.len(), 1);
            claimed.extend(keys.into_iter().map(|(id, key)| (id, key["key"].clone())));
        }
        claimed[..2].sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            claimed,
            [
                ("signed_curve25519:AAAAAQ".to_owned(), json!("b25l")),
                ("signed_curve25519:AAAAAg".to_owned(), json!("dHdv")),
                ("signed_curve25519:AAAAAw".to_owned(), json!("ZmFsbGJhY2s")),
            ]
        );
        let counts = b
            .node
            .store()
            .one_time_key_counts(bob.clone(), bob_device.clone())
            .await
            .unwrap();
        assert_eq!(counts.get("signed_curve25519"), None);
    }

    #[tokio::test]
    async fn a_node_without_federation_reports_other_servers_as_failures() {
        let api = Api::start().await;
        let (_, token, _) = api.register("alice", "password").await;
        let elsewhere = unreachable_server();
        let (status, body) = api
            .post(
                "/v3/keys/query",
                Some(&token),
                json!({"device_keys": {format!("@carol:{elsewhere}"): []}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["failures"][&elsewhere]["status"], 503, "{body}");
    }

    #[tokio::test]
    async fn to_device_messages_reach_another_servers_users_once() {
        let (a, b) = (Api::start_federated().await, Api::start_federated().await);
        a.connect(&b).await;
        let (alice, alice_token, _) = a.register("alice", "password").await;
        let (bob, bob_token, bob_device) = b.register("bob", "password").await;
        let since = initial_sync(&b, &bob_token).await;

        let send = |txn: &'static str, device: &str, request_id: &str| {
            let path = format!("/v3/sendToDevice/m.room_key_request/{txn}");
            let body = json!({"messages": {bob.as_str(): {device: {"request_id": request_id}}}});
            let (a, token) = (&a, &alice_token);
            async move { a.put(&path, Some(token), body).await }
        };
        for _ in 0..2 {
            let (status, body) = send("txn1", &bob_device, "1").await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, _) = send("txn2", "*", "2").await;
        assert_eq!(status, 200);

        // Both transactions' messages arrive, the retried one once, in order.
        let mut seen: Vec<Value> = Vec::new();
        let mut since = since;
        while seen.len() < 2 {
            let body = sync_until(&b, &bob_token, &since, |body| {
                body["to_device"]["events"]
                    .as_array()
                    .is_some_and(|events| !events.is_empty())
            })
            .await;
            seen.extend(
                body["to_device"]["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .cloned(),
            );
            since = body["next_batch"].as_str().unwrap().to_owned();
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        for (event, request_id) in seen.iter().zip(["1", "2"]) {
            assert_eq!(event["sender"], alice.as_str());
            assert_eq!(event["type"], "m.room_key_request");
            assert_eq!(event["content"]["request_id"], request_id);
        }
    }

    #[tokio::test]
    async fn device_changes_reach_users_sharing_a_room_on_another_server() {
        let (a, b) = (Api::start_federated().await, Api::start_federated().await);
        a.connect(&b).await;
        let (alice, alice_token, _) = a.register("alice", "password").await;
        let (bob, bob_token, bob_device) = b.register("bob", "password").await;
        // A room each side sees both of them in.
        let room_on_a = a.create_public_room(&alice_token).await;
        a.add_joined_member(&room_on_a, &bob).await;
        let room_on_b = b.create_public_room(&bob_token).await;
        b.add_joined_member(&room_on_b, &alice).await;

        let since = initial_sync(&a, &alice_token).await;
        let (status, _) = b
            .post(
                "/v3/keys/upload",
                Some(&bob_token),
                json!({"device_keys": device_keys(&bob, &bob_device, "ZWQyNTUxOQ")}),
            )
            .await;
        assert_eq!(status, 200);
        let changed = |body: &Value| {
            body["device_lists"]["changed"]
                .as_array()
                .is_some_and(|users| users.contains(&json!(bob)))
        };
        let body = sync_until(&a, &alice_token, &since, changed).await;
        let after = body["next_batch"].as_str().unwrap().to_owned();

        // keys/changes says the same.
        let from = since.split('_').next().unwrap();
        let to = after.split('_').next().unwrap();
        let (status, body) = a
            .get(
                &format!("/v3/keys/changes?from={from}&to={to}"),
                Some(&alice_token),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["changed"].as_array().unwrap().contains(&json!(bob)),
            "{body}"
        );

        // A deleted device is a change too.
        let (status, body) = b
            .call(
                reqwest::Method::DELETE,
                &format!("/v3/devices/{bob_device}"),
                Some(&bob_token),
                Some(json!({"auth": {"type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": "password"}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sync_until(&a, &alice_token, &after, changed).await;
    }

    #[tokio::test]
    async fn device_changes_are_queued_for_the_servers_sharing_a_room_only() {
        let api = Api::start().await;
        let (bob, token, device) = api.register("bob", "password").await;
        let (sharing, other) = (unreachable_server(), unreachable_server());
        let room = api.create_public_room(&token).await;
        api.add_joined_member(&room, &format!("@carol:{sharing}"))
            .await;
        let (status, _) = api
            .post(
                "/v3/keys/upload",
                Some(&token),
                json!({"device_keys": device_keys(&bob, &device, "ZWQyNTUxOQ")}),
            )
            .await;
        assert_eq!(status, 200);
        // The same keys again announce nothing new.
        let (status, _) = api
            .post(
                "/v3/keys/upload",
                Some(&token),
                json!({"device_keys": device_keys(&bob, &device, "ZWQyNTUxOQ")}),
            )
            .await;
        assert_eq!(status, 200);
        let outbox = |server: String| api.node.store().outbox_batch(server, 50, 100);
        let queued = outbox(sharing).await.unwrap();
        assert_eq!(queued.len(), 1, "{queued:?}");
        let edu: Value = serde_json::from_str(&queued[0].payload).unwrap();
        assert_eq!(edu["edu_type"], "m.device_list_update");
        assert_eq!(edu["content"]["user_id"], bob.as_str());
        assert_eq!(edu["content"]["device_id"], device.as_str());
        assert_eq!(
            edu["content"]["keys"]["keys"][format!("ed25519:{device}")],
            "ZWQyNTUxOQ"
        );
        assert!(outbox(other).await.unwrap().is_empty());
    }
}
