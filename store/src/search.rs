//! Full-text search of room events: the FTS5 index `event_search` (kept by triggers on
//! `events`, see migration 0016) asked for words, within rooms from the first stream position
//! the reader may see in each.

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use crate::Store;
use crate::error::Result;
use crate::events::StoredPdu;

/// Most words of one query that count; the rest are ignored.
const MAX_TERMS: usize = 16;
/// Longest word searched for, in characters.
const MAX_TERM_CHARS: usize = 100;

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Newest first.
    Recent,
    /// Best match first (BM25), then newest.
    Rank,
}

/// Where a page of results starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchCursor {
    /// Results older than this stream position (pages of [`SearchOrder::Recent`]: new events
    /// arriving meanwhile do not shift them).
    Before(i64),
    /// Results after the first this many (pages of [`SearchOrder::Rank`]).
    Skip(u64),
}

/// A search of room events.
#[derive(Debug, Clone)]
pub struct EventSearch {
    /// Words that must all be found, each also as the start of a longer word ("hel" finds
    /// "hello"). Take them from what a user typed with [`search_terms`].
    pub terms: Vec<String>,
    /// The rooms searched, each with the first stream position its reader may see.
    pub rooms: Vec<(String, i64)>,
    /// The event types whose text counts: `m.room.message`, `m.room.name`, `m.room.topic`.
    pub event_types: Vec<String>,
    /// Only events from these senders, when given.
    pub senders: Option<Vec<String>>,
    /// No events from these senders.
    pub not_senders: Vec<String>,
    pub order: SearchOrder,
    pub from: Option<SearchCursor>,
    pub limit: u32,
}

/// One event found, with its score (higher is better).
#[derive(Debug, Clone)]
pub struct SearchHit {
    pub pdu: StoredPdu,
    pub rank: f64,
}

/// A page of results.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// How many events match in all, over every page.
    pub count: u64,
    /// Where the next page starts, when there is one.
    pub next: Option<SearchCursor>,
}

/// The words of what a user typed, as the index splits text into words (runs of letters and
/// digits), lowercased and without repeats. Quotes, `AND`, `NEAR(` and the like are plain
/// words or separators here, never query syntax.
pub fn search_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let word: String = word.chars().take(MAX_TERM_CHARS).collect::<String>();
        let word = word.to_lowercase();
        if !terms.contains(&word) {
            terms.push(word);
        }
        if terms.len() == MAX_TERMS {
            break;
        }
    }
    terms
}

/// The FTS5 query for `terms`: each one quoted (so nothing in it is syntax) as a prefix.
fn match_expression(terms: &[String]) -> String {
    terms
        .iter()
        .map(|term| format!("\"{}\"*", term.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store {
    pub async fn search_events(&self, search: EventSearch) -> Result<SearchPage> {
        self.read(move |conn| search_events(conn, &search)).await
    }
}

/// SQL parameters numbered as they are added.
#[derive(Default)]
struct Params(Vec<Value>);

impl Params {
    fn add(&mut self, value: impl Into<Value>) -> String {
        self.0.push(value.into());
        format!("?{}", self.0.len())
    }

    fn list(&mut self, values: &[String]) -> String {
        values
            .iter()
            .map(|v| self.add(v.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn search_events(conn: &Connection, search: &EventSearch) -> Result<SearchPage> {
    if search.terms.is_empty()
        || search.rooms.is_empty()
        || search.event_types.is_empty()
        || search.limit == 0
        || search.senders.as_ref().is_some_and(Vec::is_empty)
    {
        return Ok(SearchPage::default());
    }
    let mut params = Params::default();
    let expression = params.add(match_expression(&search.terms));
    let rooms = search
        .rooms
        .iter()
        .map(|(room, start)| {
            format!(
                "({}, {})",
                params.add(room.clone()),
                params.add(Value::Integer(*start))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let types = params.list(&search.event_types);
    let mut conditions = format!("event_search MATCH {expression} AND e.event_type IN ({types})");
    if let Some(senders) = &search.senders {
        conditions += &format!(" AND e.sender IN ({})", params.list(senders));
    }
    if !search.not_senders.is_empty() {
        conditions += &format!(
            " AND e.sender NOT IN ({})",
            params.list(&search.not_senders)
        );
    }
    let with = format!("WITH visible (room_id, start) AS (VALUES {rooms})");
    let body = format!(
        "FROM event_search s
         JOIN events e ON e.stream_pos = s.rowid
         JOIN visible v ON v.room_id = e.room_id AND e.stream_pos >= v.start
         WHERE {conditions} AND e.rejection_reason IS NULL"
    );
    let count: i64 = conn.query_row(
        &format!("{with} SELECT count(*) {body}"),
        params_from_iter(params.0.iter()),
        |row| row.get(0),
    )?;

    let mut cursor = String::new();
    let (order, skip) = match (search.order, search.from) {
        (SearchOrder::Recent, from) => {
            if let Some(SearchCursor::Before(position)) = from {
                cursor = format!(" AND e.stream_pos < {}", params.add(position));
            }
            ("e.stream_pos DESC", 0)
        }
        (SearchOrder::Rank, from) => {
            let skip = match from {
                Some(SearchCursor::Skip(skip)) => i64::try_from(skip).unwrap_or(i64::MAX),
                _ => 0,
            };
            ("score ASC, e.stream_pos DESC", skip)
        }
    };
    // One more than asked: whether there is a next page.
    let limit = params.add(i64::from(search.limit) + 1);
    let offset = params.add(skip);
    let sql = format!(
        "{with} SELECT {}, bm25(event_search) AS score {body}{cursor}
         ORDER BY {order} LIMIT {limit} OFFSET {offset}",
        StoredPdu::COLUMNS_E
    );
    let mut statement = conn.prepare(&sql)?;
    let mut hits = statement
        .query_map(params_from_iter(params.0.iter()), |row| {
            Ok(SearchHit {
                pdu: StoredPdu::from_row(row)?,
                // BM25 scores are lower for better matches.
                rank: -row.get::<_, f64>(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = hits.len() > search.limit as usize;
    hits.truncate(search.limit as usize);
    let next = match search.order {
        SearchOrder::Recent => hits
            .last()
            .and_then(|hit| hit.pdu.stream_pos)
            .filter(|_| more)
            .map(SearchCursor::Before),
        SearchOrder::Rank => more.then(|| SearchCursor::Skip(skip as u64 + hits.len() as u64)),
    };
    Ok(SearchPage {
        hits,
        count: u64::try_from(count).unwrap_or_default(),
        next,
    })
}

#[cfg(test)]
mod search_tests {
    use super::*;
    use crate::NewPdu;

    const ROOM: &str = "!room:example";

    fn event(id: &str, kind: &str, state_key: Option<&str>, content: &str) -> NewPdu {
        NewPdu {
            event_id: id.into(),
            room_id: ROOM.into(),
            depth: 1,
            sender: "@alice:example".into(),
            event_type: kind.into(),
            state_key: state_key.map(str::to_owned),
            origin_server_ts: 1,
            json: format!(r#"{{"content":{content},"type":"{kind}"}}"#),
            prev_events: vec![],
            auth_events: vec![],
            rejection_reason: None,
            outlier: false,
        }
    }

    fn text(id: &str, body: &str) -> NewPdu {
        event(
            id,
            "m.room.message",
            None,
            &format!(r#"{{"body":"{body}"}}"#),
        )
    }

    fn query(words: &str) -> EventSearch {
        EventSearch {
            terms: search_terms(words),
            rooms: vec![(ROOM.into(), i64::MIN)],
            event_types: ["m.room.message", "m.room.name", "m.room.topic"]
                .map(String::from)
                .to_vec(),
            senders: None,
            not_senders: vec![],
            order: SearchOrder::Recent,
            from: None,
            limit: 10,
        }
    }

    async fn found(store: &Store, search: EventSearch) -> Vec<String> {
        let page = store.search_events(search).await.unwrap();
        page.hits.into_iter().map(|h| h.pdu.event_id).collect()
    }

    #[test]
    fn what_a_user_types_is_words_never_query_syntax() {
        assert_eq!(search_terms("\"foo"), ["foo"]);
        assert_eq!(search_terms("AND OR"), ["and", "or"]);
        assert_eq!(
            search_terms("NEAR(a b) *x* Café café"),
            ["near", "a", "b", "x", "café"]
        );
        assert!(search_terms("\" * ( ) -").is_empty());
        assert_eq!(search_terms(&"w ".repeat(100)), ["w"]);
        let many: String = (0..40).map(|i| format!("w{i} ")).collect();
        assert_eq!(search_terms(&many).len(), MAX_TERMS);
    }

    #[tokio::test]
    async fn words_are_found_in_messages_names_and_topics_but_not_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store
            .append_pdus(vec![
                text("$hello", "Hello wörld, the fountain at noon"),
                event(
                    "$name",
                    "m.room.name",
                    Some(""),
                    r#"{"name":"Fountain square"}"#,
                ),
                event(
                    "$topic",
                    "m.room.topic",
                    Some(""),
                    r#"{"topic":"near the fountain"}"#,
                ),
                event(
                    "$secret",
                    "m.room.encrypted",
                    None,
                    r#"{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"fountain"}"#,
                ),
                event("$odd", "m.room.message", None, r#"{"body":42}"#),
                event("$custom", "m.fountain", None, r#"{"body":"fountain"}"#),
            ])
            .await
            .unwrap();
        let mut rejected = text("$rejected", "fountain");
        rejected.rejection_reason = Some("not allowed".into());
        let mut outlier = text("$outlier", "fountain");
        outlier.outlier = true;
        store.append_pdus(vec![rejected, outlier]).await.unwrap();

        assert_eq!(
            found(&store, query("fountain")).await,
            ["$topic", "$name", "$hello"]
        );
        assert_eq!(found(&store, query("fount")).await.len(), 3, "prefixes");
        assert_eq!(
            found(&store, query("WORLD hel")).await,
            ["$hello"],
            "all words, any case"
        );
        assert_eq!(
            found(&store, query("world")).await,
            ["$hello"],
            "without diacritics"
        );
        let mut names = query("fountain");
        names.event_types = vec!["m.room.name".into()];
        assert_eq!(found(&store, names).await, ["$name"]);
        for nonsense in ["\"foo", "AND OR", "NOT(", "*", "\"\"\"", ""] {
            let page = store.search_events(query(nonsense)).await.unwrap();
            assert!(page.hits.is_empty(), "{nonsense:?}");
        }

        // The outlier takes its place in the timeline: now it is found.
        store
            .append_pdus(vec![text("$outlier", "fountain")])
            .await
            .unwrap();
        assert!(
            found(&store, query("fountain"))
                .await
                .contains(&"$outlier".to_string())
        );
    }

    #[tokio::test]
    async fn redacted_events_are_no_longer_found_and_the_index_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        store
            .append_pdus(vec![
                text("$a", "picnic today"),
                text("$b", "picnic tomorrow"),
            ])
            .await
            .unwrap();
        store
            .replace_pdu_json(
                "$a".into(),
                r#"{"content":{},"type":"m.room.message"}"#.into(),
            )
            .await
            .unwrap();
        assert_eq!(found(&store, query("picnic")).await, ["$b"]);
        store.close().await;
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(found(&store, query("picnic")).await, ["$b"]);
        assert_eq!(found(&store, query("today")).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn events_stored_before_the_index_existed_are_indexed_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::DATABASE_FILE);
        {
            let mut conn = Connection::open(&path).unwrap();
            let before = crate::SCHEMA_VERSION - 1;
            crate::migrations::migrate_to(&mut conn, &path, before).unwrap();
            conn.execute(
                "INSERT INTO events (event_id, room_id, stream_pos, depth, sender, event_type,
                                     origin_server_ts, pdu)
                 VALUES ('$old', ?1, 7, 1, '@alice:example', 'm.room.message', 1,
                         '{\"content\":{\"body\":\"lantern parade\"}}')",
                [ROOM],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(found(&store, query("lantern")).await, ["$old"]);
    }

    #[tokio::test]
    async fn only_from_where_the_reader_may_see_in_pages_by_recency_or_rank() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let positions: Vec<i64> = store
            .append_pdus(vec![
                text("$1", "kite"),
                text("$2", "kite kite kite kite"),
                text("$3", "kite and a long story around it that goes on"),
                text("$4", "kite"),
                text("$5", "kite"),
            ])
            .await
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();

        let mut from_third = query("kite");
        from_third.rooms = vec![(ROOM.into(), positions[2])];
        assert_eq!(found(&store, from_third).await, ["$5", "$4", "$3"]);
        let mut elsewhere = query("kite");
        elsewhere.rooms = vec![("!other:example".into(), i64::MIN)];
        assert!(found(&store, elsewhere).await.is_empty());
        let mut others = query("kite");
        others.not_senders = vec!["@alice:example".into()];
        assert!(found(&store, others).await.is_empty());

        // Newest first, two at a time.
        let mut recent = query("kite");
        recent.limit = 2;
        let mut pages = Vec::new();
        loop {
            let page = store.search_events(recent.clone()).await.unwrap();
            assert_eq!(page.count, 5);
            pages.push(
                page.hits
                    .iter()
                    .map(|h| h.pdu.event_id.clone())
                    .collect::<Vec<_>>(),
            );
            match page.next {
                Some(next) => recent.from = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, [vec!["$5", "$4"], vec!["$3", "$2"], vec!["$1"]]);

        // Best first: the message that says it most, the long one last.
        let mut ranked = query("kite");
        ranked.order = SearchOrder::Rank;
        ranked.limit = 4;
        let page = store.search_events(ranked.clone()).await.unwrap();
        let ids: Vec<_> = page.hits.iter().map(|h| h.pdu.event_id.as_str()).collect();
        assert_eq!(ids[0], "$2");
        assert!(page.hits.windows(2).all(|w| w[0].rank >= w[1].rank));
        ranked.from = page.next;
        assert_eq!(found(&store, ranked).await, ["$3"]);
    }
}
