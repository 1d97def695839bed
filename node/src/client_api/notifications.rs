//! `/notifications`: the events that notified the user, newest first, each marked read once
//! their read receipt (or a later event of their own) has passed it.

use axum::extract::State;
use ruma::api::client::push::get_notifications::v3 as get_notifications;
use ruma::push::Action;
use ruma::{MilliSecondsSinceUnixEpoch, RoomId, UInt};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::events::ClientEvents;
use super::request::{Req, User};
use super::tokens::{Token, stream_token};
use crate::node::AppState;
use crate::rooms::Pdu;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

pub(crate) async fn list(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_notifications::Request>,
) -> ApiResult<get_notifications::Response> {
    let before = request
        .from
        .as_deref()
        .map(|token| Token::parse_stream(token).map(|t| t.position))
        .transpose()?;
    let limit = request
        .limit
        .map_or(DEFAULT_LIMIT, |l| {
            u32::try_from(u64::from(l)).unwrap_or(MAX_LIMIT)
        })
        .clamp(1, MAX_LIMIT);
    let only_highlight = match request.only.as_deref() {
        None | Some("") => false,
        Some("highlight") => true,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "`only` takes \"highlight\", not {other:?}"
            )));
        }
    };
    let upto = *state.store.stream_position().borrow();
    crate::push::catch_up(&state, upto).await?;
    let mut found = state
        .store
        .notifications(user.user_id.to_string(), before, limit + 1, only_highlight)
        .await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let mut notifications = Vec::with_capacity(found.len());
    for notification in &found {
        let pdu = match Pdu::from_stored(&notification.pdu) {
            Ok(pdu) => pdu,
            Err(e) => {
                tracing::error!(error = %e, "skipping a damaged stored event");
                continue;
            }
        };
        let Ok(room_id) = RoomId::parse(&notification.action.room_id) else {
            continue;
        };
        let event = ClientEvents::without_relations(&state, &user, true)
            .serve_one(&pdu)
            .await?;
        let actions: Vec<Action> =
            serde_json::from_str(&notification.action.actions).unwrap_or_default();
        let ts = MilliSecondsSinceUnixEpoch(
            UInt::try_from(notification.ts.max(0) as u64).unwrap_or_default(),
        );
        notifications.push(get_notifications::Notification::new(
            actions,
            event,
            notification.read,
            room_id,
            ts,
        ));
    }
    let mut response = get_notifications::Response::new(notifications);
    if more {
        response.next_token = found.last().map(|n| stream_token(n.action.stream_pos));
    }
    Ok(Ruma(response))
}
