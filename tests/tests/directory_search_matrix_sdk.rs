//! Finding rooms and messages with a real client (matrix-sdk), on two nodes over real libp2p
//! connections on loopback: a room published on one node is in the directory a client of the
//! other lists (the peers around), the client joins it from the listing and talks there, and
//! what is said is found with `/search` (ruma's typed request, sent by the SDK as it is).

use hyphae_tests::TestNode;
use matrix_sdk::ruma::api::client::directory::get_public_rooms_filtered;
use matrix_sdk::ruma::api::client::room::Visibility;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::search::search_events::v3::{
    Categories, Criteria, OrderBy, Request as SearchRequest,
};
use matrix_sdk::ruma::directory::Filter;
use serde_json::Value;

mod common;

use common::Person;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_a_room_nearby_joins_it_and_finds_what_was_said() {
    let (a, b) = (TestNode::start().await, TestNode::start().await);
    b.connect(&a).await;
    let mut alice = Person::register(&a, "alice").await;
    let mut bob = Person::register(&b, "bob").await;

    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PublicChat);
    request.visibility = Visibility::Public;
    request.name = Some("Hall".to_owned());
    request.topic = Some("Where the talks are".to_owned());
    let hall = alice
        .client
        .create_room(request)
        .await
        .expect("create room");
    let room_id = hall.room_id().to_owned();

    // Bob types "hal" in the room directory: his server lists the rooms around it.
    let mut filter = Filter::new();
    filter.generic_search_term = Some("hal".to_owned());
    let mut request = get_public_rooms_filtered::v3::Request::new();
    request.filter = filter;
    let listing = bob
        .client
        .public_rooms_filtered(request)
        .await
        .expect("public rooms");
    let entry = listing
        .chunk
        .iter()
        .find(|e| e.room_id == room_id)
        .unwrap_or_else(|| panic!("Hall is listed: {:?}", listing.chunk));
    assert_eq!(entry.name.as_deref(), Some("Hall"));
    assert_eq!(entry.topic.as_deref(), Some("Where the talks are"));
    assert_eq!(u64::from(entry.num_joined_members), 1);

    // He joins from the listing (by room id) and says something.
    bob.client
        .join_room_by_id(&entry.room_id)
        .await
        .expect("join from the listing");
    bob.sync().await;
    bob.send(&room_id, "see you at the fountain").await;
    alice.receive("see you at the fountain").await;
    alice.send(&room_id, "the fountain it is").await;
    bob.receive("the fountain it is").await;

    // Alice's client searches her server for it (both messages are there: she read Bob's).
    let mut criteria = Criteria::new("FOUNTAIN".to_owned());
    criteria.order_by = Some(OrderBy::Recent);
    let mut categories = Categories::new();
    categories.room_events = Some(criteria);
    let response = alice
        .client
        .send(SearchRequest::new(categories))
        .await
        .expect("search");
    let found = response.search_categories.room_events;
    let bodies: Vec<String> = found
        .results
        .iter()
        .filter_map(|r| r.result.as_ref()?.get_field::<Value>("content").ok()?)
        .filter_map(|content| content["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(bodies, ["the fountain it is", "see you at the fountain"]);
    assert!(found.highlights.contains(&"fountain".to_owned()));

    // Nothing found is an answer the client reads too.
    let mut categories = Categories::new();
    categories.room_events = Some(Criteria::new("\"unheard OR".to_owned()));
    let response = alice
        .client
        .send(SearchRequest::new(categories))
        .await
        .expect("a search finding nothing");
    assert!(response.search_categories.room_events.results.is_empty());
}
