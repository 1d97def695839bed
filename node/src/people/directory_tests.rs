//! The user directory across real nodes: this node's users, room-mates of other servers and
//! the owners of connected nodes are found by name; nobody else is, nor a node gone away.

use std::time::Duration;

use serde_json::{Value, json};

use super::profile_tests::set_name;
use crate::client_api::test_support::{Api, Person, app, owned, person};
use crate::federation::room_tests::{eventually, two_nodes_in_a_room};

async fn search(api: &Api, who: &Person, body: Value) -> (u16, Value) {
    api.post("/v3/user_directory/search", Some(&who.token), body)
        .await
}

/// The display names found for `term`, sorted.
async fn names(api: &Api, who: &Person, term: &str) -> Vec<String> {
    let (status, body) = search(api, who, json!({"search_term": term})).await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["display_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn local_users_room_mates_and_people_nearby_are_found_and_nobody_else() {
    let (a, b, alice, bob, _room) = two_nodes_in_a_room().await;
    let zoe = person(&a, "zoe").await;
    set_name(&a, &zoe, "Zed Local").await;
    set_name(&b, &bob, "Zed Remote").await;
    // On a connected node, but in no room with Alice and not its owner.
    let hidden = person(&b, "hidden").await;
    set_name(&b, &hidden, "Zed Hidden").await;
    // Two devices nearby whose owners share no room with Alice.
    let c = owned("carol").await;
    app(&c).set_display_name("Zed Nearby").await.unwrap();
    let d = owned("dora").await;
    app(&d).set_display_name("Zed Gone").await.unwrap();
    a.connect(&c).await;
    a.connect(&d).await;

    let everyone = ["Zed Gone", "Zed Local", "Zed Nearby", "Zed Remote"];
    eventually(Duration::from_secs(20), "everyone to be found", || async {
        names(&a, &alice, "zed").await == everyone
    })
    .await;
    // Case does not matter, and a part of a name or of a user id finds one.
    assert_eq!(names(&a, &alice, "ZED R").await, ["Zed Remote"]);
    assert_eq!(names(&a, &alice, "earb").await, ["Zed Nearby"]);
    assert_eq!(names(&a, &alice, "nearb").await, ["Zed Nearby"]);
    assert_eq!(names(&a, &alice, "caro").await, ["Zed Nearby"]);
    let (_, body) = search(&a, &alice, json!({"search_term": "carol"})).await;
    assert_eq!(
        body["results"][0]["user_id"],
        format!("@carol:{}", c.node.server_name())
    );

    // A node that went away takes its owner with it.
    d.stop().await;
    eventually(Duration::from_secs(20), "Dora to be gone", || async {
        names(&a, &alice, "zed").await == ["Zed Local", "Zed Nearby", "Zed Remote"]
    })
    .await;

    // `limit`, and `limited` when there was more.
    for (limit, found, limited) in [(2, 2, true), (3, 3, false), (0, 1, true)] {
        let (status, body) =
            search(&a, &alice, json!({"search_term": "zed", "limit": limit})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["results"].as_array().unwrap().len(), &body["limited"]),
            (found, &json!(limited)),
            "limit {limit}: {body}"
        );
    }

    // An empty term finds nobody; an absurd one is refused, not searched.
    let (status, body) = search(&a, &alice, json!({"search_term": "  "})).await;
    assert_eq!(
        (status, body),
        (200, json!({"results": [], "limited": false}))
    );
    let (status, body) = search(&a, &alice, json!({"search_term": "z".repeat(1000)})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{body}"
    );
    let (status, _) = a
        .post(
            "/v3/user_directory/search",
            None,
            json!({"search_term": "zed"}),
        )
        .await;
    assert_eq!(status, 401, "the directory is for signed-in users");
}
