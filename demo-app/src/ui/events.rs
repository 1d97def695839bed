//! Live updates for the page: the owner's client's events (`AppClient::subscribe`) as
//! server-sent events on `/app/api/events`, one JSON object per message, tagged by `type`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::sync::{broadcast, watch};

use super::{Ui, error};

/// Often enough that proxies and browsers keep the connection, rarely enough to cost nothing.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

pub(super) async fn stream(State(ui): State<Ui>) -> Response {
    let Some(ready) = ui.ready() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "starting up");
    };
    let events = ready.app.subscribe();
    Sse::new(updates(events, ui.stopping()))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Each event as it comes; `{"type":"resync"}` when some were missed (the page reloads what it
/// shows), and the end when the node stops.
fn updates(
    events: broadcast::Receiver<hyphae_node::app::AppEvent>,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (events, stopping),
        |(mut events, mut stopping)| async move {
            loop {
                if *stopping.borrow() {
                    return None;
                }
                let next = tokio::select! {
                    next = events.recv() => next,
                    // Stopping, or the UI is gone: both end the stream.
                    _ = stopping.changed() => return None,
                };
                let data = match next {
                    Ok(event) => match serde_json::to_string(&event) {
                        Ok(data) => data,
                        Err(e) => {
                            tracing::warn!(error = %e, "an app event did not serialise");
                            continue;
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "the page fell behind the app's events");
                        r#"{"type":"resync"}"#.to_owned()
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(Event::default().data(data)), (events, stopping)));
            }
        },
    )
}
