//! Benchmark: checking incoming events against a policy list of 100,000 rules, as the
//! federation edge and the app's views do for every event. Reports the time to compile the
//! list, the memory the compiled list holds (counted by this binary's global allocator: every
//! byte allocated while compiling and not freed after, the input strings excluded), and the
//! median and p99 of one check (sender, sender's server and room against the list) over
//! 100,000 events, some banned, most not; then the same with the worst a list may add on top
//! (the capped 64 globs with no literal start or end, tried on every check).
//!
//! Run: `cargo run --release -p hyphae-tests --bin bench-policy [-- RULES EVENTS]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use hyphae_node::policy::{CompiledList, ListBuilder, PolicyKind, Subject};
use hyphae_tests::client::percentile;

/// Counts the bytes held, so the compiled list's size is measured rather than estimated.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A Hyphae server name: 64 hex characters (a key), derived from `n`.
fn hex_server(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// A realistic list: mostly single users, then whole servers' users, servers by glob and by
/// name, users by a name prefix, and rooms.
fn rules(total: usize) -> Vec<(PolicyKind, String, String)> {
    let mut rules = Vec::with_capacity(total);
    let reasons = ["spam", "harassment", "scam links", "impersonation", ""];
    for n in 0..total as u64 {
        let reason = reasons[(n % 5) as usize].to_owned();
        let rule = match n % 100 {
            0..=79 => (
                PolicyKind::User,
                format!("@spammer{n}:{}", hex_server(n % 5000)),
            ),
            80..=84 => (PolicyKind::User, format!("@*:bad{n}.example")),
            85..=87 => (PolicyKind::Server, format!("*.evil{n}.example")),
            88..=89 => (PolicyKind::Server, hex_server(1_000_000 + n)),
            90..=94 => (PolicyKind::User, format!("@crypto{n}bot*")),
            95..=97 => (PolicyKind::Room, format!("!scamroom{n}:{}", hex_server(n))),
            _ => (PolicyKind::Room, format!("#*:casino{n}.example")),
        };
        rules.push((rule.0, rule.1, reason));
    }
    rules
}

/// (sender, room) pairs: a fifth banned in one way or another, the rest not.
fn events(total: usize, rules: usize) -> Vec<(String, String)> {
    let rules = rules as u64;
    (0..total as u64)
        .map(|n| {
            let k = (n * 7919) % rules;
            let room = format!("!room{}:{}", n % 1000, hex_server(n % 300));
            match n % 20 {
                // Banned one by one (k rounded to a user rule).
                0 => (
                    format!(
                        "@spammer{}:{}",
                        k - k % 100,
                        hex_server((k - k % 100) % 5000)
                    ),
                    room,
                ),
                // On a server whose users are all banned.
                1 => (format!("@someone{n}:bad{}.example", k - k % 100 + 80), room),
                // On a subdomain of a banned server glob.
                2 => (format!("@u{n}:chat.evil{}.example", k - k % 100 + 85), room),
                // A banned name prefix.
                3 => (
                    format!("@crypto{}bot{n}:{}", k - k % 100 + 90, hex_server(n)),
                    room,
                ),
                // Everyone else: ordinary people on ordinary servers, in ordinary rooms.
                _ => (
                    format!("@person{n}:{}", hex_server(7_000_000 + n % 2000)),
                    room,
                ),
            }
        })
        .collect()
}

fn measure(
    list: &CompiledList,
    events: &[(String, String)],
) -> (Duration, Duration, Duration, usize) {
    let subjects: Vec<(String, String, String)> = events
        .iter()
        .map(|(user, room)| {
            let server = user.split_once(':').map(|(_, s)| s).unwrap_or_default();
            (user.clone(), server.to_owned(), room.clone())
        })
        .collect();
    let mut times = Vec::with_capacity(subjects.len());
    let mut banned = 0;
    // Warm up the caches the way a running node would be.
    for (user, server, room) in subjects.iter().take(10_000) {
        std::hint::black_box(list.check(&Subject {
            user: Some(user),
            server: Some(server),
            room: Some(room),
            room_alias: None,
        }));
    }
    let all = Instant::now();
    for (user, server, room) in &subjects {
        let subject = Subject {
            user: Some(user),
            server: Some(server),
            room: Some(room),
            room_alias: None,
        };
        let start = Instant::now();
        let hit = std::hint::black_box(list.check(std::hint::black_box(&subject)));
        times.push(start.elapsed());
        banned += usize::from(hit.is_some());
    }
    let mean = all.elapsed() / subjects.len() as u32;
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        mean,
        banned,
    )
}

fn build(
    rules: &[(PolicyKind, String, String)],
    extra: &[(PolicyKind, String, String)],
) -> (CompiledList, Duration, isize) {
    let before = HELD.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut builder = ListBuilder::new("!bench:example".try_into().expect("room id"));
    for (kind, entity, reason) in rules.iter().chain(extra) {
        let _ = builder.add(*kind, entity, reason);
    }
    let list = builder.finish();
    let took = start.elapsed();
    let held = HELD.load(Ordering::Relaxed) - before;
    (list, took, held)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total_rules: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let total_events: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    println!("bench-policy: {total_rules} rules, {total_events} events");

    let rules = rules(total_rules);
    let events = events(total_events, total_rules);
    let (list, took, held) = build(&rules, &[]);
    println!(
        "compile: {:.1} ms; compiled list holds {:.1} MB ({:.0} bytes per rule); {} rules in effect, {} refused",
        took.as_secs_f64() * 1e3,
        held as f64 / 1e6,
        held as f64 / list.len().max(1) as f64,
        list.len(),
        list.refused().1,
    );
    let (median, p99, mean, banned) = measure(&list, &events);
    println!(
        "check one event (sender, server, room): median {} ns, p99 {} ns, mean {} ns \
         (timer included); {banned} of {total_events} banned",
        median.as_nanos(),
        p99.as_nanos(),
        mean.as_nanos()
    );
    drop(list);

    let unanchored: Vec<(PolicyKind, String, String)> = (0..64)
        .map(|n| (PolicyKind::User, format!("*scam{n}*"), "scam".to_owned()))
        .collect();
    let (list, _, _) = build(&rules, &unanchored);
    let (median, p99, mean, _) = measure(&list, &events);
    println!(
        "with the 64 unanchored globs a list may hold on top: median {} ns, p99 {} ns, mean {} ns",
        median.as_nanos(),
        p99.as_nanos(),
        mean.as_nanos()
    );
}
