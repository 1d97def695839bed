//! The backup settings (issue 7): subscribing this device to a backup server with an
//! operator's invitation token, unsubscribing (the server deletes its copy), and turning on key
//! backup, whose recovery key the owner is shown exactly once.
//!
//! `GET /backup` says how it all stands; the three `POST`s change one thing each and answer
//! with the same status, so the page shows what is true after the change. A failure changes
//! nothing: the address is checked before anything is sent, the node records a subscription
//! only once the server took it, and the work runs to its end even if the page goes away.

use std::future::Future;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hyphae_node::BackupError;
use hyphae_node::app::KeyBackupStatus;
use serde::{Deserialize, Serialize};

use super::Ui;
use super::api::{Answer, Failure, bad, ok, ready};
use crate::backup_target::BackupTarget;

/// Our own error codes, for what the Matrix spec has none for.
const ALREADY_SUBSCRIBED: &str = "IO.HYPHAE.ALREADY_SUBSCRIBED";
const NOT_SUBSCRIBED: &str = "IO.HYPHAE.NOT_SUBSCRIBED";
const KEY_BACKUP_ON: &str = "IO.HYPHAE.KEY_BACKUP_ON";
const UNREACHABLE: &str = "IO.HYPHAE.UNREACHABLE";
const NO_P2P: &str = "IO.HYPHAE.NO_P2P";

/// Longer than any address or token a person pastes; bounds what is parsed and echoed.
const MAX_ADDRESS: usize = 1024;
const MAX_TOKEN: usize = 256;

pub(super) fn router() -> Router<Ui> {
    Router::new()
        .route("/backup", get(status))
        .route("/backup/subscribe", post(subscribe))
        .route("/backup/unsubscribe", post(unsubscribe))
        .route("/backup/keys", post(enable_keys))
}

/// What the settings show. Unsubscribed, the subscription's fields are empty and zero.
#[derive(Serialize)]
struct Status {
    /// Whether this node runs the peer-to-peer overlay at all (without it, no backup server
    /// can be reached).
    p2p: bool,
    subscribed: bool,
    /// The backup server's name (hex key).
    server: Option<String>,
    /// Where it is dialled; empty when it was given by peer id or name (found on the network).
    addresses: Vec<String>,
    /// Bytes of this device's events the server says it keeps.
    bytes_kept: i64,
    events_kept: i64,
    /// Events the server refused (quota, bad signature); they are not sent again.
    events_refused: i64,
    /// Events still to send.
    pending: i64,
    /// The server's last refusal, if the last batch had one.
    last_error: Option<String>,
    key_backup: KeyBackup,
}

#[derive(Serialize)]
struct KeyBackup {
    enabled: bool,
    /// The backup version the room keys go to.
    version: Option<String>,
    keys_backed_up: u64,
    keys_pending: u64,
}

impl From<KeyBackupStatus> for KeyBackup {
    fn from(status: KeyBackupStatus) -> KeyBackup {
        KeyBackup {
            enabled: status.version.is_some(),
            version: status.version,
            keys_backed_up: status.backed_up,
            keys_pending: status.pending,
        }
    }
}

async fn current(ui: &Ui) -> Result<Status, Failure> {
    let ready = ready(ui)?;
    let subscription = ready.node.backup_status().await.map_err(failure)?;
    let key_backup = ready.app.key_backup_status().await?.into();
    let p2p = ready.node.transport().is_some();
    Ok(match subscription {
        Some(s) => Status {
            p2p,
            subscribed: true,
            server: Some(s.server),
            addresses: s.addresses,
            bytes_kept: s.bytes_acknowledged,
            events_kept: s.pdus_acknowledged,
            events_refused: s.pdus_refused,
            pending: s.pending,
            last_error: s.last_error,
            key_backup,
        },
        None => Status {
            p2p,
            subscribed: false,
            server: None,
            addresses: Vec::new(),
            bytes_kept: 0,
            events_kept: 0,
            events_refused: 0,
            pending: 0,
            last_error: None,
            key_backup,
        },
    })
}

async fn status(State(ui): State<Ui>) -> Answer {
    ok(current(&ui).await?)
}

#[derive(Deserialize)]
struct Subscribe {
    /// A multiaddr ending in /p2p/<peer id>, a peer id, or a server name.
    address: String,
    /// From `hyphae backup-server invite`.
    token: String,
}

async fn subscribe(State(ui): State<Ui>, body: Result<Json<Subscribe>, JsonRejection>) -> Answer {
    let Json(body) = body.map_err(json_failure)?;
    if body.address.len() > MAX_ADDRESS {
        return Err(bad(format!(
            "a backup server address has at most {MAX_ADDRESS} characters"
        )));
    }
    // Checked before anything is sent: a typo costs no token and no round trip.
    let target: BackupTarget = body.address.parse().map_err(bad)?;
    let token = body.token.trim().to_owned();
    if token.is_empty() {
        return Err(bad(
            "no invitation token: the backup server's operator makes one with `hyphae \
             backup-server invite`",
        ));
    }
    if token.len() > MAX_TOKEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "that is not an invitation token (one word of at most 256 characters)",
        ));
    }
    let worker = ui.clone();
    to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.backup_busy.lock().await;
        // Subscribing anew would leave the first server holding a copy nobody ends.
        if let Some(subscribed) = ready.node.backup_status().await.map_err(failure)? {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                ALREADY_SUBSCRIBED,
                format!(
                    "this device is already backed up to {}; unsubscribe first",
                    subscribed.server
                ),
            ));
        }
        ready
            .node
            .subscribe_backup(&target.server, target.addrs, &token)
            .await
            .map_err(failure)
    })
    .await?;
    ok(current(&ui).await?)
}

async fn unsubscribe(State(ui): State<Ui>) -> Answer {
    let worker = ui.clone();
    to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.backup_busy.lock().await;
        // The node asks the server to delete first and forgets the subscription only once it
        // did: unreachable, the device stays subscribed and says why.
        ready.node.unsubscribe_backup().await.map_err(failure)
    })
    .await?;
    ok(current(&ui).await?)
}

#[derive(Deserialize, Default)]
struct EnableKeys {
    /// Make a new recovery key even though key backup is on (the old key lost, say): the
    /// earlier backup, and the key that opens it, are replaced.
    #[serde(default)]
    replace: bool,
}

#[derive(Serialize)]
struct RecoveryKeyShown {
    /// Shown this once: the node keeps only what opens it, never the key as text.
    recovery_key: String,
    key_backup: KeyBackup,
}

/// Turns key backup on and answers with its recovery key, which no later request returns.
/// Already on, it says so rather than replacing the key the owner wrote down, unless the
/// request asks for a new one with `{"replace": true}`.
async fn enable_keys(State(ui): State<Ui>, body: Bytes) -> Answer {
    // The body is optional: a bare POST turns key backup on.
    let request: EnableKeys = if body.iter().all(u8::is_ascii_whitespace) {
        EnableKeys::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", e.to_string()))?
    };
    let worker = ui.clone();
    let shown = to_the_end(async move {
        let ready = ready(&worker)?;
        let _busy = ready.backup_busy.lock().await;
        let before = ready.app.key_backup_status().await?;
        if let (Some(version), false) = (&before.version, request.replace) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                KEY_BACKUP_ON,
                format!(
                    "key backup is already on (version {version}); its recovery key was shown \
                     when it was turned on and is not shown again. Making a new one replaces \
                     it: the old key then opens nothing."
                ),
            ));
        }
        let key = ready.app.enable_key_backup().await?;
        let after = ready.app.key_backup_status().await?;
        Ok(RecoveryKeyShown {
            recovery_key: key.as_str().to_owned(),
            key_backup: after.into(),
        })
    })
    .await?;
    ok(shown)
}

/// Runs `work` in its own task, so it finishes even if the page closes the request: a
/// subscription the server took but this device never recorded, or a key backup half set up,
/// would be worse than a result nobody reads. (The moderation settings use it too.)
pub(super) async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    tokio::spawn(work).await.map_err(|e| {
        tracing::warn!(error = %e, "a settings change did not finish");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "the change did not finish; see the node's log",
        )
    })?
}

/// A body the page should never send; said plainly for whoever calls the API by hand.
pub(super) fn json_failure(rejection: JsonRejection) -> Failure {
    let errcode = match rejection {
        JsonRejection::MissingJsonContentType(_) => "M_NOT_JSON",
        _ => "M_BAD_JSON",
    };
    Failure::new(StatusCode::BAD_REQUEST, errcode, rejection.body_text())
}

/// How a backup error reads at the API's edge: the server's own refusal keeps its errcode.
fn failure(e: BackupError) -> Failure {
    match e {
        BackupError::BadServerName(..) => bad(e.to_string()),
        BackupError::Offline => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            NO_P2P,
            "this device runs without the peer-to-peer network (--no-p2p), so it cannot reach \
             a backup server",
        ),
        BackupError::NotSubscribed => {
            Failure::new(StatusCode::CONFLICT, NOT_SUBSCRIBED, e.to_string())
        }
        BackupError::Unreachable(why) => Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            UNREACHABLE,
            format!(
                "the backup server cannot be reached ({why}); check its address and that it is \
                 running"
            ),
        ),
        BackupError::Refused { errcode, error } => {
            let status = match errcode.as_str() {
                // The owner's to fix (a wrong or used token, a full quota): not a fault here.
                "M_FORBIDDEN" | "M_RESOURCE_LIMIT_EXCEEDED" => StatusCode::FORBIDDEN,
                "M_LIMIT_EXCEEDED" => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::BAD_GATEWAY,
            };
            Failure::new(
                status,
                errcode,
                format!("the backup server refused: {error}"),
            )
        }
        BackupError::BadResponse(_) => {
            tracing::warn!(error = %e, "the backup server answered badly");
            Failure::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string())
        }
        other => {
            tracing::warn!(error = %other, "a backup request failed");
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "M_UNKNOWN",
                other.to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_refusal_keeps_its_errcode() {
        let refused = failure(BackupError::Refused {
            errcode: "M_FORBIDDEN".into(),
            error: "Unknown or already used subscription token".into(),
        });
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.errcode, "M_FORBIDDEN");
        assert_eq!(
            refused.message,
            "the backup server refused: Unknown or already used subscription token"
        );
        let odd = failure(BackupError::Refused {
            errcode: "M_UNRECOGNIZED".into(),
            error: "no such endpoint".into(),
        });
        assert_eq!(odd.status, StatusCode::BAD_GATEWAY);
        assert_eq!(odd.errcode, "M_UNRECOGNIZED");
    }

    #[test]
    fn unreachable_and_offline_say_what_to_check() {
        let gone = failure(BackupError::Unreachable("no connection within 10s".into()));
        assert_eq!(gone.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(gone.errcode, UNREACHABLE);
        assert!(
            gone.message.contains("no connection within 10s"),
            "{}",
            gone.message
        );
        let offline = failure(BackupError::Offline);
        assert_eq!(offline.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(offline.message.contains("--no-p2p"));
        let bad_name = failure(BackupError::BadServerName("x".into(), "not a key".into()));
        assert_eq!(
            (bad_name.status, bad_name.errcode.as_str()),
            (StatusCode::BAD_REQUEST, "M_INVALID_PARAM")
        );
    }
}
