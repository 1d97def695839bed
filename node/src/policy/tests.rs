//! Policy lists across real nodes over loopback libp2p: Bob publishes a list, Alice subscribes
//! to it (for herself, or her node for everyone on it), and what Mallory sends stops reaching
//! Alice's view, or her node, and comes back when she unsubscribes.

use std::time::{Duration, Instant};

use ruma::{OwnedRoomId, RoomId};
use serde_json::json;

use super::{Level, PolicyKind};
use crate::app::{ApiError, AppClient, AppError, TimelineItem};
use crate::client_api::test_support::{Api, app, owned, person};
use crate::federation::hostile_tests::{
    draft, event_id, key_of, room_version, send_pdus, sign, to_value,
};
use crate::federation::room_tests::{eventually, log_to_test_output};

const WITHIN: Duration = Duration::from_secs(20);

fn server_of(api: &Api) -> ruma::OwnedServerName {
    api.node.server_name().try_into().unwrap()
}

/// Alice, Bob and Mallory, each the owner of their own node, all connected.
async fn three_owners() -> (Api, Api, Api) {
    log_to_test_output();
    let (a, b, m) = (
        owned("alice").await,
        owned("bob").await,
        owned("mallory").await,
    );
    a.connect(&b).await;
    b.connect(&m).await;
    a.connect(&m).await;
    (a, b, m)
}

/// Bob's group "Hall" with Alice and Mallory joined, as each of their nodes sees it.
async fn hall(a: &Api, b: &Api, m: &Api) -> OwnedRoomId {
    let (alice, bob, mallory) = (app(a), app(b), app(m));
    let room = bob
        .create_group(
            "Hall",
            &[alice.user_id().to_owned(), mallory.user_id().to_owned()],
        )
        .await
        .unwrap();
    for guest in [alice, mallory] {
        accept_invite(guest, &room).await;
    }
    for (who, api) in [("Alice", a), ("Bob", b), ("Mallory", m)] {
        eventually(
            WITHIN,
            &format!("everyone joined, on {who}'s node"),
            || async {
                let members = app(api).members(&room).await.unwrap_or_default();
                members.iter().filter(|m| m.membership == "join").count() == 3
            },
        )
        .await;
    }
    room
}

/// Whether `api`'s node holds the event (in the timeline or refused).
async fn holds(api: &Api, event_id: &str) -> bool {
    api.node
        .store()
        .pdu(event_id.to_owned())
        .await
        .unwrap()
        .is_some()
}

async fn rejection(api: &Api, event_id: &str) -> Option<String> {
    api.node
        .store()
        .pdu(event_id.to_owned())
        .await
        .unwrap()
        .and_then(|p| p.rejection_reason)
}

fn from<'a>(items: &'a [TimelineItem], who: &AppClient) -> Vec<&'a TimelineItem> {
    items
        .iter()
        .filter(|i| i.sender == who.user_id().as_str())
        .collect()
}

/// Whether `who`'s timeline of `room` shows the event `event_id`.
async fn shows(who: &AppClient, room: &RoomId, event_id: &ruma::EventId) -> bool {
    let timeline = who.timeline(room, 100).await.unwrap();
    timeline.iter().any(|i| i.event_id == event_id)
}

/// Whether `who` has an invite to `room` in view.
async fn invited(who: &AppClient, room: &RoomId) -> bool {
    who.invites()
        .await
        .unwrap()
        .iter()
        .any(|i| i.room_id == room)
}

/// Waits for `who`'s invite to `room`, then joins.
async fn accept_invite(who: &AppClient, room: &RoomId) {
    eventually(WITHIN, "the invite", || invited(who, room)).await;
    who.join(room).await.unwrap();
}

#[tokio::test]
async fn a_users_list_hides_mallory_until_she_unsubscribes_and_blurs_at_blur_level() {
    let (a, b, m) = three_owners().await;
    let (alice, bob, mallory) = (app(&a), app(&b), app(&m));
    let room = hall(&a, &b, &m).await;

    // Bob publishes a list under an alias; Alice subscribes to it by the alias, from her node.
    let list = bob
        .create_policy_list("Bob's bans", Some("bans"))
        .await
        .unwrap();
    bob.add_policy_rule(&list, PolicyKind::User, mallory.user_id().as_str(), "spam")
        .await
        .unwrap();
    let alias = format!("#bans:{}", b.node.server_name());
    assert_eq!(
        alice
            .subscribe_policy_list(&alias, &[], Level::Hide)
            .await
            .unwrap(),
        list
    );
    assert_eq!(alice.policy_subscriptions().await.unwrap().len(), 1);
    let rules = alice.policy_rules(&list).await.unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].entity, mallory.user_id().as_str());

    // Mallory talks in the hall and invites Alice to a DM: both reach Alice's node, and
    // neither shows in her app.
    let spam = mallory.send_text(&room, "buy my stuff").await.unwrap();
    let hello = bob.send_text(&room, "hello all").await.unwrap();
    let dm = mallory.create_dm(alice.user_id()).await.unwrap();
    eventually(
        WITHIN,
        "Mallory's message and invite on Alice's node",
        || async {
            holds(&a, spam.as_str()).await
                && a.node
                    .store()
                    .membership(dm.to_string(), alice.user_id().to_string())
                    .await
                    .unwrap()
                    .is_some_and(|m| m.membership == "invite")
        },
    )
    .await;
    eventually(WITHIN, "Bob's message for Alice", || {
        shows(alice, &room, &hello)
    })
    .await;
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(
        from(&timeline, mallory).is_empty(),
        "Mallory hidden: {timeline:?}"
    );
    assert!(!invited(alice, &dm).await, "Mallory's invite hidden");
    let verdict = alice.policy_verdict(mallory.user_id()).unwrap();
    assert_eq!(
        (verdict.level, verdict.list.clone(), verdict.reason.as_str()),
        (Level::Hide, list.clone(), "spam")
    );
    // The rest of the room is untouched.
    assert!(alice.policy_verdict(bob.user_id()).is_none());

    // Unsubscribed: everything comes back, nothing was deleted.
    assert!(alice.unsubscribe_policy_list(&list).await.unwrap());
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(
        timeline
            .iter()
            .any(|i| i.event_id == spam && i.policy.is_none()),
        "Mallory's message is back: {timeline:?}"
    );
    assert!(invited(alice, &dm).await);

    // At level blur, the message and invite are there, carrying why.
    alice
        .subscribe_policy_list(list.as_str(), &[], Level::Blur)
        .await
        .unwrap();
    let timeline = alice.timeline(&room, 100).await.unwrap();
    let item = timeline.iter().find(|i| i.event_id == spam).unwrap();
    let verdict = item.policy.as_ref().expect("blurred");
    assert_eq!(verdict.level, Level::Blur);
    assert_eq!(verdict.entity, mallory.user_id().as_str());
    assert_eq!(verdict.reason, "spam");
    assert!(
        timeline
            .iter()
            .filter(|i| i.sender != mallory.user_id().as_str())
            .all(|i| i.policy.is_none())
    );
    let invite = alice
        .invites()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.room_id == dm)
        .unwrap();
    assert_eq!(invite.policy.map(|v| v.level), Some(Level::Blur));

    // A rule added while Mallory talks: Bob bans her whole server from his list, and it
    // applies to what she says next (Alice at level warn: flagged, with the new rule).
    alice
        .subscribe_policy_list(list.as_str(), &[], Level::Warn)
        .await
        .unwrap();
    assert!(
        bob.remove_policy_rule(&list, PolicyKind::User, mallory.user_id().as_str())
            .await
            .unwrap()
    );
    eventually(WITHIN, "the removal at Alice's node", || async {
        alice.policy_verdict(mallory.user_id()).is_none()
    })
    .await;
    let chatter = mallory.send_text(&room, "still here").await.unwrap();
    eventually(WITHIN, "Mallory's chatter for Alice", || async {
        let timeline = alice.timeline(&room, 100).await.unwrap();
        timeline
            .iter()
            .any(|i| i.event_id == chatter && i.policy.is_none())
    })
    .await;
    bob.add_policy_rule(
        &list,
        PolicyKind::Server,
        m.node.server_name(),
        "spam server",
    )
    .await
    .unwrap();
    eventually(WITHIN, "the new rule at Alice's node", || async {
        alice.policy_verdict(mallory.user_id()).is_some()
    })
    .await;
    let next = mallory.send_text(&room, "and more").await.unwrap();
    eventually(WITHIN, "Mallory's next message, flagged", || async {
        alice
            .timeline(&room, 100)
            .await
            .unwrap()
            .iter()
            .find(|i| i.event_id == next)
            .and_then(|i| i.policy.clone())
            .is_some_and(|v| {
                v.level == Level::Warn
                    && v.kind == PolicyKind::Server
                    && v.entity == m.node.server_name()
                    && v.reason == "spam server"
            })
    })
    .await;
}

#[tokio::test]
async fn a_node_ban_refuses_mallorys_server_at_the_edge_also_when_relayed_and_live() {
    let (a, b, m) = three_owners().await;
    let (alice, bob, mallory) = (app(&a), app(&b), app(&m));
    let room = hall(&a, &b, &m).await;
    let list = bob.create_policy_list("Event bans", None).await.unwrap();

    // Alice's node (the organiser's, say) subscribes while the list bans nobody yet.
    let alias_or_id = list.to_string();
    assert_eq!(
        a.node
            .subscribe_policy_list_node(&alias_or_id, &[server_of(&b)])
            .await
            .unwrap(),
        list
    );
    assert_eq!(
        a.node.node_policy_subscriptions(),
        std::slice::from_ref(&list)
    );
    let before = mallory.send_text(&room, "before the rule").await.unwrap();
    eventually(WITHIN, "Mallory's message before the rule", || {
        shows(alice, &room, &before)
    })
    .await;

    // Bob bans Mallory's server while she talks; her next message is refused at Alice's node.
    bob.add_policy_rule(
        &list,
        PolicyKind::Server,
        m.node.server_name(),
        "spam server",
    )
    .await
    .unwrap();
    eventually(WITHIN, "the rule at Alice's node", || async {
        a.node.node_policy_verdict(mallory.user_id()).is_some()
    })
    .await;
    assert_eq!(a.node.node_policy_rules(&list).await.unwrap().len(), 1);
    let after = mallory.send_text(&room, "after the rule").await.unwrap();
    let hello = bob
        .send_text(&room, "Bob still gets through")
        .await
        .unwrap();
    eventually(
        WITHIN,
        "Mallory's refused message kept at Alice's node",
        || async { rejection(&a, after.as_str()).await.is_some() },
    )
    .await;
    let reason = rejection(&a, after.as_str()).await.unwrap();
    assert!(
        reason.starts_with(&format!(
            "refused by policy list {list}: server rule {}",
            m.node.server_name()
        )),
        "{reason}"
    );
    assert!(reason.ends_with("(spam server)"), "{reason}");
    eventually(WITHIN, "Bob's message at Alice's", || {
        shows(alice, &room, &hello)
    })
    .await;
    // Bob's node, which did not subscribe, shows it; Alice's never does.
    eventually(WITHIN, "Mallory's message at Bob's", || {
        shows(bob, &room, &after)
    })
    .await;
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(
        !timeline.iter().any(|i| i.event_id == after),
        "{timeline:?}"
    );
    assert!(
        timeline.iter().any(|i| i.event_id == before),
        "the past stays"
    );

    // Relayed by Bob's server in a transaction of its own: refused all the same, kept as
    // refused, and not passed on by Alice's node.
    let version = room_version(&a, room.as_str()).await;
    let mut pdu = draft(
        &a,
        room.as_str(),
        mallory.user_id().as_str(),
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "relayed by Bob's server"}),
    )
    .await;
    sign(&key_of(&m), &version, &mut pdu);
    let relayed = event_id(&version, &pdu);
    let (status, answer) = send_pdus(&b, &a, vec![to_value(&pdu)]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["pdus"][&relayed]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("refused by policy list")),
        "{answer}"
    );
    assert!(rejection(&a, &relayed).await.is_some());
    let pending = a
        .node
        .store()
        .outbox_pending(vec![relayed.clone(), after.to_string()])
        .await
        .unwrap();
    assert!(pending.values().all(|n| *n == 0), "passed on: {pending:?}");
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(!timeline.iter().any(|i| i.event_id.as_str() == relayed));

    // Mallory's server itself is not heard: even an event it relays for Bob is turned away
    // (unstored, so Bob's own server still delivers it).
    let bobs = draft(
        &a,
        room.as_str(),
        bob.user_id().as_str(),
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "relayed by Mallory's server"}),
    )
    .await;
    let mut bobs = bobs;
    sign(&key_of(&b), &version, &mut bobs);
    let bobs_id = event_id(&version, &bobs);
    let (status, answer) = send_pdus(&m, &a, vec![to_value(&bobs)]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["pdus"][&bobs_id]["error"].is_string(), "{answer}");
    assert!(!holds(&a, &bobs_id).await);

    // And the node keeps taking Bob's messages.
    let later = bob.send_text(&room, "later").await.unwrap();
    eventually(WITHIN, "Bob's later message at Alice's", || {
        shows(alice, &room, &later)
    })
    .await;

    // Unsubscribed: Mallory's new messages are taken again (what was refused stays refused).
    assert!(a.node.unsubscribe_policy_list_node(&list).await.unwrap());
    assert!(a.node.node_policy_verdict(mallory.user_id()).is_none());
    let again = mallory.send_text(&room, "again").await.unwrap();
    eventually(WITHIN, "Mallory heard again at Alice's", || {
        shows(alice, &room, &again)
    })
    .await;
}

#[tokio::test]
async fn joining_a_room_a_users_list_bans_is_forbidden() {
    log_to_test_output();
    let (a, b) = (owned("alice").await, owned("bob").await);
    a.connect(&b).await;
    let (alice, bob) = (app(&a), app(&b));
    let list = bob
        .create_policy_list("Rooms to avoid", None)
        .await
        .unwrap();
    let room = bob
        .create_group("Casino", &[alice.user_id().to_owned()])
        .await
        .unwrap();
    bob.add_policy_rule(&list, PolicyKind::Room, room.as_str(), "scam")
        .await
        .unwrap();
    // Shared by invite: Alice subscribes by the room id alone.
    bob.invite(&list, alice.user_id()).await.unwrap();
    eventually(WITHIN, "the list's invite", || invited(alice, &list)).await;
    alice
        .subscribe_policy_list(list.as_str(), &[], Level::Warn)
        .await
        .unwrap();
    eventually(WITHIN, "the invite, flagged", || async {
        alice
            .invites()
            .await
            .unwrap()
            .iter()
            .any(|i| i.room_id == room && i.policy.as_ref().is_some_and(|v| v.reason == "scam"))
    })
    .await;
    match alice.join(&room).await {
        Err(AppError::Api(ApiError::Matrix {
            status,
            errcode,
            error,
        })) => {
            assert_eq!((status, errcode.as_str()), (403, "M_FORBIDDEN"));
            assert!(error.contains("scam"), "{error}");
        }
        other => panic!("joined a banned room: {other:?}"),
    }
    alice.unsubscribe_policy_list(&list).await.unwrap();
    alice.join(&room).await.unwrap();
}

#[tokio::test]
async fn malformed_and_absurd_rules_are_skipped_and_the_rest_of_the_list_works() {
    log_to_test_output();
    let a = owned("alice").await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let alice = app(&a);
    // Bob writes his list's state by hand, with a standard client.
    let bob = person(&b, "bob").await;
    let list = b
        .create_room(
            &bob.token,
            json!({"preset": "public_chat", "name": "Messy"}),
        )
        .await;
    let list_id = RoomId::parse(&list).unwrap();
    let wild = format!("@{}:x", "a*".repeat(2000));
    let huge = format!("@{}:x", "m".repeat(10_000));
    let rules = [
        (
            "m.policy.rule.user",
            "no-entity",
            json!({"recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.user",
            "number",
            json!({"entity": 5, "recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.user",
            "mute",
            json!({"entity": "@quiet:x", "recommendation": "m.mute"}),
        ),
        (
            "m.policy.rule.user",
            "star",
            json!({"entity": "*", "recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.server",
            "star-dot",
            json!({"entity": "*.*", "recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.user",
            "wild",
            json!({"entity": wild, "recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.user",
            "huge",
            json!({"entity": huge, "recommendation": "m.ban"}),
        ),
        (
            "m.policy.rule.user",
            "good",
            json!({"entity": "@mallory:*", "recommendation": "m.ban", "reason": "spam"}),
        ),
        (
            "org.matrix.mjolnir.rule.server",
            "legacy",
            json!({"entity": "evil.example", "recommendation": "org.matrix.mjolnir.ban"}),
        ),
    ];
    for (kind, key, content) in rules {
        let (status, body) = b
            .put(
                &format!("/v3/rooms/{list}/state/{kind}/{key}"),
                Some(&bob.token),
                content,
            )
            .await;
        assert_eq!(status, 200, "{kind} {key}: {body}");
    }
    alice
        .subscribe_policy_list(&list, &[server_of(&b)], Level::Hide)
        .await
        .unwrap();
    let mallory = ruma::UserId::parse("@mallory:anywhere.example").unwrap();
    let eve = ruma::UserId::parse("@eve:evil.example").unwrap();
    let carol = ruma::UserId::parse("@carol:good.example").unwrap();
    assert_eq!(
        alice.policy_verdict(&mallory).map(|v| v.reason),
        Some("spam".into())
    );
    assert!(
        alice.policy_verdict(&eve).is_some(),
        "legacy rule types count"
    );
    assert!(alice.policy_verdict(&carol).is_none(), "`*` bans nobody");
    let quiet = ruma::UserId::parse("@quiet:x").unwrap();
    assert!(alice.policy_verdict(&quiet).is_none(), "not a ban");
    let (refused, total) = a.node.policy_list_refusals(&list_id).unwrap();
    assert_eq!(total, 7, "{refused:?}");
    // Only valid, listable rules are listed.
    let listed = alice.policy_rules(&list_id).await.unwrap();
    assert_eq!(
        listed.len(),
        6,
        "absurd ones too, so they can be removed: {listed:?}"
    );

    // The owner's API refuses what subscribers would refuse.
    let (alices_list, rule) = (
        alice.create_policy_list("Mine", None).await.unwrap(),
        "*".to_owned(),
    );
    assert!(matches!(
        alice
            .add_policy_rule(&alices_list, PolicyKind::User, &rule, "")
            .await,
        Err(AppError::BadInput(_))
    ));

    // And checks stay fast whatever was thrown at the list.
    let start = Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(alice.policy_verdict(&carol));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

/// Alice's node subscribes to Bob's new list, which bans Mallory; returns the list.
async fn node_bans_mallory(a: &Api, b: &Api, m: &Api) -> OwnedRoomId {
    let (bob, mallory) = (app(b), app(m));
    let list = bob.create_policy_list("Event bans", None).await.unwrap();
    a.node
        .subscribe_policy_list_node(list.as_str(), &[server_of(b)])
        .await
        .unwrap();
    bob.add_policy_rule(&list, PolicyKind::User, mallory.user_id().as_str(), "spam")
        .await
        .unwrap();
    eventually(WITHIN, "the rule at Alice's node", || async {
        a.node.node_policy_verdict(mallory.user_id()).is_some()
    })
    .await;
    list
}

#[tokio::test]
async fn a_banned_users_invite_still_lets_carol_in_and_a_users_list_does_not_lift_node_bans() {
    let (a, b, m) = three_owners().await;
    let c = owned("carol").await;
    for other in [&a, &b, &m] {
        c.connect(other).await;
    }
    let (alice, bob, mallory, carol) = (app(&a), app(&b), app(&m), app(&c));
    let room = hall(&a, &b, &m).await;
    node_bans_mallory(&a, &b, &m).await;

    // Alice names the hall itself as one of her lists (anyone may write any room id into
    // their account data): the node's ban on Mallory still holds there.
    alice
        .subscribe_policy_list(room.as_str(), &[], Level::Warn)
        .await
        .unwrap();
    let spam = mallory.send_text(&room, "buy my stuff").await.unwrap();
    eventually(
        WITHIN,
        "Mallory's message refused at Alice's node",
        || async {
            rejection(&a, spam.as_str())
                .await
                .is_some_and(|r| r.starts_with("refused by policy list"))
        },
    )
    .await;

    // Mallory invites Carol, who joins and talks. Every other server takes the invite as the
    // room's state and Carol's join on its strength: so does Alice's node.
    mallory.invite(&room, carol.user_id()).await.unwrap();
    let invite = m
        .node
        .store()
        .membership(room.to_string(), carol.user_id().to_string())
        .await
        .unwrap()
        .expect("the invite at Mallory's node")
        .event_id;
    accept_invite(carol, &room).await;
    let hello = carol.send_text(&room, "hi, I'm Carol").await.unwrap();
    eventually(WITHIN, "Carol's message in Alice's timeline", || {
        shows(alice, &room, &hello)
    })
    .await;
    let members = alice.members(&room).await.unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.user_id == carol.user_id().as_str() && m.membership == "join"),
        "{members:?}"
    );
    let join = a
        .node
        .store()
        .membership(room.to_string(), carol.user_id().to_string())
        .await
        .unwrap()
        .unwrap()
        .event_id;
    assert_eq!(rejection(&a, &join).await, None);
    assert_eq!(rejection(&a, &invite).await, None, "the invite is state");

    // Mallory's invite is not something Alice is shown, nor does her node pass it on.
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(from(&timeline, mallory).is_empty(), "{timeline:?}");
    assert!(
        timeline
            .iter()
            .any(|i| i.sender == carol.user_id().as_str()),
        "Carol's join and message are shown: {timeline:?}"
    );
    let pending = a
        .node
        .store()
        .outbox_pending(vec![invite.clone()])
        .await
        .unwrap();
    assert!(pending.values().all(|n| *n == 0), "passed on: {pending:?}");
    // Bob, who bans nobody, sees all of it.
    eventually(WITHIN, "Carol's message at Bob's", || {
        shows(bob, &room, &hello)
    })
    .await;
}

#[tokio::test]
async fn a_banned_users_event_built_on_another_room_is_refused_and_not_kept() {
    let (a, b, m) = three_owners().await;
    let mallory = app(&m);
    let room = hall(&a, &b, &m).await;
    let list = node_bans_mallory(&a, &b, &m).await;

    // An event of Mallory's in the hall whose prev event is in the list's room (a room Alice's
    // node is in), relayed by Bob's server: refused as malformed before any policy verdict,
    // so nothing of it (nor the other room's state "before" it) is kept.
    let version = room_version(&a, room.as_str()).await;
    let elsewhere = a
        .node
        .store()
        .forward_extremities(list.to_string())
        .await
        .unwrap();
    assert!(!elsewhere.is_empty());
    let mut pdu = draft(
        &a,
        room.as_str(),
        mallory.user_id().as_str(),
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "built on another room"}),
    )
    .await;
    pdu.insert(
        "prev_events".into(),
        ruma::CanonicalJsonValue::Array(
            elsewhere
                .iter()
                .map(|id| ruma::CanonicalJsonValue::String(id.clone()))
                .collect(),
        ),
    );
    sign(&key_of(&m), &version, &mut pdu);
    let id = event_id(&version, &pdu);
    let (status, answer) = send_pdus(&b, &a, vec![to_value(&pdu)]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["pdus"][&id]["error"]
            .as_str()
            .is_some_and(|e| e.contains("is in another room")),
        "{answer}"
    );
    assert!(!holds(&a, &id).await);
}

#[tokio::test]
async fn history_a_node_ban_refuses_is_kept_as_refused_so_backfill_moves_past_it() {
    let (a, b, m) = three_owners().await;
    let (alice, bob, mallory) = (app(&a), app(&b), app(&m));
    // A room Alice joins late: Bob speaks, then Mallory floods it.
    let room = bob
        .create_group("Old hall", &[mallory.user_id().to_owned()])
        .await
        .unwrap();
    accept_invite(mallory, &room).await;
    eventually(WITHIN, "Mallory in the old hall at Bob's", || async {
        bob.members(&room)
            .await
            .unwrap_or_default()
            .iter()
            .any(|m| m.user_id == mallory.user_id().as_str() && m.membership == "join")
    })
    .await;
    let old = bob.send_text(&room, "welcome").await.unwrap();
    let mut flood = Vec::new();
    for n in 0..25 {
        flood.push(
            mallory
                .send_text(&room, &format!("spam {n}"))
                .await
                .unwrap(),
        );
    }
    let last = flood.last().unwrap().clone();
    eventually(WITHIN, "the flood at Bob's", || async {
        holds(&b, last.as_str()).await
    })
    .await;

    node_bans_mallory(&a, &b, &m).await;
    bob.invite(&room, alice.user_id()).await.unwrap();
    accept_invite(alice, &room).await;

    // Paging back fetches the history: Bob's welcome is shown, the flood is kept as refused,
    // and it is not asked for again.
    eventually(WITHIN, "Bob's welcome in Alice's history", || {
        shows(alice, &room, &old)
    })
    .await;
    let timeline = alice.timeline(&room, 100).await.unwrap();
    assert!(
        !timeline.iter().any(|i| flood.contains(&i.event_id)),
        "{timeline:?}"
    );
    for id in &flood {
        assert!(
            rejection(&a, id.as_str())
                .await
                .is_some_and(|r| r.starts_with("refused by policy list")),
            "{id}"
        );
    }
    let frontier = a
        .node
        .store()
        .backfill_frontier(room.to_string(), 100)
        .await
        .unwrap();
    assert!(
        !frontier.iter().any(|id| flood.iter().any(|f| f == id)),
        "refused history still missing: {frontier:?}"
    );
}

#[tokio::test]
async fn a_users_list_counts_once_they_join_it_and_a_redacted_rule_bans_no_more() {
    log_to_test_output();
    let a = Api::start_federated().await;
    let b = Api::start_federated().await;
    a.connect(&b).await;
    let (dave, bob) = (person(&a, "dave").await, person(&b, "bob").await);
    let public = json!({"preset": "public_chat"});
    let list = b.create_room(&bob.token, public.clone()).await;
    let casinos = [
        b.create_room(&bob.token, public.clone()).await,
        b.create_room(&bob.token, public.clone()).await,
    ];
    let mut rule_ids = Vec::new();
    for (n, (kind, entity)) in [
        ("m.policy.rule.room", casinos[0].as_str()),
        ("m.policy.rule.room", casinos[1].as_str()),
        ("m.policy.rule.user", "@mallory:evil.example"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = b
            .put(
                &format!("/v3/rooms/{list}/state/{kind}/rule{n}"),
                Some(&bob.token),
                json!({"entity": entity, "recommendation": "m.ban", "reason": "scam"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        rule_ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let list_id = RoomId::parse(&list).unwrap();
    let subscribe = || async {
        let (status, body) = a
            .put(
                &format!(
                    "/v3/user/{}/account_data/{}",
                    dave.user_id,
                    super::SUBSCRIPTIONS_DATA
                ),
                Some(&dave.token),
                json!({"lists": [{"room_id": list, "level": "hide"}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    };
    let via = format!("?via={}", b.node.server_name());

    // Dave names Bob's list without being in its room: nothing of it is read for him, and
    // his join of a room it bans is not refused (nor does the refusal tell him its rules).
    subscribe().await;
    assert!(a.node.policy_list_refusals(&list_id).is_none());
    let (status, body) = a
        .post(
            &format!("/v3/join/{}{via}", casinos[0]),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Once he is in the list's room, it counts for him.
    let (status, body) = a
        .post(
            &format!("/v3/join/{list}{via}"),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(WITHIN, "Dave's list in effect", || async {
        a.node.policy_list_refusals(&list_id).is_some()
    })
    .await;
    let (status, body) = a
        .post(
            &format!("/v3/join/{}{via}", casinos[1]),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    assert!(body["error"].as_str().unwrap_or_default().contains("scam"));

    // The node subscribes too; Bob redacts his rule on Mallory, and it bans her no more.
    a.node
        .subscribe_policy_list_node(&list, &[server_of(&b)])
        .await
        .unwrap();
    let mallory = ruma::UserId::parse("@mallory:evil.example").unwrap();
    assert!(a.node.node_policy_verdict(&mallory).is_some());
    let (status, body) = b
        .put(
            &format!("/v3/rooms/{list}/redact/{}/t1", rule_ids[2]),
            Some(&bob.token),
            json!({"reason": "lifted"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        WITHIN,
        "the redacted rule lifted at Alice's node",
        || async { a.node.node_policy_verdict(&mallory).is_none() },
    )
    .await;
    // The rest of the list still applies.
    let (status, _) = a
        .post(
            &format!("/v3/join/{}{via}", casinos[1]),
            Some(&dave.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
}
