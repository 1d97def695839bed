//! Profiles of other servers' users: asked of their server (`query/profile`), kept in the store
//! and served from there while fresh; once stale they are refreshed in the background and
//! served stale meanwhile, and while the server is away. With nothing kept and the server away,
//! the user's membership event in a room here says who they are.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use hyphae_p2p::RequestOptions;
use hyphae_store::StoreError;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::Value;

use super::now_ms;
use crate::federation::FederationError;
use crate::node::AppState;

/// A profile kept this long is served without asking its server again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(10 * 60);
/// A server that did not answer is not asked again for this long: clients ask for a profile,
/// its display name and its avatar in a row.
const AWAY_FOR: Duration = Duration::from_secs(60);
/// Servers remembered as away, at most.
const MAX_AWAY: usize = 1024;
/// How long asking a server may take, and how much it may answer: a profile is two short
/// strings and a mailbox record.
const ASKING: RequestOptions = RequestOptions {
    connect_timeout: Duration::from_secs(3),
    request_timeout: Duration::from_secs(3),
    max_response_body: 64 * 1024,
};
/// The longest display name or avatar URL taken from another server (bytes), as for local
/// users.
pub(crate) const MAX_FIELD: usize = 1024;

/// (display name, avatar URL).
pub(crate) type Profile = (Option<String>, Option<String>);

/// What the node remembers between requests, beside the store.
pub(crate) struct ProfileCache {
    fresh_for_ms: AtomicU64,
    away: Mutex<HashMap<OwnedServerName, Instant>>,
    refreshing: Mutex<HashSet<OwnedUserId>>,
}

impl Default for ProfileCache {
    fn default() -> Self {
        ProfileCache {
            fresh_for_ms: AtomicU64::new(FRESH_FOR.as_millis() as u64),
            away: Mutex::new(HashMap::new()),
            refreshing: Mutex::new(HashSet::new()),
        }
    }
}

impl ProfileCache {
    /// Tests make profiles go stale sooner.
    #[cfg(test)]
    pub(crate) fn set_fresh_for(&self, fresh_for: Duration) {
        self.fresh_for_ms
            .store(fresh_for.as_millis() as u64, Ordering::Relaxed);
    }

    fn is_away(&self, server: &ServerName) -> bool {
        let mut away = self.away.lock().unwrap_or_else(|e| e.into_inner());
        match away.get(server) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                away.remove(server);
                false
            }
            None => false,
        }
    }

    fn note_away(&self, server: &ServerName) {
        let mut away = self.away.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if away.len() >= MAX_AWAY {
            away.retain(|_, until| *until > now);
        }
        if away.len() < MAX_AWAY {
            away.insert(server.to_owned(), now + AWAY_FOR);
        }
    }

    fn note_answered(&self, server: &ServerName) {
        self.away
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(server);
    }
}

/// What a server said when asked for a profile.
enum Answer {
    Profile(Profile),
    NoSuchUser,
    /// No answer, or one that could not be used.
    Away,
}

/// The profile of a user of another server, or `None` when nobody here knows them and their
/// server does not say.
pub(crate) async fn remote_profile(
    state: &AppState,
    user_id: &UserId,
) -> Result<Option<Profile>, StoreError> {
    let cache = &state.people.profiles;
    if let Some(cached) = state.store.remote_profile(user_id.to_string()).await? {
        let age = now_ms().saturating_sub(cached.fetched_ms).max(0) as u64;
        if age >= cache.fresh_for_ms.load(Ordering::Relaxed) {
            refresh_in_background(state, user_id);
        }
        return Ok(Some((cached.displayname, cached.avatar_url)));
    }
    match ask(state, user_id).await {
        Answer::Profile(profile) => {
            keep(state, user_id, &profile).await?;
            Ok(Some(profile))
        }
        Answer::NoSuchUser => Ok(None),
        Answer::Away => state.store.member_profile(user_id.to_string()).await,
    }
}

/// Asks the user's server again, once at a time per user; the kept profile stays when the
/// server does not answer, and goes when it says there is no such user.
fn refresh_in_background(state: &AppState, user_id: &UserId) {
    let cache = &state.people.profiles;
    if !cache
        .refreshing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(user_id.to_owned())
    {
        return;
    }
    let (state, user_id) = (state.clone(), user_id.to_owned());
    tokio::spawn(async move {
        let kept = match ask(&state, &user_id).await {
            Answer::Profile(profile) => keep(&state, &user_id, &profile).await,
            Answer::NoSuchUser => state.store.forget_remote_profile(user_id.to_string()).await,
            Answer::Away => Ok(()),
        };
        if let Err(e) = kept {
            tracing::warn!(%user_id, error = %e, "could not keep a profile");
        }
        state
            .people
            .profiles
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&user_id);
    });
}

async fn keep(state: &AppState, user_id: &UserId, profile: &Profile) -> Result<(), StoreError> {
    state
        .store
        .put_remote_profile(user_id.to_string(), profile.0.clone(), profile.1.clone())
        .await
}

async fn ask(state: &AppState, user_id: &UserId) -> Answer {
    let cache = &state.people.profiles;
    let server = user_id.server_name();
    if cache.is_away(server) {
        return Answer::Away;
    }
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::rooms::urlencode(user_id.as_str())
    );
    let asked =
        state
            .federation
            .request_with::<Value>(server, Method::GET, &path, None, Some(ASKING));
    // The transport bounds each step; this bounds them together.
    let Ok(answer) = tokio::time::timeout(ASKING.connect_timeout * 2, asked).await else {
        cache.note_away(server);
        return Answer::Away;
    };
    match answer {
        Ok(answer) => {
            cache.note_answered(server);
            match profile_in(state, server, &answer).await {
                Ok(profile) => Answer::Profile(profile),
                Err(reason) => {
                    tracing::info!(%user_id, %reason, "unusable profile answer");
                    Answer::Away
                }
            }
        }
        Err(FederationError::Refused {
            status, errcode, ..
        }) if status == StatusCode::NOT_FOUND && errcode == "M_NOT_FOUND" => {
            cache.note_answered(server);
            Answer::NoSuchUser
        }
        Err(e @ (FederationError::Http(_) | FederationError::Offline)) => {
            tracing::debug!(%user_id, error = %e, "the user's server did not answer");
            cache.note_away(server);
            Answer::Away
        }
        Err(e) => {
            tracing::info!(%user_id, error = %e, "the user's server refused the profile");
            Answer::Away
        }
    }
}

/// The profile in a server's answer: strings of a sane size, an avatar that is an `mxc://` URI.
/// A mailbox record it carries is taken as any other (it is signed).
async fn profile_in(
    state: &AppState,
    server: &ServerName,
    answer: &Value,
) -> Result<Profile, String> {
    let profile = fields_in(answer)?;
    if let Some(record) = answer
        .get(crate::backup::mailbox::PROFILE_FIELD)
        .filter(|r| r.is_object())
    {
        let from = hyphae_store::RecordSource::Peer(server.to_string());
        crate::backup::mailbox::learn_record(&state.store, &record.to_string(), from).await;
    }
    Ok(profile)
}

fn fields_in(answer: &Value) -> Result<Profile, String> {
    let field = |name: &str| -> Result<Option<String>, String> {
        match answer.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) if value.len() <= MAX_FIELD => Ok(Some(value.clone())),
            Some(Value::String(_)) => Err(format!("{name} is longer than {MAX_FIELD} bytes")),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let displayname = field("displayname")?;
    let avatar_url = field("avatar_url")?;
    if avatar_url
        .as_ref()
        .is_some_and(|url| !url.starts_with("mxc://"))
    {
        return Err("avatar_url is not an mxc:// URI".into());
    }
    Ok((displayname, avatar_url))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_short_strings_and_mxc_avatars_are_taken_from_another_server() {
        let ok = json!({"displayname": "Bob", "avatar_url": "mxc://b/a", "other": [1, 2]});
        assert_eq!(
            fields_in(&ok),
            Ok((Some("Bob".into()), Some("mxc://b/a".into())))
        );
        assert_eq!(fields_in(&json!({"displayname": null})), Ok((None, None)));
        for refused in [
            json!({"displayname": "x".repeat(MAX_FIELD + 1)}),
            json!({"displayname": {"a": 1}}),
            json!({"avatar_url": 7}),
            json!({"avatar_url": "https://tracker.example/pixel.png"}),
        ] {
            assert!(fields_in(&refused).is_err(), "{refused}");
        }
    }
}
