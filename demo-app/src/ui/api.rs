//! The UI's JSON API: what the page asks of the owner's in-process client (`AppClient`). Only
//! reachable through `super::guard`, so every handler here acts for the signed-in owner.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyphae_node::app::{AppClient, AppError};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::json;

use super::{Ready, Ui, error};

/// Timeline items a room opens with.
const DEFAULT_LIMIT: u32 = 50;
/// The longest display name and message accepted: bounded so one request cannot grow an event
/// past what federation carries (65 KB per PDU).
const MAX_NAME: usize = 256;
const MAX_TEXT: usize = 32 * 1024;

pub(super) fn router() -> Router<Ui> {
    Router::new()
        .route("/me", get(me))
        .route("/me/display_name", put(set_display_name))
        .route("/me/password", post(set_password))
        .route("/nearby", get(nearby))
        .route("/rooms", get(rooms))
        .route("/invites", get(invites))
        .route("/invites/{room_id}/accept", post(accept))
        .route("/invites/{room_id}/decline", post(decline))
        .route("/dm", post(create_dm))
        .route("/groups", post(create_group))
        .route("/rooms/{room_id}/timeline", get(timeline))
        .route("/rooms/{room_id}/members", get(members))
        .route("/rooms/{room_id}/messages", post(send))
        .route("/rooms/{room_id}/invite", post(invite))
        .route("/rooms/{room_id}/leave", post(leave))
}

/// Why a request failed, as the page shows it.
pub(super) struct Failure {
    pub(super) status: StatusCode,
    /// The Matrix error code (`M_FORBIDDEN`, …), or one of ours (`IO.HYPHAE.…`, namespaced as
    /// the spec asks of codes it does not define).
    pub(super) errcode: String,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(
        status: StatusCode,
        errcode: impl Into<String>,
        message: impl Into<String>,
    ) -> Failure {
        Failure {
            status,
            errcode: errcode.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error(self.status, &self.errcode, self.message)
    }
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Failure {
        let (status, errcode) = match &e {
            AppError::BadInput(_) | AppError::RecoveryKey(_) => {
                (StatusCode::BAD_REQUEST, "M_INVALID_PARAM".to_owned())
            }
            AppError::Api(api) => match api {
                hyphae_node::app::ApiError::Matrix {
                    status, errcode, ..
                } if (400..500).contains(status) => (
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                    errcode.clone(),
                ),
                _ => (StatusCode::BAD_GATEWAY, "M_UNKNOWN".to_owned()),
            },
            AppError::Unconfirmed(_) => (StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN".to_owned()),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN".to_owned()),
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "the web UI's request failed");
        }
        Failure::new(status, errcode, e.to_string())
    }
}

/// Input the page (or a person typing) got wrong.
pub(super) fn bad(message: impl Into<String>) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
}

pub(super) type Answer = Result<Response, Failure>;

pub(super) fn ok(value: impl serde::Serialize) -> Answer {
    Ok(Json(value).into_response())
}

/// The guard lets nothing through before the node is attached; this is its other half.
pub(super) fn ready(ui: &Ui) -> Result<&Ready, Failure> {
    ui.ready()
        .ok_or_else(|| Failure::new(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "starting up"))
}

fn app(ui: &Ui) -> Result<&AppClient, Failure> {
    Ok(&ready(ui)?.app)
}

fn room_id(text: &str) -> Result<OwnedRoomId, Failure> {
    RoomId::parse(text).map_err(|e| bad(format!("not a room id: {text}: {e}")))
}

/// A user id as people paste it: `@name:server`, with stray spaces forgiven.
fn user_id(text: &str) -> Result<OwnedUserId, Failure> {
    let text = text.trim();
    UserId::parse(text).map_err(|e| bad(format!("not a user id (@name:server): {text}: {e}")))
}

async fn me(State(ui): State<Ui>) -> Answer {
    let ready = ready(&ui)?;
    ok(json!({
        "user_id": ready.app.user_id(),
        "device_id": ready.app.device_id(),
        "display_name": ready.app.display_name().await,
        "server_name": ready.server_name,
        "peer_id": ready.peer_id,
        "has_password": ready.app.has_password().await?,
    }))
}

/// A password never appears in a log: this body is not logged, nor is a refusal's reason.
#[derive(Deserialize)]
struct Password {
    password: String,
}

/// Sets the password the owner logs in with from other Matrix clients on this device.
async fn set_password(State(ui): State<Ui>, Json(body): Json<Password>) -> Answer {
    let app = app(&ui)?;
    app.set_password(&body.password).await?;
    ok(json!({ "user_id": app.user_id(), "has_password": true }))
}

#[derive(Deserialize)]
struct DisplayName {
    display_name: String,
}

async fn set_display_name(State(ui): State<Ui>, Json(body): Json<DisplayName>) -> Answer {
    let name = body.display_name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad(format!(
            "a display name has 1 to {MAX_NAME} characters"
        )));
    }
    app(&ui)?.set_display_name(name).await?;
    ok(json!({ "display_name": name }))
}

async fn nearby(State(ui): State<Ui>) -> Answer {
    ok(app(&ui)?.nearby().await)
}

/// The owner's rooms; policy lists are marked `"policy_list": true` (the page shows them in
/// the moderation settings, not among the chats).
async fn rooms(State(ui): State<Ui>) -> Answer {
    let ready = ready(&ui)?;
    let rooms = ready.app.rooms().await?;
    let lists = super::policy::list_rooms(ready).await?;
    let rooms: Vec<serde_json::Value> = rooms
        .into_iter()
        .map(|room| {
            let policy_list = lists.contains(&room.room_id);
            let mut room = serde_json::to_value(room).unwrap_or_default();
            room["policy_list"] = policy_list.into();
            room
        })
        .collect();
    ok(rooms)
}

async fn invites(State(ui): State<Ui>) -> Answer {
    ok(app(&ui)?.invites().await?)
}

async fn accept(State(ui): State<Ui>, Path(room): Path<String>) -> Answer {
    let room = room_id(&room)?;
    app(&ui)?.join(&room).await?;
    ok(json!({ "room_id": room }))
}

async fn decline(State(ui): State<Ui>, Path(room): Path<String>) -> Answer {
    let room = room_id(&room)?;
    app(&ui)?.leave(&room).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
struct Dm {
    user_id: String,
}

async fn create_dm(State(ui): State<Ui>, Json(body): Json<Dm>) -> Answer {
    let with = user_id(&body.user_id)?;
    let room = app(&ui)?.create_dm(&with).await?;
    ok(json!({ "room_id": room }))
}

#[derive(Deserialize)]
struct Group {
    name: String,
    #[serde(default)]
    invite: Vec<String>,
}

async fn create_group(State(ui): State<Ui>, Json(body): Json<Group>) -> Answer {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad(format!(
            "a group's name has 1 to {MAX_NAME} characters"
        )));
    }
    let invite = body
        .invite
        .iter()
        .filter(|u| !u.trim().is_empty())
        .map(|u| user_id(u))
        .collect::<Result<Vec<_>, _>>()?;
    let room = app(&ui)?.create_group(name, &invite).await?;
    ok(json!({ "room_id": room }))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn timeline(
    State(ui): State<Ui>,
    Path(room): Path<String>,
    Query(query): Query<Limit>,
) -> Answer {
    let room = room_id(&room)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 500);
    ok(app(&ui)?.timeline(&room, limit).await?)
}

async fn members(State(ui): State<Ui>, Path(room): Path<String>) -> Answer {
    let room = room_id(&room)?;
    ok(app(&ui)?.members(&room).await?)
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

async fn send(State(ui): State<Ui>, Path(room): Path<String>, Json(body): Json<Text>) -> Answer {
    let room = room_id(&room)?;
    if body.text.len() > MAX_TEXT {
        return Err(bad(format!("a message has at most {MAX_TEXT} bytes")));
    }
    let event_id = app(&ui)?.send_text(&room, &body.text).await?;
    ok(json!({ "event_id": event_id }))
}

#[derive(Deserialize)]
struct InviteBody {
    user_id: String,
}

async fn invite(
    State(ui): State<Ui>,
    Path(room): Path<String>,
    Json(body): Json<InviteBody>,
) -> Answer {
    let room = room_id(&room)?;
    let user = user_id(&body.user_id)?;
    app(&ui)?.invite(&room, &user).await?;
    ok(json!({}))
}

async fn leave(State(ui): State<Ui>, Path(room): Path<String>) -> Answer {
    let room = room_id(&room)?;
    app(&ui)?.leave(&room).await?;
    ok(json!({}))
}
