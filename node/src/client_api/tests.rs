//! The Client-Server API over real HTTP against a running node: what a client sees.

use serde_json::{Value, json};

use super::test_support::Api;
use crate::RateLimit;

fn password_auth(user: &str, password: &str) -> Value {
    json!({"type": "m.login.password",
           "identifier": {"type": "m.id.user", "user": user},
           "password": password})
}

#[tokio::test]
async fn register_log_in_and_out() {
    let api = Api::start().await;

    // Without auth, the server names the flow to complete.
    let (status, body) = api
        .post(
            "/v3/register",
            None,
            json!({"username": "alice", "password": "pw1"}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy");
    assert!(body["session"].is_string());

    let (alice, token, device) = api.register("Alice", "pw1").await;
    assert_eq!(alice, format!("@alice:{}", api.node.server_name()));

    let (status, body) = api.get("/v3/account/whoami", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], alice.as_str());
    assert_eq!(body["device_id"], device.as_str());

    // Taken and invalid names.
    let (status, body) = api
        .post(
            "/v3/register",
            None,
            json!({"username": "alice", "password": "x", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_USER_IN_USE"))
    );
    let (status, body) = api.get("/v3/register/available?username=alice", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_USER_IN_USE"))
    );
    let (status, body) = api.get("/v3/register/available?username=bob", None).await;
    assert_eq!((status, &body["available"]), (200, &json!(true)));
    let (status, body) = api
        .get("/v3/register/available?username=bad%20name!", None)
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_USERNAME"))
    );

    // Login: wrong password, unknown user and another server's user are all refused alike.
    for (user, password) in [
        ("alice", "nope"),
        ("nobody", "pw1"),
        ("@alice:other.example", "pw1"),
    ] {
        let (status, body) = api.login(user, password).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{user}"
        );
    }
    let (status, body) = api.login(&alice, "pw1").await;
    assert_eq!(status, 200, "{body}");
    let second_token = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(body["device_id"], device.as_str());

    let (status, body) = api.get("/v3/login", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["flows"][0]["type"], "m.login.password");

    // Tokens: missing, unknown, and one that was logged out.
    let (status, body) = api.get("/v3/account/whoami", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN"))
    );
    let (status, body) = api.get("/v3/account/whoami", Some("hyphae_made_up")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    let (status, _) = api.post("/v3/logout", Some(&second_token), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = api.get("/v3/account/whoami", Some(&second_token)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN"))
    );
    // The query-parameter form still works for the first device.
    let (status, _) = api
        .get(&format!("/v3/account/whoami?access_token={token}"), None)
        .await;
    assert_eq!(status, 200);

    let (status, _) = api.post("/v3/logout/all", Some(&token), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = api.get("/v3/account/whoami", Some(&token)).await;
    assert_eq!(status, 401);
    // The account itself remains.
    assert_eq!(api.login("alice", "pw1").await.0, 200);
}

#[tokio::test]
async fn devices_and_password_changes_need_the_password() {
    let api = Api::start().await;
    let (alice, token, device) = api.register("alice", "old password").await;
    let (_, other) = api.login("alice", "old password").await;
    let other_device = other["device_id"].as_str().unwrap().to_owned();
    let other_token = other["access_token"].as_str().unwrap().to_owned();

    let (status, body) = api.get("/v3/devices", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);

    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v3/devices/{device}"),
            Some(&token),
            Some(json!({"display_name": "Alice's laptop"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = api
        .get(&format!("/v3/devices/{device}"), Some(&token))
        .await;
    assert_eq!(body["display_name"], "Alice's laptop");
    let (status, body) = api.get("/v3/devices/NOSUCHDEVICE", Some(&token)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    // Deleting a device: first the flows, then a wrong password, then the right one.
    let other_path = format!("/v3/devices/{other_device}");
    let delete = |auth: Option<Value>| {
        let body = auth.map_or(json!({}), |auth| json!({"auth": auth}));
        api.call(
            reqwest::Method::DELETE,
            &other_path,
            Some(&token),
            Some(body),
        )
    };
    let (status, body) = delete(None).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"][0]["stages"][0], "m.login.password");
    let (status, body) = delete(Some(password_auth(&alice, "wrong"))).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_FORBIDDEN"))
    );
    // The user may name themself in any case, as at login.
    let (status, _) = delete(Some(password_auth("ALICE", "old password"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        api.get("/v3/account/whoami", Some(&other_token)).await.0,
        401
    );

    // Another user's password does not do.
    let (bob, bob_token, _) = api.register("bob", "bob's password").await;
    let (status, _) = api
        .post(
            "/v3/delete_devices",
            Some(&bob_token),
            json!({"devices": [device], "auth": password_auth(&alice, "old password")}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        api.get("/v3/account/whoami", Some(&token)).await.0,
        200,
        "{bob} deleted it"
    );

    // Password change logs out the other devices but not this one.
    let (_, third) = api.login("alice", "old password").await;
    let third_token = third["access_token"].as_str().unwrap().to_owned();
    let (status, body) = api
        .post(
            "/v3/account/password",
            Some(&token),
            json!({"new_password": "new password",
                     "auth": password_auth("alice", "old password")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.get("/v3/account/whoami", Some(&third_token)).await.0,
        401
    );
    assert_eq!(api.get("/v3/account/whoami", Some(&token)).await.0, 200);
    assert_eq!(api.login("alice", "old password").await.0, 403);
    assert_eq!(api.login("alice", "new password").await.0, 200);
}

#[tokio::test]
async fn registration_tokens_when_the_operator_sets_them() {
    let api = Api::start_with(|c| c.registration_tokens = vec!["let-me-in".into()]).await;
    let register = |auth: Value| {
        api.post(
            "/v3/register",
            None,
            json!({"username": "carol", "password": "pw", "auth": auth}),
        )
    };
    let (status, body) = register(json!({"type": "m.login.dummy"})).await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"][0]["stages"][0], "m.login.registration_token");
    let (status, body) =
        register(json!({"type": "m.login.registration_token", "token": "guess", "session": "s1"}))
            .await;
    assert_eq!(body["session"], "s1", "the client's session is kept");
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_FORBIDDEN"))
    );
    let (status, body) =
        register(json!({"type": "m.login.registration_token", "token": "let-me-in"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());

    let (status, body) = api.post("/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_GUEST_ACCESS_FORBIDDEN"))
    );
}

#[tokio::test]
async fn web_pages_cannot_register_on_a_loopback_node_unless_opened() {
    let from_page = |api: &Api| {
        api.http
            .post(api.url("/v3/register"))
            .header("origin", "https://evil.example")
            .json(&json!({"username": "drive_by", "password": "pw",
                          "auth": {"type": "m.login.dummy"}}))
            .send()
    };
    let api = Api::start().await;
    let response = from_page(&api).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(
        api.login("drive_by", "pw").await.0,
        403,
        "no account was made"
    );

    let open = Api::start_with(|c| c.open_registration = true).await;
    assert_eq!(from_page(&open).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn login_attempts_are_rate_limited() {
    let api = Api::start_with(|c| {
        c.auth_rate_limit = RateLimit {
            burst: 3,
            per_second: 0.01,
        }
    })
    .await;
    for _ in 0..3 {
        assert_eq!(api.login("nobody", "guess").await.0, 403);
    }
    let (status, body) = api.login("nobody", "guess").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED"))
    );
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );
    // Other endpoints are not limited.
    assert_eq!(api.get("/versions", None).await.0, 200);
}

#[tokio::test]
async fn bad_requests_get_spec_errors_and_the_node_keeps_serving() {
    let api = Api::start().await;
    let raw = |body: Vec<u8>| {
        api.http
            .post(api.url("/v3/login"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let response = raw(b"{not json".to_vec()).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");

    let response = raw(br#"{"type": 42}"#.to_vec()).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_BAD_JSON");

    let huge = format!(
        r#"{{"type":"m.login.password","password":"{}"}}"#,
        "x".repeat(4 << 20)
    );
    let response = raw(huge.into_bytes()).await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errcode"], "M_TOO_LARGE");

    let (status, body) = api
        .post(
            "/v3/register",
            None,
            json!({"username": "dave", "password": "p".repeat(5000),
                     "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );

    assert_eq!(api.get("/versions", None).await.0, 200);
    api.register("dave", "fine").await;
}

#[tokio::test]
async fn browsers_get_cors_headers() {
    let api = Api::start().await;
    let preflight = api
        .http
        .request(reqwest::Method::OPTIONS, api.url("/v3/login"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Authorization")
    );
    let response = api.http.get(api.url("/versions")).send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn the_embedding_app_logs_in_with_a_single_use_token() {
    let api = Api::start().await;
    let (alice, _, _) = api.register("alice", "pw").await;
    let token = api.node.login_token("alice").await.unwrap();
    let login = |token: &str| {
        api.post(
            "/v3/login",
            None,
            json!({"type": "m.login.token", "token": token}),
        )
    };
    let (status, body) = login(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.as_str());
    let (status, body) = login(&token).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "single use"
    );
    assert_eq!(login("made-up").await.0, 403);
    assert!(api.node.login_token("nobody").await.is_err());
    // No client can obtain a token, so none is offered to clients.
    let (_, flows) = api.get("/v3/login", None).await;
    assert_eq!(flows["flows"], json!([{"type": "m.login.password"}]));
}

#[tokio::test]
async fn display_names_show_in_profiles_and_memberships() {
    let api = Api::start().await;
    let (alice, token, _) = api.register("alice", "pw").await;
    let path = format!("/v3/profile/{alice}/displayname");
    assert_eq!(
        api.put(&path, Some(&token), json!({"displayname": "Alice A."}))
            .await
            .0,
        200
    );
    let (status, profile) = api.get(&format!("/v3/profile/{alice}"), None).await;
    assert_eq!((status, &profile["displayname"]), (200, &json!("Alice A.")));
    let (_, bob_token, _) = api.register("bob", "pw").await;
    assert_eq!(
        api.put(&path, Some(&bob_token), json!({"displayname": "x"}))
            .await
            .0,
        403
    );
    let (status, body) = api.get("/v3/profile/@nobody:example.org", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_NOT_FOUND"))
    );

    let (_, room) = api.post("/v3/createRoom", Some(&token), json!({})).await;
    let room = room["room_id"].as_str().unwrap();
    let (_, members) = api
        .get(&format!("/v3/rooms/{room}/joined_members"), Some(&token))
        .await;
    assert_eq!(members["joined"][&alice]["display_name"], "Alice A.");
    // A new name reaches the rooms she is in.
    api.put(&path, Some(&token), json!({"displayname": "Alice B."}))
        .await;
    let (_, members) = api
        .get(&format!("/v3/rooms/{room}/joined_members"), Some(&token))
        .await;
    assert_eq!(members["joined"][&alice]["display_name"], "Alice B.");
}

#[tokio::test]
async fn clients_on_the_r0_prefix_get_the_v3_endpoints() {
    let api = Api::start().await;
    let (alice, _, _) = api.register("alice", "pw").await;
    let (status, flows) = api.get("/r0/login", None).await;
    assert_eq!(status, 200, "{flows}");
    assert_eq!(flows["flows"][0]["type"], "m.login.password");
    let (status, login) = api
        .post("/r0/login", None, password_auth("alice", "pw"))
        .await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let (status, me) = api.get("/r0/account/whoami", Some(token)).await;
    assert_eq!((status, &me["user_id"]), (200, &json!(alice)));
    // Path parameters and query strings come through.
    let (status, _) = api
        .put(
            &format!("/r0/profile/{alice}/displayname"),
            Some(token),
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, profile) = api.get(&format!("/v3/profile/{alice}"), None).await;
    assert_eq!(profile["displayname"], "Alice");
    let (status, synced) = api.get("/r0/sync?timeout=0", Some(token)).await;
    assert_eq!(status, 200, "{synced}");
    assert!(synced["next_batch"].is_string());

    // Still Matrix errors, and CORS for browsers.
    let (status, body) = api.get("/r0/account/whoami", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_MISSING_TOKEN"))
    );
    let (status, body) = api.get("/r0/no/such/endpoint", None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED"))
    );
    let (status, body) = api
        .call(reqwest::Method::DELETE, "/r0/login", None, None)
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (405, Some("M_UNRECOGNIZED"))
    );
    let response = api.http.get(api.url("/r0/login")).send().await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}
