//! One policy list compiled for matching: its ban rules by kind, exact entities in a hash map
//! and globs bucketed by their literal prefix or suffix, so checking an event runs the full
//! glob on a handful of candidates whatever the list's size. Built once per change of the list.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ruma::OwnedRoomId;
use serde::Serialize;

use super::glob::{Glob, GlobError};

/// Globs with no literal prefix or suffix to index them by (`*evil*`) are found by the literal
/// text inside them, all at once; past this many in one list and kind, more are refused (a
/// check then costs at most this many glob runs, for a text that holds every one's literal).
pub const MAX_UNANCHORED: usize = 64;
const _: () = assert!(MAX_UNANCHORED <= 64, "a check marks them in one u64");
/// Globs sharing one literal anchor are all tried when it matches; past this many, more are
/// refused (no honest list needs a thousand globs starting `@spam`).
pub const MAX_PER_ANCHOR: usize = 1024;
/// Globs (rules with a wildcard) per list, all kinds together; past this many, more are
/// refused. Exact rules cost a hash entry each and are not capped; a glob costs a run on
/// every check that reaches its bucket, and a list is written by someone else.
pub const MAX_GLOBS: usize = 32_768;
/// Globs are bucketed by at most this many bytes of their literal start or end: a check
/// then looks up at most this many prefixes and suffixes of its text, each of at most this
/// many bytes, whatever anchor lengths a list holds (longer anchors are still matched in
/// full by the glob itself).
pub const MAX_ANCHOR_KEY: usize = 32;
/// Glob steps one check may spend on one list (about a hundred microseconds). An honest list
/// needs a few hundred; one built to be slow (a thousand globs on one anchor, each
/// backtracking over a long id) is stopped here, the rest of its candidates untried, and a
/// warning logged: the edge must not spend milliseconds of the runtime on each event.
pub const CHECK_BUDGET: usize = 1 << 16;
/// Refusals remembered per list for whoever asks why a rule has no effect.
const MAX_REFUSALS_KEPT: usize = 100;
/// Refusals logged one by one per compile; the rest are counted.
const MAX_REFUSALS_LOGGED: usize = 10;

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    User,
    Room,
    Server,
}

impl PolicyKind {
    /// The state event type rules of this kind are written as.
    pub fn event_type(self) -> &'static str {
        match self {
            PolicyKind::User => "m.policy.rule.user",
            PolicyKind::Room => "m.policy.rule.room",
            PolicyKind::Server => "m.policy.rule.server",
        }
    }

    /// The kind of a rule event type: the spec's, and the older names clients still honour.
    pub fn of_event_type(event_type: &str) -> Option<PolicyKind> {
        let kind = event_type
            .strip_prefix("m.policy.rule.")
            .or_else(|| event_type.strip_prefix("m.room.rule."))
            .or_else(|| event_type.strip_prefix("org.matrix.mjolnir.rule."))?;
        kind.parse().ok()
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    /// `user`, `room` or `server`, as the rule types end.
    fn from_str(kind: &str) -> Result<PolicyKind, String> {
        match kind {
            "user" => Ok(PolicyKind::User),
            "room" => Ok(PolicyKind::Room),
            "server" => Ok(PolicyKind::Server),
            other => Err(format!(
                "kind {other:?}: a rule bans a user, room or server"
            )),
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyKind::User => "user",
            PolicyKind::Room => "room",
            PolicyKind::Server => "server",
        })
    }
}

/// Why a rule state event is skipped (it stays in the room; it just bans nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("no string `entity`")]
    NoEntity,
    #[error("recommendation {0:?} is not a ban")]
    NotABan(String),
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error("{MAX_UNANCHORED} globs without a literal start or end are already in the list")]
    TooManyUnanchored,
    #[error("{MAX_PER_ANCHOR} globs of the list already start or end with {0:?}")]
    CrowdedAnchor(String),
    #[error("the list already holds {MAX_GLOBS} globs")]
    TooManyGlobs,
}

/// A ban rule as a policy room's state says it: (entity, reason); `Ok(None)` for an emptied
/// rule (how rules are removed). Unknown recommendations are skipped, as the spec asks.
pub fn parse_rule(content: &serde_json::Value) -> Result<Option<(String, String)>, RuleError> {
    let Some(object) = content.as_object() else {
        return Err(RuleError::NoEntity);
    };
    if object.is_empty() {
        return Ok(None);
    }
    let entity = object
        .get("entity")
        .and_then(|e| e.as_str())
        .ok_or(RuleError::NoEntity)?;
    match object.get("recommendation").and_then(|r| r.as_str()) {
        Some("m.ban" | "org.matrix.mjolnir.ban") => {}
        other => {
            return Err(RuleError::NotABan(
                other.unwrap_or("(none)").chars().take(64).collect(),
            ));
        }
    }
    let reason = object
        .get("reason")
        .and_then(|r| r.as_str())
        .unwrap_or_default();
    Ok(Some((entity.to_owned(), reason.to_owned())))
}

/// A rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'a> {
    pub kind: PolicyKind,
    /// The rule's entity (the glob as written).
    pub entity: &'a str,
    pub reason: &'a str,
}

/// What an event is checked on: its sender, the sender's server (or the server that sent or
/// relayed it), and its room (by id, and by alias when the caller has one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    pub server: Option<&'a str>,
    pub room: Option<&'a str>,
    pub room_alias: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// A user and their server.
    pub fn user(user_id: &'a ruma::UserId) -> Subject<'a> {
        Subject {
            user: Some(user_id.as_str()),
            server: Some(user_id.server_name().as_str()),
            ..Subject::default()
        }
    }
}

/// One kind's rules.
#[derive(Debug, Default)]
struct Matcher {
    exact: HashMap<Box<str>, Arc<str>>,
    globs: Vec<(Glob, Arc<str>)>,
    by_prefix: HashMap<Box<str>, Vec<u32>>,
    by_suffix: HashMap<Box<str>, Vec<u32>>,
    /// The distinct anchor lengths in use, so a check looks up only those.
    prefix_lens: Vec<usize>,
    suffix_lens: Vec<usize>,
    unanchored: Vec<u32>,
    /// The unanchored globs' longest literal runs, as one automaton: a check passes over the
    /// text once and runs only the globs whose literal it holds.
    unanchored_literals: Option<aho_corasick::AhoCorasick>,
    /// Server names are case-insensitive: these rules and their checks are lower-cased.
    fold_case: bool,
}

/// The first `max` bytes of `s` (fewer, to end on a character boundary).
fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The last `max` bytes of `s` (fewer, to start on a character boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Matcher {
    /// Adds a rule; `globs_in_list` is how many globs the whole list holds so far.
    fn add(
        &mut self,
        entity: &str,
        reason: Arc<str>,
        globs_in_list: usize,
    ) -> Result<(), RuleError> {
        let entity = if self.fold_case {
            std::borrow::Cow::Owned(entity.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(entity)
        };
        let glob = Glob::compile(&entity)?;
        if glob.is_exact() {
            self.exact
                .insert(entity.into_owned().into_boxed_str(), reason);
            return Ok(());
        }
        if globs_in_list >= MAX_GLOBS {
            return Err(RuleError::TooManyGlobs);
        }
        let id = u32::try_from(self.globs.len()).unwrap_or(u32::MAX);
        let (prefix, suffix) = (glob.prefix(), glob.suffix());
        let (bucket, anchor) = if !prefix.is_empty() && prefix.len() >= suffix.len() {
            (&mut self.by_prefix, head(prefix, MAX_ANCHOR_KEY))
        } else if !suffix.is_empty() {
            (&mut self.by_suffix, tail(suffix, MAX_ANCHOR_KEY))
        } else {
            if self.unanchored.len() >= MAX_UNANCHORED {
                return Err(RuleError::TooManyUnanchored);
            }
            self.unanchored.push(id);
            self.globs.push((glob, reason));
            return Ok(());
        };
        let ids = bucket.entry(anchor.into()).or_default();
        if ids.len() >= MAX_PER_ANCHOR {
            return Err(RuleError::CrowdedAnchor(anchor.to_owned()));
        }
        ids.push(id);
        self.globs.push((glob, reason));
        Ok(())
    }

    fn finish(&mut self) {
        let lens = |map: &HashMap<Box<str>, Vec<u32>>| {
            let mut lens: Vec<usize> = map.keys().map(|k| k.len()).collect();
            lens.sort_unstable();
            lens.dedup();
            lens
        };
        self.prefix_lens = lens(&self.by_prefix);
        self.suffix_lens = lens(&self.by_suffix);
        if !self.unanchored.is_empty() {
            let literals: Vec<&str> = self
                .unanchored
                .iter()
                .filter_map(|&id| self.globs.get(id as usize))
                .map(|(glob, _)| glob.longest_literal())
                .collect();
            match aho_corasick::AhoCorasick::new(literals) {
                Ok(automaton) => self.unanchored_literals = Some(automaton),
                // Then every unanchored glob is simply tried.
                Err(e) => tracing::warn!(error = %e, "cannot index unanchored policy globs"),
            }
        }
        self.exact.shrink_to_fit();
        self.globs.shrink_to_fit();
        self.by_prefix.shrink_to_fit();
        self.by_suffix.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.exact.len() + self.globs.len()
    }

    /// The first of `ids` whose glob matches `text`, within `budget`.
    fn try_ids<'a>(
        &'a self,
        ids: &[u32],
        text: &str,
        budget: &mut usize,
    ) -> Option<(&'a str, &'a str)> {
        for &id in ids {
            let Some((glob, reason)) = self.globs.get(id as usize) else {
                continue;
            };
            match glob.matches_within(text, budget) {
                Some(true) => return Some((glob.as_str(), &**reason)),
                Some(false) => {}
                // Out of budget: the rest cannot be tried either.
                None => return None,
            }
        }
        None
    }

    /// The first rule matching `text`: exact ones, then the globs whose anchor it has, each
    /// glob step taken off `budget` (the globs left when it runs out are not tried).
    fn find<'a>(&'a self, text: &str, budget: &mut usize) -> Option<(&'a str, &'a str)> {
        let folded;
        let text = if self.fold_case && text.bytes().any(|b| b.is_ascii_uppercase()) {
            folded = text.to_ascii_lowercase();
            folded.as_str()
        } else {
            text
        };
        if let Some((entity, reason)) = self.exact.get_key_value(text) {
            return Some((entity, reason));
        }
        // At most `MAX_ANCHOR_KEY` lengths each way, keys of at most as many bytes.
        for &len in &self.prefix_lens {
            if len > text.len() {
                break;
            }
            if let Some(head) = text.get(..len)
                && let Some(ids) = self.by_prefix.get(head)
                && let Some(hit) = self.try_ids(ids, text, budget)
            {
                return Some(hit);
            }
        }
        for &len in &self.suffix_lens {
            if len > text.len() {
                break;
            }
            if let Some(tail) = text.get(text.len() - len..)
                && let Some(ids) = self.by_suffix.get(tail)
                && let Some(hit) = self.try_ids(ids, text, budget)
            {
                return Some(hit);
            }
        }
        let Some(literals) = &self.unanchored_literals else {
            return self.try_ids(&self.unanchored, text, budget);
        };
        // At most 64 unanchored globs: which were tried fits one word.
        let mut tried = 0u64;
        for found in literals.find_overlapping_iter(text) {
            let n = found.pattern().as_usize();
            if n >= 64 || tried & (1 << n) != 0 {
                continue;
            }
            tried |= 1 << n;
            if let Some(&id) = self.unanchored.get(n)
                && let Some(hit) = self.try_ids(&[id], text, budget)
            {
                return Some(hit);
            }
        }
        None
    }
}

/// A refused rule: its entity (cut short) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub kind: PolicyKind,
    pub entity: String,
    pub why: String,
}

/// A policy list compiled for matching.
#[derive(Debug)]
pub struct CompiledList {
    room_id: OwnedRoomId,
    users: Matcher,
    rooms: Matcher,
    servers: Matcher,
    refused: Vec<Refusal>,
    refused_total: usize,
    /// A check ran out of `CHECK_BUDGET` (logged once per compiled list).
    over_budget: AtomicBool,
}

impl CompiledList {
    pub fn room_id(&self) -> &OwnedRoomId {
        &self.room_id
    }

    /// The ban rules in effect.
    pub fn len(&self) -> usize {
        self.users.len() + self.rooms.len() + self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rules refused when the list was compiled (the first few), and how many in all.
    pub fn refused(&self) -> (&[Refusal], usize) {
        (&self.refused, self.refused_total)
    }

    /// The first rule that bans what `subject` names: its user, then its server, then its
    /// room. Exact rules are always found; globs within `CHECK_BUDGET` steps.
    pub fn check(&self, subject: &Subject<'_>) -> Option<Hit<'_>> {
        let hit = |kind, (entity, reason)| Hit {
            kind,
            entity,
            reason,
        };
        let mut budget = CHECK_BUDGET;
        let found = 'found: {
            if let Some(user) = subject.user
                && let Some(found) = self.users.find(user, &mut budget)
            {
                break 'found Some(hit(PolicyKind::User, found));
            }
            if let Some(server) = subject.server
                && let Some(found) = self.servers.find(server, &mut budget)
            {
                break 'found Some(hit(PolicyKind::Server, found));
            }
            for room in [subject.room, subject.room_alias].into_iter().flatten() {
                if let Some(found) = self.rooms.find(room, &mut budget) {
                    break 'found Some(hit(PolicyKind::Room, found));
                }
            }
            None
        };
        if budget == 0 && found.is_none() && !self.over_budget.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                list = %self.room_id,
                user = subject.user.unwrap_or_default(),
                "a policy check ran out of its budget; globs left untried (logged once per compile)"
            );
        }
        found
    }
}

/// Builds a `CompiledList`, one rule at a time.
pub struct ListBuilder {
    list: CompiledList,
    reasons: HashMap<String, Arc<str>>,
}

impl ListBuilder {
    pub fn new(room_id: OwnedRoomId) -> ListBuilder {
        ListBuilder {
            list: CompiledList {
                room_id,
                users: Matcher::default(),
                rooms: Matcher::default(),
                servers: Matcher {
                    fold_case: true,
                    ..Matcher::default()
                },
                refused: Vec::new(),
                refused_total: 0,
                over_budget: AtomicBool::new(false),
            },
            reasons: HashMap::new(),
        }
    }

    /// Adds a ban rule; a refused one is logged and remembered, and the list goes on without it.
    pub fn add(&mut self, kind: PolicyKind, entity: &str, reason: &str) -> Result<(), RuleError> {
        // Lists repeat a few reasons ("spam") over many rules: each is kept once.
        let reason = match self.reasons.get(reason) {
            Some(reason) => reason.clone(),
            None => {
                let shared: Arc<str> = reason.into();
                self.reasons.insert(reason.to_owned(), shared.clone());
                shared
            }
        };
        let globs = self.list.users.globs.len()
            + self.list.rooms.globs.len()
            + self.list.servers.globs.len();
        let matcher = match kind {
            PolicyKind::User => &mut self.list.users,
            PolicyKind::Room => &mut self.list.rooms,
            PolicyKind::Server => &mut self.list.servers,
        };
        let result = matcher.add(entity, reason, globs);
        if let Err(why) = &result {
            self.refuse(kind, entity, why);
        }
        result
    }

    /// Records a rule event that is not a usable rule.
    pub fn refuse(&mut self, kind: PolicyKind, entity: &str, why: &RuleError) {
        let shown: String = entity.chars().take(80).collect();
        if self.list.refused_total < MAX_REFUSALS_LOGGED {
            tracing::warn!(list = %self.list.room_id, %kind, entity = %shown, reason = %why, "policy rule refused");
        }
        self.list.refused_total += 1;
        if self.list.refused.len() < MAX_REFUSALS_KEPT {
            self.list.refused.push(Refusal {
                kind,
                entity: shown,
                why: why.to_string(),
            });
        }
    }

    pub fn finish(mut self) -> CompiledList {
        for matcher in [
            &mut self.list.users,
            &mut self.list.rooms,
            &mut self.list.servers,
        ] {
            matcher.finish();
        }
        if self.list.refused_total > MAX_REFUSALS_LOGGED {
            tracing::warn!(list = %self.list.room_id, refused = self.list.refused_total, "policy rules refused in all");
        }
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn room() -> OwnedRoomId {
        "!list:example".try_into().unwrap()
    }

    fn user(id: &str) -> Subject<'_> {
        let server = id.split_once(':').map(|(_, s)| s);
        Subject {
            user: Some(id),
            server,
            ..Subject::default()
        }
    }

    #[test]
    fn exact_ids_globs_and_servers_match_what_they_name() {
        let mut list = ListBuilder::new(room());
        list.add(PolicyKind::User, "@mallory:evil.example", "spam")
            .unwrap();
        list.add(PolicyKind::User, "@*:spam.example", "spam server")
            .unwrap();
        list.add(PolicyKind::User, "@bot?:x", "bots").unwrap();
        list.add(PolicyKind::Server, "*.evil.example", "evil")
            .unwrap();
        list.add(PolicyKind::Server, "Loud.Example", "loud")
            .unwrap();
        list.add(PolicyKind::Room, "!bad:x", "bad room").unwrap();
        list.add(PolicyKind::Room, "#*:evil.example", "evil rooms")
            .unwrap();
        let list = list.finish();
        assert_eq!(list.len(), 7);

        let hit = list.check(&user("@mallory:evil.example")).unwrap();
        assert_eq!(
            (hit.kind, hit.entity, hit.reason),
            (PolicyKind::User, "@mallory:evil.example", "spam")
        );
        assert_eq!(
            list.check(&user("@anyone:spam.example")).unwrap().entity,
            "@*:spam.example"
        );
        assert_eq!(list.check(&user("@bot1:x")).unwrap().reason, "bots");
        assert!(list.check(&user("@bot12:x")).is_none());
        let hit = list.check(&user("@eve:chat.evil.example")).unwrap();
        assert_eq!(
            (hit.kind, hit.entity),
            (PolicyKind::Server, "*.evil.example")
        );
        assert_eq!(
            list.check(&user("@x:LOUD.example")).unwrap().reason,
            "loud",
            "server names ignore case"
        );
        assert!(list.check(&user("@alice:good.example")).is_none());
        let room = Subject {
            room: Some("!bad:x"),
            ..Subject::default()
        };
        assert_eq!(list.check(&room).unwrap().kind, PolicyKind::Room);
        let alias = Subject {
            room: Some("!fine:x"),
            room_alias: Some("#chat:evil.example"),
            ..Subject::default()
        };
        assert_eq!(list.check(&alias).unwrap().entity, "#*:evil.example");
    }

    #[test]
    fn rule_events_are_read_as_the_spec_writes_them() {
        assert_eq!(
            parse_rule(&json!({"entity": "@m:x", "recommendation": "m.ban", "reason": "r"})),
            Ok(Some(("@m:x".into(), "r".into())))
        );
        assert_eq!(
            parse_rule(&json!({"entity": "@m:x", "recommendation": "org.matrix.mjolnir.ban"})),
            Ok(Some(("@m:x".into(), String::new())))
        );
        assert_eq!(parse_rule(&json!({})), Ok(None), "an emptied rule");
        assert_eq!(
            parse_rule(&json!({"entity": 5, "recommendation": "m.ban"})),
            Err(RuleError::NoEntity)
        );
        assert_eq!(
            parse_rule(&json!({"entity": "@m:x", "recommendation": "m.mute"})),
            Err(RuleError::NotABan("m.mute".into()))
        );
        assert_eq!(parse_rule(&json!("text")), Err(RuleError::NoEntity));
        assert_eq!(
            PolicyKind::of_event_type("org.matrix.mjolnir.rule.server"),
            Some(PolicyKind::Server)
        );
        assert_eq!(PolicyKind::of_event_type("m.policy.rule.weird"), None);
    }

    #[test]
    fn absurd_rules_are_refused_and_the_rest_of_the_list_works() {
        let mut list = ListBuilder::new(room());
        let wild = format!("@{}:x", "a*".repeat(2000));
        let big = "@".to_owned() + &"m".repeat(10_000) + ":x";
        for bad in ["*", "@*:*", "?*", wild.as_str(), big.as_str()] {
            assert!(list.add(PolicyKind::User, bad, "").is_err(), "{bad:.20}");
        }
        for n in 0..MAX_UNANCHORED {
            list.add(PolicyKind::User, &format!("*evil{n}*"), "")
                .unwrap();
        }
        assert_eq!(
            list.add(PolicyKind::User, "*one-too-many*", ""),
            Err(RuleError::TooManyUnanchored)
        );
        list.add(PolicyKind::User, "@mallory:x", "still works")
            .unwrap();
        let list = list.finish();
        assert_eq!(list.refused().1, 6);
        assert_eq!(
            list.check(&user("@mallory:x")).unwrap().reason,
            "still works"
        );
        assert!(list.check(&user("@alice:x")).is_none());
        assert!(list.check(&user("@evil7ish:y")).is_some());
        // A huge entity to check costs one hash of it, not a crash.
        assert!(list.check(&user(&big)).is_none());
    }

    #[test]
    fn long_anchors_of_many_lengths_cost_a_bounded_number_of_lookups() {
        let mut list = ListBuilder::new(room());
        // Prefixes of every length from 2 to 200 bytes, and suffixes likewise.
        for n in 1..200 {
            list.add(PolicyKind::User, &format!("@{}*", "p".repeat(n)), "long")
                .unwrap();
            list.add(PolicyKind::User, &format!("*{}:x", "s".repeat(n)), "long")
                .unwrap();
        }
        list.add(PolicyKind::User, "@é日本語*", "wide").unwrap();
        let q = "q".repeat(100);
        list.add(PolicyKind::User, &format!("@{q}*:z"), "only long")
            .unwrap();
        let list = list.finish();
        assert!(list.users.prefix_lens.len() <= MAX_ANCHOR_KEY);
        assert!(list.users.suffix_lens.len() <= MAX_ANCHOR_KEY);
        assert!(list.users.prefix_lens.iter().all(|l| *l <= MAX_ANCHOR_KEY));
        // Still matched in full: a long anchor is checked by the glob itself.
        let long = format!("@{}:y", "p".repeat(150));
        assert!(list.check(&user(&long)).is_some());
        // Bucketed by its first 32 bytes, matched on all 100.
        assert_eq!(
            list.check(&user(&format!("@{q}1:z"))).unwrap().reason,
            "only long"
        );
        assert!(
            list.check(&user(&format!("@{}1:z", "q".repeat(99))))
                .is_none()
        );
        assert!(
            list.check(&user(&format!("@{}:x", "s".repeat(120))))
                .is_some()
        );
        assert!(list.check(&user("@é日本語1:y")).is_some());
        assert!(list.check(&user("@q:y")).is_none());
    }

    #[test]
    fn the_list_holds_a_bounded_number_of_globs() {
        let mut list = ListBuilder::new(room());
        for n in 0..MAX_GLOBS {
            list.add(PolicyKind::Server, &format!("*.e{n}.example"), "")
                .unwrap();
        }
        assert_eq!(
            list.add(PolicyKind::User, "@one*:more", ""),
            Err(RuleError::TooManyGlobs)
        );
        // Exact rules are not globs: still taken.
        list.add(PolicyKind::User, "@mallory:x", "exact").unwrap();
        let list = list.finish();
        assert_eq!(list.refused().1, 1);
        assert_eq!(list.refused().0[0].why, RuleError::TooManyGlobs.to_string());
        assert_eq!(list.check(&user("@mallory:x")).unwrap().reason, "exact");
    }

    #[test]
    fn a_list_built_to_be_slow_is_checked_within_the_budget() {
        // A thousand globs on one anchor, each backtracking over a long id: unbudgeted, over
        // four times what one check may spend.
        let mut list = ListBuilder::new(room());
        for n in 0..MAX_PER_ANCHOR {
            let glob = format!("@aaaaaaaaaa{}*x{n}", "*a".repeat(15));
            list.add(PolicyKind::User, &glob, "slow").unwrap();
        }
        list.add(PolicyKind::User, "@aaaa:exact", "exact").unwrap();
        let list = list.finish();
        let text = format!("@{}", "a".repeat(250));
        // Steps, not seconds: what the list would cost unbudgeted, against what a check spends.
        let mut unbudgeted = usize::MAX;
        assert!(list.users.find(&text, &mut unbudgeted).is_none());
        let would_take = usize::MAX - unbudgeted;
        assert!(
            would_take > 4 * CHECK_BUDGET,
            "the list should cost more than a check may spend: {would_take} steps"
        );
        let mut budget = CHECK_BUDGET;
        assert!(list.users.find(&text, &mut budget).is_none());
        assert_eq!(budget, 0, "a check stops when its budget is spent");
        assert!(list.check(&user(&text)).is_none());
        assert!(list.over_budget.load(Ordering::Relaxed));
        // Exact rules do not spend the budget.
        assert_eq!(list.check(&user("@aaaa:exact")).unwrap().reason, "exact");
    }

    #[test]
    fn many_globs_with_one_anchor_are_capped() {
        let mut list = ListBuilder::new(room());
        for n in 0..MAX_PER_ANCHOR {
            list.add(PolicyKind::User, &format!("@spammer-anchor*{n}"), "")
                .unwrap();
        }
        assert!(matches!(
            list.add(PolicyKind::User, "@spammer-anchor*more", ""),
            Err(RuleError::CrowdedAnchor(_))
        ));
    }
}
