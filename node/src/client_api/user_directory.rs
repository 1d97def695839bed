//! `POST /user_directory/search`: the people a user can find by name as they type: this node's
//! users, everyone in a room with them (of any server), and the owners of the nodes connected
//! here now (people nearby). Nobody else, as Synapse does by default. Answered from the store:
//! no peer is asked per keystroke (`people::nearby` learns owners in the background).

use std::collections::HashMap;

use axum::extract::State;
use hyphae_store::DirectoryEntry;
use ruma::api::client::user_directory::search_users;
use ruma::{OwnedMxcUri, UserId};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;

/// Results at most, whatever the client asks.
const MAX_LIMIT: u64 = 50;
/// The longest search term taken (characters): longer than any name worth typing.
const MAX_TERM: usize = 256;
/// People looked at per source at most (this node's users, room-mates).
const CANDIDATES: usize = 5_000;

pub(crate) async fn search(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<search_users::v3::Request>,
) -> ApiResult<search_users::v3::Response> {
    let term = request.search_term.trim();
    if term.chars().count() > MAX_TERM {
        return Err(MatrixError::invalid_param(format!(
            "search_term is limited to {MAX_TERM} characters"
        )));
    }
    let limit = u64::from(request.limit).clamp(1, MAX_LIMIT) as usize;
    if term.is_empty() {
        return Ok(Ruma(search_users::v3::Response::new(Vec::new(), false)));
    }
    let term = term.to_lowercase();

    let connected = state.people.presence.connected_servers();
    state
        .people
        .nearby
        .learn(&state.store, &state.federation, connected.clone());
    let service = crate::policy::SERVICE_LOCALPART;
    let mut people: Vec<DirectoryEntry> = state
        .store
        .local_directory(CANDIDATES)
        .await?
        .into_iter()
        .filter(|local| local.user_id != service)
        .map(|local| DirectoryEntry {
            user_id: format!("@{}:{}", local.user_id, state.server_name),
            ..local
        })
        .collect();
    people.extend(
        state
            .store
            .peer_owners_of(connected.iter().map(ToString::to_string).collect())
            .await?,
    );
    people.extend(
        state
            .store
            .room_mates_directory(user.user_id.to_string(), CANDIDATES)
            .await?,
    );

    let mut found: Vec<(u8, DirectoryEntry)> = merged(people)
        .into_iter()
        .filter_map(|entry| {
            let user_id = UserId::parse(&entry.user_id).ok()?;
            Some((rank(&term, &user_id, entry.displayname.as_deref())?, entry))
        })
        .collect();
    found.sort_by(|(a_rank, a), (b_rank, b)| {
        (a_rank, a.displayname.is_none(), &a.user_id).cmp(&(
            b_rank,
            b.displayname.is_none(),
            &b.user_id,
        ))
    });
    let limited = found.len() > limit;
    let results = found
        .into_iter()
        .take(limit)
        .filter_map(|(_, entry)| {
            let mut result = search_users::v3::User::new(UserId::parse(&entry.user_id).ok()?);
            result.display_name = entry.displayname;
            result.avatar_url = entry.avatar_url.map(OwnedMxcUri::from);
            Some(result)
        })
        .collect();
    Ok(Ruma(search_users::v3::Response::new(results, limited)))
}

/// One entry per user, in the order first seen, with the first name and avatar any source had.
fn merged(people: Vec<DirectoryEntry>) -> Vec<DirectoryEntry> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut merged: Vec<DirectoryEntry> = Vec::new();
    for person in people {
        match index.get(&person.user_id) {
            Some(&at) => {
                let known = &mut merged[at];
                known.displayname = known.displayname.take().or(person.displayname);
                known.avatar_url = known.avatar_url.take().or(person.avatar_url);
            }
            None => {
                index.insert(person.user_id.clone(), merged.len());
                merged.push(person);
            }
        }
    }
    merged
}

/// How well `term` (lowercase) matches: 0 exactly, 1 at the start of the name or one of its
/// words, 2 anywhere; `None` not at all. A term that looks like a user id (`@…` or with a `:`)
/// is matched against whole user ids; any other against localparts and display names, not
/// against the 64 hex characters of server names, which would match nearly any term.
fn rank(term: &str, user_id: &UserId, displayname: Option<&str>) -> Option<u8> {
    let texts: Vec<String> = if term.starts_with('@') || term.contains(':') {
        vec![user_id.as_str().to_lowercase()]
    } else {
        let mut texts = vec![user_id.localpart().to_lowercase()];
        texts.extend(displayname.map(str::to_lowercase));
        texts
    };
    texts
        .iter()
        .filter_map(|text| {
            if text == term {
                Some(0)
            } else if text.starts_with(term)
                || text
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|word| word.starts_with(term))
            {
                Some(1)
            } else if text.contains(term) {
                Some(2)
            } else {
                None
            }
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_match_names_and_localparts_not_server_names() {
        let bob = UserId::parse(format!("@bob:{}", "ab".repeat(32))).unwrap();
        assert_eq!(rank("bob", &bob, None), Some(0));
        assert_eq!(rank("bui", &bob, Some("Bob the Builder")), Some(1));
        assert_eq!(rank("ild", &bob, Some("Bob the Builder")), Some(2));
        assert_eq!(rank("écl", &bob, Some("Bob ÉCLAIR")), Some(1));
        assert_eq!(rank("ab", &bob, Some("Bob")), None, "not the server's hex");
        assert_eq!(rank("@bob:abab", &bob, None), Some(1));
        assert_eq!(
            rank(&format!("@bob:{}", "ab".repeat(32)), &bob, None),
            Some(0)
        );
        assert_eq!(rank("carol", &bob, Some("Bob")), None);
    }
}
