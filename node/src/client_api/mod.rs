//! The Client-Server API router: the endpoints Matrix clients call, CORS for browser clients,
//! and the Matrix error shape every failure is turned into.

mod account;
mod account_data;
mod backup;
mod devices;
pub(crate) mod directory;
mod ephemeral;
mod error;
mod events;
mod history;
mod keys;
mod not_offered;
mod notifications;
mod presence;
mod profile;
mod push_rules;
mod pushers;
mod rate_limit;
mod relations;
mod remote_keys;
mod request;
mod rooms;
mod search;
mod sync;
mod tags;
mod to_device;
mod tokens;
mod uia;
mod user_directory;
mod versions;

#[cfg(test)]
mod directory_tests;
#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod push_tests;
#[cfg(test)]
mod relations_tests;
#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod search_tests;
#[cfg(test)]
mod settings_tests;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use ruma::api::{OutgoingResponse, OutgoingResponseExt};
use tower::ServiceExt;

use crate::node::AppState;

pub(crate) use account::MAX_PASSWORD_BYTES;
pub(crate) use error::{MatrixError, unrecognized};
pub(crate) use keys::{claim_local, local_keys, user_keys};
pub(crate) use profile::local_profile;
pub(crate) use rate_limit::RateLimiter;
pub(crate) use remote_keys::servers_sharing_rooms;
pub(crate) use request::{MAX_BODY, Req};
pub(crate) use rooms::join_room;
pub(crate) use to_device::sort_messages;

pub(crate) fn router(state: AppState) -> Router {
    let client = Router::new()
        .route("/versions", get(versions::get_versions))
        .route("/v3/register", post(account::register))
        .route("/v3/register/available", get(account::username_available))
        .route("/v3/login", get(account::login_types).post(account::login))
        .route("/v3/logout", post(account::logout))
        .route("/v3/logout/all", post(account::logout_all))
        .route("/v3/account/whoami", get(account::whoami))
        .route("/v3/account/password", post(account::change_password))
        .route("/v3/devices", get(devices::list))
        .route(
            "/v3/devices/{device_id}",
            get(devices::get)
                .put(devices::update)
                .delete(devices::delete),
        )
        .route("/v3/delete_devices", post(devices::delete_many))
        .route("/v3/keys/upload", post(keys::upload))
        .route("/v3/keys/query", post(keys::query))
        .route("/v3/keys/claim", post(keys::claim))
        .route("/v3/keys/changes", get(keys::changes))
        .route(
            "/v3/keys/device_signing/upload",
            post(keys::upload_signing_keys),
        )
        .route("/v3/keys/signatures/upload", post(keys::upload_signatures))
        .route(
            "/v3/sendToDevice/{event_type}/{txn_id}",
            put(to_device::send),
        )
        .route(
            "/v3/room_keys/version",
            get(backup::latest_version).post(backup::create_version),
        )
        .route(
            "/v3/room_keys/version/{version}",
            get(backup::get_version)
                .put(backup::update_version)
                .delete(backup::delete_version),
        )
        .route(
            "/v3/room_keys/keys",
            get(backup::get_keys)
                .put(backup::put_keys)
                .delete(backup::delete_keys),
        )
        .route(
            "/v3/room_keys/keys/{room_id}",
            get(backup::get_room_keys)
                .put(backup::put_room_keys)
                .delete(backup::delete_room_keys),
        )
        .route(
            "/v3/room_keys/keys/{room_id}/{session_id}",
            get(backup::get_session_key)
                .put(backup::put_session_key)
                .delete(backup::delete_session_key),
        )
        .route("/v3/sync", get(sync::sync))
        .route("/v3/capabilities", get(account_data::capabilities))
        .route("/v3/profile/{user_id}", get(profile::get))
        .route(
            "/v3/profile/{user_id}/displayname",
            get(profile::get_displayname).put(profile::set_displayname),
        )
        .route(
            "/v3/profile/{user_id}/avatar_url",
            get(profile::get_avatar).put(profile::set_avatar),
        )
        .route(
            "/v3/presence/{user_id}/status",
            get(presence::get_status).put(presence::set_status),
        )
        .route("/v3/user_directory/search", post(user_directory::search))
        .route("/v3/pushrules/", get(push_rules::get_all))
        .route("/v3/pushrules/global/", get(push_rules::get_global))
        .route(
            "/v3/pushrules/global/{kind}/{rule_id}",
            get(push_rules::get_rule)
                .put(push_rules::set_rule)
                .delete(push_rules::delete_rule),
        )
        .route(
            "/v3/pushrules/global/{kind}/{rule_id}/enabled",
            get(push_rules::get_enabled).put(push_rules::set_enabled),
        )
        .route(
            "/v3/pushrules/global/{kind}/{rule_id}/actions",
            get(push_rules::get_actions).put(push_rules::set_actions),
        )
        .route("/v3/notifications", get(notifications::list))
        .route("/v3/pushers", get(pushers::list))
        .route("/v3/pushers/set", post(pushers::set))
        .route("/v3/user/{user_id}/rooms/{room_id}/tags", get(tags::get))
        .route(
            "/v3/user/{user_id}/rooms/{room_id}/tags/{tag}",
            put(tags::put).delete(tags::delete),
        )
        .route("/v3/voip/turnServer", get(not_offered::turn_server))
        .route(
            "/v3/thirdparty/protocols",
            get(not_offered::thirdparty_protocols),
        )
        .route("/v3/account/3pid", get(not_offered::threepids))
        .route(
            "/v3/user/{user_id}/account_data/{event_type}",
            get(account_data::get_global).put(account_data::put_global),
        )
        .route(
            "/v3/user/{user_id}/rooms/{room_id}/account_data/{event_type}",
            get(account_data::get_room).put(account_data::put_room),
        )
        .route("/v3/user/{user_id}/filter", post(sync::create_filter))
        .route(
            "/v3/user/{user_id}/filter/{filter_id}",
            get(sync::get_filter),
        )
        .route("/v3/createRoom", post(rooms::create))
        .route("/v3/joined_rooms", get(rooms::joined))
        .route(
            "/v3/join/{room_id_or_alias}",
            post(rooms::join_by_id_or_alias),
        )
        .route("/v3/rooms/{room_id}/join", post(rooms::join_by_id))
        .route("/v3/rooms/{room_id}/invite", post(rooms::invite))
        .route("/v3/rooms/{room_id}/leave", post(rooms::leave))
        .route("/v3/rooms/{room_id}/forget", post(rooms::forget))
        .route("/v3/rooms/{room_id}/kick", post(rooms::kick))
        .route("/v3/rooms/{room_id}/ban", post(rooms::ban))
        .route("/v3/rooms/{room_id}/unban", post(rooms::unban))
        .route(
            "/v3/rooms/{room_id}/joined_members",
            get(rooms::members_joined),
        )
        .route("/v3/rooms/{room_id}/members", get(rooms::members))
        .route(
            "/v3/rooms/{room_id}/send/{event_type}/{txn_id}",
            put(rooms::send),
        )
        .route(
            "/v3/rooms/{room_id}/redact/{event_id}/{txn_id}",
            put(rooms::redact),
        )
        .route("/v3/rooms/{room_id}/state", get(rooms::get_state))
        .route(
            "/v3/rooms/{room_id}/state/{event_type}",
            get(rooms::get_state_for_key).put(rooms::put_state),
        )
        // Clients write an empty state key as a trailing slash.
        .route(
            "/v3/rooms/{room_id}/state/{event_type}/",
            get(rooms::get_state_for_key).put(rooms::put_state),
        )
        .route(
            "/v3/rooms/{room_id}/state/{event_type}/{state_key}",
            get(rooms::get_state_for_key).put(rooms::put_state),
        )
        .route("/v3/rooms/{room_id}/event/{event_id}", get(history::event))
        .route("/v3/rooms/{room_id}/messages", get(history::messages))
        .route(
            "/v3/rooms/{room_id}/context/{event_id}",
            get(history::context),
        )
        .route(
            "/v1/rooms/{room_id}/relations/{event_id}",
            get(relations::relating_events),
        )
        .route(
            "/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
            get(relations::relating_events_with_rel_type),
        )
        .route(
            "/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations::relating_events_with_rel_type_and_event_type),
        )
        .route("/v1/rooms/{room_id}/threads", get(relations::threads))
        .route(
            "/v3/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
            post(ephemeral::receipt),
        )
        .route(
            "/v3/rooms/{room_id}/read_markers",
            post(ephemeral::read_markers),
        )
        .route(
            "/v3/rooms/{room_id}/typing/{user_id}",
            put(ephemeral::typing),
        )
        .route(
            "/v3/publicRooms",
            get(directory::public_rooms).post(directory::public_rooms_filtered),
        )
        .route(
            "/v3/directory/list/room/{room_id}",
            get(directory::get_visibility).put(directory::set_visibility),
        )
        .route("/v3/search", post(search::search))
        .route(
            "/v3/directory/room/{room_alias}",
            get(rooms::alias_get)
                .put(rooms::alias_put)
                .delete(rooms::alias_delete),
        );
    let client = client
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed);
    Router::new()
        .nest("/_matrix/client", client.clone())
        .nest_service(
            "/_matrix/client/r0",
            client.with_state(state.clone()).map_request(r0_as_v3),
        )
        .route("/health", get(versions::health))
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Serves an `r0` path (the prefix the spec replaced with `v3` in v1.1, still called by clients in
/// use: Hydrogen does for nearly everything) with the `v3` endpoint, as Synapse and Conduit do:
/// only the prefix changed between them for the endpoints both have.
fn r0_as_v3(mut request: Request) -> Request {
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(v3) = format!("/v3{path_and_query}").parse() {
        *request.uri_mut() = v3;
    }
    request
}

/// The CORS headers the spec asks of every Client-Server response, so browser clients work;
/// preflight requests are answered here.
async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    response
}

/// A ruma response as an HTTP response.
pub(crate) struct Ruma<T>(pub(crate) T);

impl<T: OutgoingResponse> IntoResponse for Ruma<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(axum::body::Body::from).into_response(),
            Err(e) => {
                // Not a MatrixError: encoding that could fail the same way.
                tracing::error!(error = %e, "could not encode a response");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}
