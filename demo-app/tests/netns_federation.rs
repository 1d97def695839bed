//! Federation between real `hyphae up` processes, each in a network namespace of its own: two
//! devices on one LAN that find each other by mDNS alone, and a chain A–B–C where only B is on
//! both networks and does not forward IP. Users talk to their own device's Client-Server API from
//! inside its namespace (its addresses exist only there): with raw HTTP for plain rooms, and with
//! matrix-sdk (a standard client, end-to-end encryption on) for encrypted ones.
//! Needs root and `ip` (iproute2); without them each test prints SKIPPED and passes (fails under
//! `CI=true`).

mod lan;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lan::namespaces::{Netns, ip, skip, skip_reason, spawn_in};
use lan::{CLIENT_PORT, Device, Phone, STEP, User, eventually, sorted};

/// Whether a TCP connection from namespace `ns` to `addr` is accepted within 3 s.
fn tcp_reaches(ns: &str, addr: SocketAddr) -> bool {
    spawn_in(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
    })
    .join()
    .unwrap()
}

/// Turns IP forwarding off in `ns` (whatever a new namespace inherits) and reads it back.
fn forwarding_off(ns: &str) -> String {
    spawn_in(ns, || {
        // /proc/sys/net shows the namespace of the thread that opens it.
        let path = "/proc/sys/net/ipv4/ip_forward";
        std::fs::write(path, "0").unwrap();
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    })
    .join()
    .unwrap()
}

#[test]
fn two_devices_on_a_lan_find_each_other_by_mdns_alone_and_chat() {
    if let Some(reason) = skip_reason() {
        skip(
            "two_devices_on_a_lan_find_each_other_by_mdns_alone_and_chat",
            &reason,
        );
        return;
    }
    let started = Instant::now();
    let mut net = Netns::new("fl");
    let bridge = net.bridge("br").unwrap();
    let (ns_a, ns_b) = (net.host("a").unwrap(), net.host("b").unwrap());
    net.plug(&ns_a, "eth0", &bridge, "10.199.21.1/24").unwrap();
    net.plug(&ns_b, "eth0", &bridge, "10.199.21.2/24").unwrap();

    // Nothing but the defaults: no bootstrap peer, no address of the other device.
    let a = Device::start("A", &ns_a, "10.199.21.1", &[]);
    let b = Device::start("B", &ns_b, "10.199.21.2", &[]);
    for device in [&a, &b] {
        let addr = format!(
            "/ip4/{}/",
            &device.url["http://".len()..device.url.rfind(':').unwrap()]
        );
        assert!(
            device.p2p_listen.iter().any(|l| l.starts_with(&addr)),
            "{} listens for peers on its LAN address: {:?}",
            device.name,
            device.p2p_listen
        );
    }

    let alice = a.register("alice");
    let bob = b.register("bob");
    eventually(STEP, "Alice's server to find Bob's by mDNS", || {
        alice.can_look_up(&a, &bob.id)
    });

    // Plain: invite, join, both ways.
    let room = alice.create_room(&a, &[&bob.id]);
    eventually(STEP, "Bob to see Alice's invite", || {
        bob.is_invited(&b, &room)
    });
    bob.join(&b, &room);
    let both = sorted(vec![alice.id.clone(), bob.id.clone()]);
    eventually(STEP, "Alice to see Bob join", || {
        alice.members(&a, &room) == both
    });
    alice.send(&a, &room, "hello Bob");
    eventually(STEP, "Alice's message on Bob's device", || {
        bob.texts(&b, &room) == ["hello Bob"]
    });
    bob.send(&b, &room, "hi Alice");
    eventually(STEP, "Bob's reply on Alice's device", || {
        alice.texts(&a, &room) == ["hello Bob", "hi Alice"]
    });
    eprintln!("plain chat done after {:?}", started.elapsed());

    // Encrypted, with a standard client on each side: room keys travel to the other device.
    let mut alice_phone = Phone::log_in(&a, "alice");
    let mut bob_phone = Phone::log_in(&b, "bob");
    let secret = alice_phone.create_encrypted_room(vec![bob_phone.user_id()]);
    bob_phone.accept_invite(&secret);
    alice_phone.send(&secret, "a secret for Bob");
    bob_phone.receive("a secret for Bob");
    bob_phone.send(&secret, "a secret for Alice");
    alice_phone.receive("a secret for Alice");
    // The servers only ever had ciphertext: a session without the keys sees no text.
    for (user, device) in [(&alice, &a), (&bob, &b)] {
        let history = user.history(device, secret.as_str());
        assert!(
            history.len() >= 2
                && history
                    .iter()
                    .all(|(kind, text)| kind == "m.room.encrypted" && text.is_none()),
            "{} holds only encrypted messages: {history:?}",
            device.name
        );
    }
    eprintln!("encrypted chat done after {:?}", started.elapsed());
    drop((alice_phone, bob_phone));
    drop((a, b));
    drop(net);
}

/// Two networks, 10.199.`n`.0/24 and 10.199.`n+1`.0/24; B is on both (.254) and A and C route
/// through it, as through a home router, but B does not forward IP: A and C can only meet
/// through what B's node does for them. Alice is on A, Bob on B, Carol on C.
struct Chain {
    a: Device,
    b: Device,
    c: Device,
    alice: User,
    bob: User,
    carol: User,
    /// Declared last: the processes stop before their namespaces go.
    _net: Netns,
}

impl Chain {
    fn new(tag: &str, n: u8, b_args: &[&str]) -> Chain {
        let (net_1, net_2) = (format!("10.199.{n}"), format!("10.199.{}", n + 1));
        let mut net = Netns::new(tag);
        let (bridge_1, bridge_2) = (net.bridge("b1").unwrap(), net.bridge("b2").unwrap());
        let (ns_a, ns_b, ns_c) = (
            net.host("a").unwrap(),
            net.host("b").unwrap(),
            net.host("c").unwrap(),
        );
        net.plug(&ns_a, "eth0", &bridge_1, &format!("{net_1}.1/24"))
            .unwrap();
        net.plug(&ns_b, "eth0", &bridge_1, &format!("{net_1}.254/24"))
            .unwrap();
        net.plug(&ns_b, "eth1", &bridge_2, &format!("{net_2}.254/24"))
            .unwrap();
        net.plug(&ns_c, "eth0", &bridge_2, &format!("{net_2}.1/24"))
            .unwrap();
        let via_b = |ns: &str, net: &str| {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.254"),
            ])
            .unwrap()
        };
        via_b(&ns_a, &net_1);
        via_b(&ns_c, &net_2);
        assert_eq!(forwarding_off(&ns_b), "0");

        let a = Device::start("A", &ns_a, &format!("{net_1}.1"), &[]);
        let b = Device::start("B", &ns_b, &format!("{net_1}.254"), b_args);
        let c = Device::start("C", &ns_c, &format!("{net_2}.1"), &[]);
        let c_api: SocketAddr = format!("{net_2}.1:{CLIENT_PORT}").parse().unwrap();
        assert!(
            tcp_reaches(&ns_b, c_api),
            "B cannot reach C: the test network is broken"
        );
        assert!(!tcp_reaches(&ns_a, c_api), "A reached C directly");

        let alice = a.register("alice");
        let bob = b.register("bob");
        let carol = c.register("carol");
        eventually(STEP, "Alice's server to find Bob's by mDNS", || {
            alice.can_look_up(&a, &bob.id)
        });
        eventually(STEP, "Bob's server to find Carol's by mDNS", || {
            bob.can_look_up(&b, &carol.id)
        });
        Chain {
            a,
            b,
            c,
            alice,
            bob,
            carol,
            _net: net,
        }
    }
}

#[test]
fn a_chain_of_three_devices_carries_messages_through_the_middle_one() {
    if let Some(reason) = skip_reason() {
        skip(
            "a_chain_of_three_devices_carries_messages_through_the_middle_one",
            &reason,
        );
        return;
    }
    let started = Instant::now();
    // B relays no connections: only B's node passing on the room's events links A and C.
    let chain = Chain::new("fc", 22, &["--no-relay-server"]);
    let Chain {
        a,
        b,
        c,
        alice,
        bob,
        carol,
        ..
    } = &chain;
    assert!(
        !alice.can_look_up(a, &carol.id),
        "Alice's server reached Carol's with no relay on the way"
    );

    // Alice invites Bob, Bob invites Carol, and Carol joins through Bob's server.
    let room = alice.create_room(a, &[&bob.id]);
    eventually(STEP, "Bob to see Alice's invite", || {
        bob.is_invited(b, &room)
    });
    bob.join(b, &room);
    bob.invite(b, &room, &carol.id);
    eventually(STEP, "Carol to see Bob's invite", || {
        carol.is_invited(c, &room)
    });
    carol.join(c, &room);
    let everyone = sorted(vec![alice.id.clone(), bob.id.clone(), carol.id.clone()]);
    eventually(STEP, "Alice to see Carol join (passed on by B)", || {
        alice.members(a, &room) == everyone
    });
    alice.send(a, &room, "hello Carol");
    eventually(
        STEP,
        "Alice's message on Carol's device (passed on by B)",
        || carol.texts(c, &room) == ["hello Carol"],
    );
    carol.send(c, &room, "hi Alice");
    eventually(
        STEP,
        "Carol's reply on Alice's device (passed on by B)",
        || alice.texts(a, &room) == ["hello Carol", "hi Alice"],
    );
    assert_eq!(bob.texts(b, &room), ["hello Carol", "hi Alice"]);
    eprintln!(
        "plain chat across the chain done after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_chain_of_three_devices_chats_encrypted_through_the_middle_ones_relay() {
    if let Some(reason) = skip_reason() {
        skip(
            "a_chain_of_three_devices_chats_encrypted_through_the_middle_ones_relay",
            &reason,
        );
        return;
    }
    let started = Instant::now();
    // Every node relays by default, and C reserves a slot on B's relay by itself; A finds C's
    // circuit address in the DHT (on B).
    let chain = Chain::new("fe", 24, &[]);
    let Chain {
        a,
        b,
        c,
        alice,
        bob,
        carol,
        ..
    } = &chain;
    // Encryption needs Alice's server to ask Carol's for her devices and one-time keys, and to
    // send her the room key (and the other way round): not something B passes on.
    eventually(
        STEP,
        "Alice's server to reach Carol's (through B's relay)",
        || alice.can_look_up(a, &carol.id),
    );

    let mut alice_phone = Phone::log_in(a, "alice");
    let mut bob_phone = Phone::log_in(b, "bob");
    let mut carol_phone = Phone::log_in(c, "carol");
    let room = alice_phone.create_encrypted_room(vec![bob_phone.user_id()]);
    bob_phone.accept_invite(&room);
    bob_phone.invite(&room, carol_phone.user_id());
    carol_phone.accept_invite(&room);
    let everyone = sorted(vec![alice.id.clone(), bob.id.clone(), carol.id.clone()]);
    eventually(STEP, "Alice to see Carol join", || {
        alice.members(a, room.as_str()) == everyone
    });

    alice_phone.send(&room, "a secret for Carol");
    carol_phone.receive("a secret for Carol");
    bob_phone.receive("a secret for Carol");
    carol_phone.send(&room, "a secret for Alice");
    alice_phone.receive("a secret for Alice");
    bob_phone.receive("a secret for Alice");
    // The servers only ever had ciphertext: a session without the keys sees no text.
    for (user, device) in [(alice, a), (bob, b), (carol, c)] {
        let history = user.history(device, room.as_str());
        assert!(
            history.len() >= 2
                && (history.iter())
                    .all(|(kind, text)| kind == "m.room.encrypted" && text.is_none()),
            "{} holds only encrypted messages: {history:?}",
            device.name
        );
    }
    eprintln!(
        "encrypted chat across the chain done after {:?}",
        started.elapsed()
    );
    drop((alice_phone, bob_phone, carol_phone));
}
