//! Who is asking: the origin server of a federation request is the server name of the libp2p
//! peer whose noise key authenticated the stream. A claimed origin that differs is refused.

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use hyphae_p2p::{PeerId, server_name_of_peer};
use ruma::OwnedServerName;

use crate::client_api::MatrixError;

/// The authenticated origin server of a federation request.
#[derive(Debug, Clone)]
pub(crate) struct Origin(pub(crate) OwnedServerName);

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = MatrixError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, MatrixError> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<PeerId>>().cloned() else {
            return Err(MatrixError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                ruma::api::error::ErrorKind::Unauthorized,
                "Federation requests are only taken over authenticated libp2p streams",
            ));
        };
        let name = server_name_of_peer(&peer)
            .map_err(|e| MatrixError::forbidden(format!("Peer without a Matrix name: {e}")))?;
        let origin = OwnedServerName::try_from(name)
            .map_err(|e| MatrixError::forbidden(format!("Peer name: {e}")))?;
        // An X-Matrix header may name an origin too; it must be the same server.
        if let Some(claimed) = x_matrix_origin(parts)
            && claimed != origin.as_str()
        {
            return Err(MatrixError::forbidden(format!(
                "Origin {claimed} is not the authenticated peer {origin}"
            )));
        }
        Ok(Origin(origin))
    }
}

fn x_matrix_origin(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let params = header.strip_prefix("X-Matrix ")?;
    params.split(',').find_map(|param| {
        let (key, value) = param.trim().split_once('=')?;
        (key == "origin").then(|| value.trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn origin_of(peer: Option<PeerId>, header: Option<&str>) -> Result<Origin, MatrixError> {
        let mut request = axum::http::Request::get("/");
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let (mut parts, _) = request.body(()).unwrap().into_parts();
        if let Some(peer) = peer {
            parts.extensions.insert(ConnectInfo(peer));
        }
        Origin::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn the_origin_is_the_authenticated_peer() {
        let dir = tempfile::tempdir().unwrap();
        let identity = hyphae_p2p::Identity::load_or_create(dir.path()).unwrap();
        let peer = identity.peer_id();
        let name = identity.server_name();

        let origin = origin_of(Some(peer), None).await.unwrap();
        assert_eq!(origin.0.as_str(), name);
        let header = format!("X-Matrix origin=\"{name}\",key=\"ed25519:p2p\",sig=\"x\"");
        assert!(origin_of(Some(peer), Some(&header)).await.is_ok());

        let other = "0".repeat(64);
        let forged = format!("X-Matrix origin=\"{other}\",key=\"ed25519:p2p\",sig=\"x\"");
        assert!(
            origin_of(Some(peer), Some(&forged)).await.is_err(),
            "a claimed origin that differs"
        );
        assert!(
            origin_of(None, None).await.is_err(),
            "no authenticated peer"
        );
    }
}
