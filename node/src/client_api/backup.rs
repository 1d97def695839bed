//! Server-side room-key backup (`room_keys/*`): versions, and the encrypted session keys in them.
//! The server never sees a key in the clear; it only keeps the best copy of each session's key.

use std::collections::BTreeMap;

use axum::extract::State;
use hyphae_store::{BackupKey, BackupWrite};
use ruma::api::client::backup::{
    self, BackupAlgorithm, KeyBackupData, RoomKeyBackup, add_backup_keys, add_backup_keys_for_room,
    add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
    get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
    get_latest_backup_info, update_backup_version,
};
use ruma::serde::Raw;
use ruma::{OwnedRoomId, UInt};
use serde_json::value::RawValue as RawJsonValue;

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;

pub(crate) async fn create_version(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<create_backup_version::v3::Request>,
) -> ApiResult<create_backup_version::v3::Response> {
    let algorithm = algorithm_json(&request.algorithm)?;
    let version = state
        .store
        .create_backup_version(user.localpart, algorithm)
        .await?;
    Ok(Ruma(create_backup_version::v3::Response::new(version)))
}

pub(crate) async fn latest_version(
    State(state): State<AppState>,
    user: User,
    Req(_): Req<get_latest_backup_info::v3::Request>,
) -> ApiResult<get_latest_backup_info::v3::Response> {
    let info = state
        .store
        .backup_version(user.localpart, None)
        .await?
        .ok_or_else(|| MatrixError::not_found("No current backup version"))?;
    Ok(Ruma(get_latest_backup_info::v3::Response::new(
        Raw::from_json(raw_json(info.algorithm)?),
        UInt::new_saturating(info.count),
        info.etag,
        info.version,
    )))
}

pub(crate) async fn get_version(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_backup_info::v3::Request>,
) -> ApiResult<get_backup_info::v3::Response> {
    let info = state
        .store
        .backup_version(user.localpart, Some(request.version))
        .await?
        .ok_or_else(unknown_version)?;
    Ok(Ruma(get_backup_info::v3::Response::new(
        Raw::from_json(raw_json(info.algorithm)?),
        UInt::new_saturating(info.count),
        info.etag,
        info.version,
    )))
}

pub(crate) async fn update_version(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<update_backup_version::v3::Request>,
) -> ApiResult<update_backup_version::v3::Response> {
    #[derive(serde::Deserialize)]
    struct Body {
        version: Option<String>,
    }
    let body: Body = request
        .algorithm
        .deserialize_as_unchecked()
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if body.version.is_some_and(|v| v != request.version) {
        return Err(MatrixError::invalid_param(
            "The version in the body must be the one in the path",
        ));
    }
    let algorithm = algorithm_json(&request.algorithm)?;
    let stored = state
        .store
        .backup_version(user.localpart.clone(), Some(request.version.clone()))
        .await?
        .ok_or_else(unknown_version)?;
    if algorithm_name(&stored.algorithm) != algorithm_name(&algorithm) {
        return Err(MatrixError::invalid_param(
            "A backup version's algorithm cannot change",
        ));
    }
    let found = state
        .store
        .update_backup_version(user.localpart, request.version, algorithm)
        .await?;
    if !found {
        return Err(unknown_version());
    }
    Ok(Ruma(update_backup_version::v3::Response::new()))
}

pub(crate) async fn delete_version(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_backup_version::v3::Request>,
) -> ApiResult<delete_backup_version::v3::Response> {
    let found = state
        .store
        .delete_backup_version(user.localpart, request.version)
        .await?;
    if !found {
        return Err(unknown_version());
    }
    Ok(Ruma(delete_backup_version::v3::Response::new()))
}

pub(crate) async fn put_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<add_backup_keys::v3::Request>,
) -> ApiResult<add_backup_keys::v3::Response> {
    let mut keys = Vec::new();
    for (room_id, room) in request.rooms {
        for (session_id, data) in room.sessions {
            keys.push(backup_key(&room_id, session_id, &data)?);
        }
    }
    let (count, etag) = written(
        state
            .store
            .put_backup_keys(user.localpart, request.version, keys)
            .await?,
    )?;
    Ok(Ruma(add_backup_keys::v3::Response::new(etag, count)))
}

pub(crate) async fn put_room_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<add_backup_keys_for_room::v3::Response> {
    let keys = request
        .sessions
        .into_iter()
        .map(|(session_id, data)| backup_key(&request.room_id, session_id, &data))
        .collect::<Result<_, _>>()?;
    let (count, etag) = written(
        state
            .store
            .put_backup_keys(user.localpart, request.version, keys)
            .await?,
    )?;
    Ok(Ruma(add_backup_keys_for_room::v3::Response::new(
        etag, count,
    )))
}

pub(crate) async fn put_session_key(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<add_backup_keys_for_session::v3::Response> {
    let key = backup_key(&request.room_id, request.session_id, &request.session_data)?;
    let (count, etag) = written(
        state
            .store
            .put_backup_keys(user.localpart, request.version, vec![key])
            .await?,
    )?;
    Ok(Ruma(add_backup_keys_for_session::v3::Response::new(
        etag, count,
    )))
}

pub(crate) async fn get_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_backup_keys::v3::Request>,
) -> ApiResult<get_backup_keys::v3::Response> {
    let keys = state
        .store
        .backup_keys(user.localpart, request.version, None, None)
        .await?
        .ok_or_else(unknown_version)?;
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for key in keys {
        let Ok(room_id) = OwnedRoomId::try_from(key.room_id) else {
            continue;
        };
        rooms
            .entry(room_id)
            .or_default()
            .insert(key.session_id, Raw::from_json(raw_json(key.data)?));
    }
    let rooms = rooms
        .into_iter()
        .map(|(room_id, sessions)| (room_id, RoomKeyBackup::new(sessions)))
        .collect();
    Ok(Ruma(get_backup_keys::v3::Response::new(rooms)))
}

pub(crate) async fn get_room_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<get_backup_keys_for_room::v3::Response> {
    let keys = state
        .store
        .backup_keys(
            user.localpart,
            request.version,
            Some(request.room_id.to_string()),
            None,
        )
        .await?
        .ok_or_else(unknown_version)?;
    let sessions = keys
        .into_iter()
        .map(|key| Ok((key.session_id, Raw::from_json(raw_json(key.data)?))))
        .collect::<Result<_, MatrixError>>()?;
    Ok(Ruma(get_backup_keys_for_room::v3::Response::new(sessions)))
}

pub(crate) async fn get_session_key(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<get_backup_keys_for_session::v3::Response> {
    let key = state
        .store
        .backup_keys(
            user.localpart,
            request.version,
            Some(request.room_id.to_string()),
            Some(request.session_id),
        )
        .await?
        .ok_or_else(unknown_version)?
        .pop()
        .ok_or_else(|| MatrixError::not_found("No key backed up for this session"))?;
    Ok(Ruma(get_backup_keys_for_session::v3::Response::new(
        Raw::from_json(raw_json(key.data)?),
    )))
}

pub(crate) async fn delete_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_backup_keys::v3::Request>,
) -> ApiResult<delete_backup_keys::v3::Response> {
    let (count, etag) = written(
        state
            .store
            .delete_backup_keys(user.localpart, request.version, None, None)
            .await?,
    )?;
    Ok(Ruma(delete_backup_keys::v3::Response::new(etag, count)))
}

pub(crate) async fn delete_room_keys(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<delete_backup_keys_for_room::v3::Response> {
    let (count, etag) = written(
        state
            .store
            .delete_backup_keys(
                user.localpart,
                request.version,
                Some(request.room_id.to_string()),
                None,
            )
            .await?,
    )?;
    Ok(Ruma(delete_backup_keys_for_room::v3::Response::new(
        etag, count,
    )))
}

pub(crate) async fn delete_session_key(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<delete_backup_keys_for_session::v3::Response> {
    let (count, etag) = written(
        state
            .store
            .delete_backup_keys(
                user.localpart,
                request.version,
                Some(request.room_id.to_string()),
                Some(request.session_id),
            )
            .await?,
    )?;
    Ok(Ruma(delete_backup_keys_for_session::v3::Response::new(
        etag, count,
    )))
}

fn unknown_version() -> MatrixError {
    MatrixError::not_found("Unknown backup version")
}

/// The count and etag after a write, or the error for a version that does not take keys.
fn written(result: BackupWrite) -> Result<(UInt, String), MatrixError> {
    match result {
        BackupWrite::Done { count, etag } => Ok((UInt::new_saturating(count), etag)),
        BackupWrite::UnknownVersion => Err(unknown_version()),
        BackupWrite::NotCurrent { current } => Err(MatrixError::wrong_room_keys_version(current)),
    }
}

/// `{"algorithm", "auth_data"}` of a version, checked, as the JSON to keep.
fn algorithm_json(raw: &Raw<BackupAlgorithm>) -> Result<String, MatrixError> {
    let algorithm = raw
        .deserialize()
        .map_err(|e| MatrixError::bad_json(format!("Invalid backup algorithm: {e}")))?;
    serde_json::to_string(&serde_json::json!({
        "algorithm": algorithm.algorithm(),
        "auth_data": algorithm.auth_data(),
    }))
    .map_err(|e| MatrixError::unknown(e.to_string()))
}

fn algorithm_name(json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()?
        .get("algorithm")?
        .as_str()
        .map(str::to_owned)
}

fn backup_key(
    room_id: &OwnedRoomId,
    session_id: String,
    raw: &Raw<KeyBackupData>,
) -> Result<BackupKey, MatrixError> {
    let data: backup::KeyBackupData = raw
        .deserialize()
        .map_err(|e| MatrixError::bad_json(format!("Invalid key for session {session_id}: {e}")))?;
    Ok(BackupKey {
        room_id: room_id.to_string(),
        session_id,
        first_message_index: data.first_message_index.into(),
        forwarded_count: data.forwarded_count.into(),
        is_verified: data.is_verified,
        data: raw.json().get().to_owned(),
    })
}

fn raw_json(json: String) -> Result<Box<RawJsonValue>, MatrixError> {
    RawJsonValue::from_string(json).map_err(|e| MatrixError::unknown(e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::test_support::Api;

    const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
    const ROOM: &str = "%21room%3Aexample";
    const OTHER_ROOM: &str = "%21other%3Aexample";

    fn version_body(public_key: &str) -> Value {
        json!({"algorithm": ALGORITHM, "auth_data": {"public_key": public_key, "signatures": {}}})
    }

    fn session(verified: bool, first_index: u64, forwarded: u64, ciphertext: &str) -> Value {
        json!({
            "first_message_index": first_index,
            "forwarded_count": forwarded,
            "is_verified": verified,
            "session_data": {"ephemeral": "ZXBo", "ciphertext": ciphertext, "mac": "bWFj"},
        })
    }

    #[tokio::test]
    async fn backup_versions_are_created_read_updated_and_deleted() {
        let api = Api::start().await;
        let (_, token, _) = api.register("alice", "password").await;
        let token = Some(token.as_str());

        let (status, body) = api.get("/v3/room_keys/version", token).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );

        let (status, body) = api
            .post("/v3/room_keys/version", token, version_body("a2V5MQ"))
            .await;
        assert_eq!(status, 200, "{body}");
        let version = body["version"].as_str().unwrap().to_owned();
        for path in [
            "/v3/room_keys/version".to_owned(),
            format!("/v3/room_keys/version/{version}"),
        ] {
            let (status, body) = api.get(&path, token).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["algorithm"], ALGORITHM);
            assert_eq!(body["auth_data"]["public_key"], "a2V5MQ");
            assert_eq!(
                (body["count"].as_u64(), body["version"].as_str()),
                (Some(0), Some(version.as_str()))
            );
            assert!(body["etag"].is_string());
        }

        let path = format!("/v3/room_keys/version/{version}");
        let (status, _) = api.put(&path, token, version_body("a2V5Mg")).await;
        assert_eq!(status, 200);
        assert_eq!(
            api.get(&path, token).await.1["auth_data"]["public_key"],
            "a2V5Mg"
        );
        let mut mismatched = version_body("a2V5Mw");
        mismatched["version"] = json!("999");
        assert_eq!(api.put(&path, token, mismatched).await.0, 400);
        let other_algorithm = json!({"algorithm": "org.example.other", "auth_data": {}});
        assert_eq!(api.put(&path, token, other_algorithm).await.0, 400);
        let (status, body) = api
            .put("/v3/room_keys/version/999", token, version_body("a2V5Mw"))
            .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );

        let delete = || api.call(reqwest::Method::DELETE, &path, token, None);
        assert_eq!(delete().await.0, 200);
        assert_eq!(api.get("/v3/room_keys/version", token).await.0, 404);
        assert_eq!(api.get(&path, token).await.0, 404);
        assert_eq!(delete().await.0, 404);
        // Another user sees none of Alice's backups.
        let (_, bob_token, _) = api.register("bob", "password").await;
        let (status, body) = api
            .post("/v3/room_keys/version", token, version_body("a2V5NA"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            api.get("/v3/room_keys/version", Some(&bob_token)).await.0,
            404
        );
    }

    #[tokio::test]
    async fn backup_keys_at_every_level() {
        let api = Api::start().await;
        let (_, token, _) = api.register("alice", "password").await;
        let token = Some(token.as_str());
        let (_, body) = api
            .post("/v3/room_keys/version", token, version_body("a2V5MQ"))
            .await;
        let v = body["version"].as_str().unwrap().to_owned();
        let keys = |path: &str| format!("/v3/room_keys/keys{path}?version={v}");

        // One session, one room, then everything.
        let (status, body) = api
            .put(
                &keys(&format!("/{ROOM}/s1")),
                token,
                session(false, 5, 1, "b25l"),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 1);
        let (status, body) = api
            .put(
                &keys(&format!("/{ROOM}")),
                token,
                json!({"sessions": {"s2": session(false, 0, 0, "dHdv")}}),
            )
            .await;
        assert_eq!((status, &body["count"]), (200, &json!(2)), "{body}");
        let (status, body) = api
            .put(
                &keys(""),
                token,
                json!({"rooms": {"!other:example": {"sessions": {"s3": session(true, 0, 0, "dGhyZWU")}}}}),
            )
            .await;
        assert_eq!((status, &body["count"]), (200, &json!(3)), "{body}");

        let (status, body) = api.get(&keys(""), token).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["rooms"]["!room:example"]["sessions"]["s1"]["session_data"]["ciphertext"],
            "b25l"
        );
        assert_eq!(
            body["rooms"]["!other:example"]["sessions"]["s3"]["is_verified"],
            true
        );
        let (_, body) = api.get(&keys(&format!("/{ROOM}")), token).await;
        assert_eq!(body["sessions"].as_object().unwrap().len(), 2);
        let (status, body) = api.get(&keys(&format!("/{ROOM}/s2")), token).await;
        assert_eq!(status, 200);
        assert_eq!(body["session_data"]["ciphertext"], "dHdv");

        // A worse key for s1 is ignored, a better one replaces it.
        let session_path = keys(&format!("/{ROOM}/s1"));
        let (_, before) = api.get("/v3/room_keys/version", token).await;
        api.put(&session_path, token, session(false, 6, 0, "d29yc2U"))
            .await;
        assert_eq!(
            api.get(&session_path, token).await.1["session_data"]["ciphertext"],
            "b25l"
        );
        api.put(&session_path, token, session(false, 5, 0, "YmV0dGVy"))
            .await;
        assert_eq!(
            api.get(&session_path, token).await.1["session_data"]["ciphertext"],
            "YmV0dGVy"
        );
        let (_, info) = api.get("/v3/room_keys/version", token).await;
        assert_eq!(info["count"], 3);
        assert!(info["etag"].is_string());
        assert_ne!(
            info["etag"], before["etag"],
            "the better key changed the backup"
        );

        // Deleting: a session, a room, everything.
        let api = &api;
        let delete = |path: String| async move {
            api.call(reqwest::Method::DELETE, &path, token, None).await
        };
        let (status, body) = delete(session_path.clone()).await;
        assert_eq!((status, &body["count"]), (200, &json!(2)), "{body}");
        let (status, body) = api.get(&session_path, token).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );
        let (_, body) = delete(keys(&format!("/{OTHER_ROOM}"))).await;
        assert_eq!(body["count"], 1);
        let (_, body) = delete(keys("")).await;
        assert_eq!(body["count"], 0);
        assert_eq!(api.get(&keys(""), token).await.1["rooms"], json!({}));
        let (status, _) = api.get("/v3/room_keys/keys?version=42", token).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn keys_go_only_into_the_current_version() {
        let api = Api::start().await;
        let (_, token, _) = api.register("alice", "password").await;
        let token = Some(token.as_str());
        for _ in 0..2 {
            api.post("/v3/room_keys/version", token, version_body("a2V5MQ"))
                .await;
        }
        let (_, info) = api.get("/v3/room_keys/version", token).await;
        let current = info["version"].as_str().unwrap().to_owned();
        assert_eq!(current, "2");
        let api = &api;
        let put = |version: &'static str| async move {
            api.put(
                &format!("/v3/room_keys/keys/{ROOM}/s1?version={version}"),
                token,
                session(false, 0, 0, "b25l"),
            )
            .await
        };
        let (status, body) = put("1").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_WRONG_ROOM_KEYS_VERSION")),
            "{body}"
        );
        assert_eq!(body["current_version"], "2");
        let (status, body) = put("7").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_NOT_FOUND"))
        );
        assert_eq!(put("2").await.0, 200);
        // The old version can still be read.
        let (status, body) = api.get("/v3/room_keys/keys?version=1", token).await;
        assert_eq!((status, &body["rooms"]), (200, &json!({})));
    }
}
