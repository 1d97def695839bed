//! What Element's settings and start-up ask of a node over real HTTP: room tags, the quiet
//! answers for what the node does not offer, capabilities, login flows, and the device owner's
//! password.

use serde_json::json;

use super::room_tests::sync;
use super::test_support::{Api, app, errcode, person};

#[tokio::test]
async fn favourite_then_low_priority_then_untagged() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let bob = person(&api, "bob").await;
    let room = api.create_room(&alice.token, json!({})).await;
    let first = sync(&api, &alice, None, 0).await;
    let tags = format!("/v3/user/{}/rooms/{room}/tags", alice.user_id);
    assert_eq!(
        api.get(&tags, Some(&alice.token)).await,
        (200, json!({"tags": {}}))
    );

    let favourite = format!("{tags}/m.favourite");
    let response = api
        .put(&favourite, Some(&alice.token), json!({"order": 0.25}))
        .await;
    assert_eq!(response.0, 200, "{}", response.1);
    assert_eq!(
        api.get(&tags, Some(&alice.token)).await.1,
        json!({"tags": {"m.favourite": {"order": 0.25}}})
    );
    let tagged = sync(&api, &alice, first["next_batch"].as_str(), 5000).await;
    let account_data = &tagged["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(
        account_data,
        &json!([{"type": "m.tag", "content": {"tags": {"m.favourite": {"order": 0.25}}}}])
    );

    // Element moves a room to low priority by deleting one tag and adding the other.
    let (client, token) = (&api, alice.token.as_str());
    let del = |path: String| async move { client.delete(&path, Some(token)).await };
    assert_eq!(del(favourite.clone()).await.0, 200);
    let low = format!("{tags}/m.lowpriority");
    assert_eq!(api.put(&low, Some(&alice.token), json!({})).await.0, 200);
    assert_eq!(
        api.get(&tags, Some(&alice.token)).await.1,
        json!({"tags": {"m.lowpriority": {}}})
    );
    assert_eq!(del(low).await.0, 200);
    assert_eq!(del(favourite).await.0, 200, "a tag that is not there");
    let untagged = sync(&api, &alice, tagged["next_batch"].as_str(), 5000).await;
    assert_eq!(
        untagged["rooms"]["join"][&room]["account_data"]["events"][0]["content"],
        json!({"tags": {}})
    );

    // Someone else's tags, a room never joined, a tag name too long: refused, nothing stored.
    let bobs = format!("/v3/user/{}/rooms/{room}/tags", bob.user_id);
    assert_eq!(
        errcode(&api.get(&tags, Some(&bob.token)).await),
        (403, Some("M_FORBIDDEN"))
    );
    assert_eq!(
        errcode(
            &api.put(&format!("{tags}/u.x"), Some(&bob.token), json!({}))
                .await
        ),
        (403, Some("M_FORBIDDEN"))
    );
    assert_eq!(
        errcode(&api.get(&bobs, Some(&bob.token)).await),
        (403, Some("M_FORBIDDEN"))
    );
    let long = format!("{tags}/{}", "t".repeat(256));
    assert_eq!(
        errcode(&api.put(&long, Some(&alice.token), json!({})).await),
        (400, Some("M_INVALID_PARAM"))
    );
    assert_eq!(
        api.get(&tags, Some(&alice.token)).await.1,
        json!({"tags": {}})
    );

    // A room left keeps its tags readable.
    api.post(
        &format!("/v3/rooms/{room}/leave"),
        Some(&alice.token),
        json!({}),
    )
    .await;
    assert_eq!(api.get(&tags, Some(&alice.token)).await.0, 200);
}

#[tokio::test]
async fn what_the_node_does_not_offer_is_answered_quietly() {
    let api = Api::start().await;
    let alice = person(&api, "alice").await;
    let token = Some(alice.token.as_str());
    assert_eq!(
        api.get("/v3/voip/turnServer", token).await,
        (200, json!({}))
    );
    assert_eq!(
        api.get("/v3/thirdparty/protocols", token).await,
        (200, json!({}))
    );
    assert_eq!(
        api.get("/v3/account/3pid", token).await,
        (200, json!({"threepids": []}))
    );
    assert_eq!(
        api.get("/v3/voip/turnServer", None).await.0,
        401,
        "for users only"
    );

    let (status, caps) = api.get("/v3/capabilities", token).await;
    assert_eq!(status, 200);
    let caps = &caps["capabilities"];
    assert_eq!(caps["m.3pid_changes"], json!({"enabled": false}));
    // Left out at the spec's default, which is enabled.
    for enabled in ["m.change_password", "m.set_displayname", "m.set_avatar_url"] {
        assert_ne!(caps[enabled]["enabled"], false, "{enabled}: {caps}");
    }
    let (_, flows) = api.get("/v3/login", None).await;
    assert_eq!(flows["flows"], json!([{"type": "m.login.password"}]));
}

#[tokio::test]
async fn the_owner_logs_in_with_a_password_only_once_one_is_set() {
    let api = Api::start_with(|config| config.owner = Some("owner".into())).await;
    let owner = app(&api);
    let group = owner.create_group("Plans", &[]).await.unwrap();
    let password = "correct horse battery";
    let login = || api.login("owner", password);
    assert_eq!(
        errcode(&login().await),
        (403, Some("M_FORBIDDEN")),
        "no password yet"
    );
    assert_eq!(
        errcode(&api.login("owner", "").await),
        (403, Some("M_FORBIDDEN"))
    );
    assert!(!owner.has_password().await.unwrap());
    // Signed in another way (the embedding app's token), the owner cannot change a password
    // they do not have.
    let token = api.node.login_token("owner").await.unwrap();
    let (_, session) = api
        .post(
            "/v3/login",
            None,
            json!({"type": "m.login.token", "token": token}),
        )
        .await;
    let (_, caps) = api
        .get("/v3/capabilities", session["access_token"].as_str())
        .await;
    assert_eq!(
        caps["capabilities"]["m.change_password"],
        json!({"enabled": false})
    );

    for bad in ["short", &"x".repeat(2000)] {
        assert!(
            owner.set_password(bad).await.is_err(),
            "{} characters",
            bad.len()
        );
    }
    assert!(
        !owner.has_password().await.unwrap(),
        "a refused password is not kept"
    );
    owner.set_password(password).await.unwrap();
    assert!(owner.has_password().await.unwrap());

    let (status, session) = login().await;
    assert_eq!(status, 200, "{session}");
    let token = session["access_token"].as_str().unwrap();
    let (_, joined) = api.get("/v3/joined_rooms", Some(token)).await;
    assert_eq!(joined["joined_rooms"], json!([group]));
    let (_, caps) = api.get("/v3/capabilities", Some(token)).await;
    assert_ne!(caps["capabilities"]["m.change_password"]["enabled"], false);
    assert_eq!(
        errcode(&api.login("owner", "wrong horse").await),
        (403, Some("M_FORBIDDEN"))
    );

    // The app's own session goes on.
    owner.send_text(&group, "still here").await.unwrap();
    let rooms = owner.rooms().await.unwrap();
    assert_eq!(rooms.len(), 1);
}
