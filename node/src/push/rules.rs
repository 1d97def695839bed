//! A user's push rules, kept as their `m.push_rules` global account data (`{"global": …}`, as
//! Synapse and Conduit keep them), so `/sync` delivers them to clients that read them there.
//! Rules a client writes directly as account data count as well.

use hyphae_store::{Store, StoreError};
use ruma::UserId;
use ruma::push::Ruleset;
use serde::Deserialize;

/// The account data type push rules live in.
pub(crate) const PUSH_RULES: &str = "m.push_rules";

#[derive(Deserialize)]
struct Stored {
    global: Ruleset,
}

/// The rules in stored account data, with this build's server-default rules (kept enabled or
/// disabled, and with the actions, the user gave them); the defaults alone when nothing is
/// stored or what is stored cannot be read.
pub(crate) fn ruleset_from(user_id: &UserId, stored: Option<&str>) -> Ruleset {
    let defaults = Ruleset::server_default(user_id);
    let Some(stored) = stored else {
        return defaults;
    };
    match serde_json::from_str::<Stored>(stored) {
        Ok(Stored { mut global }) => {
            global.update_with_server_default(defaults);
            global
        }
        Err(e) => {
            tracing::warn!(%user_id, error = %e, "unreadable push rules in account data; using the defaults");
            defaults
        }
    }
}

/// The account data content for a ruleset.
pub(crate) fn content_of(ruleset: &Ruleset) -> String {
    serde_json::json!({ "global": ruleset }).to_string()
}

/// A local user's push rules.
pub(crate) async fn user_ruleset(store: &Store, user_id: &UserId) -> Result<Ruleset, StoreError> {
    let stored = store
        .account_data(user_id.localpart().to_owned(), None, PUSH_RULES.into())
        .await?;
    Ok(ruleset_from(user_id, stored.as_deref()))
}

/// Changes a local user's push rules in one read-modify-write of their account data; nothing is
/// written when `change` fails. The outer error is the store's, the inner one `change`'s.
pub(crate) async fn update_ruleset<T, E, F>(
    store: &Store,
    user_id: &UserId,
    change: F,
) -> Result<Result<T, E>, StoreError>
where
    F: FnOnce(&mut Ruleset) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let owned = user_id.to_owned();
    store
        .update_account_data(
            user_id.localpart().to_owned(),
            None,
            PUSH_RULES.into(),
            move |stored| {
                let mut ruleset = ruleset_from(&owned, stored.as_deref());
                match change(&mut ruleset) {
                    Ok(answer) => (Some(content_of(&ruleset)), Ok(answer)),
                    Err(e) => (None, Err(e)),
                }
            },
        )
        .await
}
