//! The shape of a `/sync` body as clients validate it. ruma leaves out every empty list, but
//! clients such as matrix-nio check each response against a schema in which a room's
//! `timeline`, `state`, `ephemeral` and `account_data` always hold `events`: a left room sent as
//! `{}` made nio throw the whole response away. So every section a client may read is written
//! out, empty or not.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ruma::api::OutgoingResponseExt;
use ruma::api::client::sync::sync_events::v3 as sync;
use serde_json::{Map, Value};

/// A `/sync` response with every section present.
pub(crate) struct SyncBody(pub(crate) sync::Response);

impl IntoResponse for SyncBody {
    fn into_response(self) -> Response {
        let encoded = self
            .0
            .try_into_http_response::<Vec<u8>>()
            .map_err(|e| e.to_string())
            .and_then(|response| {
                let mut body: Value =
                    serde_json::from_slice(response.body()).map_err(|e| e.to_string())?;
                complete(&mut body);
                serde_json::to_vec(&body).map_err(|e| e.to_string())
            });
        match encoded {
            Ok(body) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not encode a sync response");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// Sections of a joined room, of a left room, and of the response itself.
const JOINED: [&str; 4] = ["timeline", "state", "ephemeral", "account_data"];
const LEFT: [&str; 3] = ["timeline", "state", "account_data"];
const TOP: [&str; 3] = ["account_data", "presence", "to_device"];

/// Adds the empty `events` (and the empty room groups) that ruma left out.
pub(crate) fn complete(body: &mut Value) {
    let Some(body) = body.as_object_mut() else {
        return;
    };
    for section in TOP {
        with_events(object(body, section));
    }
    let device_lists = object(body, "device_lists");
    for list in ["changed", "left"] {
        device_lists
            .entry(list)
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    let rooms = object(body, "rooms");
    for (group, sections) in [
        ("join", &JOINED[..]),
        ("leave", &LEFT[..]),
        ("invite", &["invite_state"][..]),
        ("knock", &["knock_state"][..]),
    ] {
        for room in object(rooms, group).values_mut() {
            let Some(room) = room.as_object_mut() else {
                continue;
            };
            for section in sections {
                with_events(object(room, section));
            }
        }
    }
}

/// The object under `key`, made empty if it was missing.
fn object<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let value = parent
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object above"),
    }
}

fn with_events(section: &mut Map<String, Value>) {
    section
        .entry("events")
        .or_insert_with(|| Value::Array(Vec::new()));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::complete;

    #[test]
    fn every_section_a_client_reads_carries_events() {
        let mut body = json!({
            "next_batch": "s3_t0",
            "rooms": {
                "join": {"!a:x": {"timeline": {"prev_batch": "s1", "limited": true}}},
                "leave": {"!b:x": {}},
                "invite": {"!c:x": {}},
            },
        });
        complete(&mut body);
        assert_eq!(
            body["rooms"]["join"]["!a:x"]["timeline"]["events"],
            json!([])
        );
        assert_eq!(body["rooms"]["join"]["!a:x"]["timeline"]["limited"], true);
        for section in ["state", "ephemeral", "account_data"] {
            assert_eq!(body["rooms"]["join"]["!a:x"][section]["events"], json!([]));
        }
        for section in ["timeline", "state", "account_data"] {
            assert_eq!(body["rooms"]["leave"]["!b:x"][section]["events"], json!([]));
        }
        assert_eq!(
            body["rooms"]["invite"]["!c:x"]["invite_state"]["events"],
            json!([])
        );
        for section in ["account_data", "presence", "to_device"] {
            assert_eq!(body[section]["events"], json!([]));
        }
        assert_eq!(body["device_lists"]["changed"], json!([]));
        assert_eq!(body["rooms"]["knock"], json!({}));
    }
}
