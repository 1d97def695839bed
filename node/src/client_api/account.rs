//! Accounts and sessions: register, login, logout, whoami, password change.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use ruma::api::client::account::register::RegistrationKind;
use ruma::api::client::account::{change_password, get_username_availability, register, whoami};
use ruma::api::client::session::get_login_types::v3::{LoginType, PasswordLoginType};
use ruma::api::client::session::{get_login_types, login, logout, logout_all};
use ruma::api::client::uiaa::{AuthData, AuthType, UserIdentifier};
use ruma::api::error::ErrorKind;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::remote_keys;
use super::request::{Req, User};
use super::uia;
use crate::config::Registration;
use crate::credentials::{
    decoy_hash, hash_password, new_access_token, new_device_id, token_hash, verify_password,
};
use crate::node::AppState;
use hyphae_store::{NewDevice, StoreError};

/// Longer passwords are refused rather than hashed: argon2 cost grows with the input.
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

pub(crate) async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Req(request): Req<register::v3::Request>,
) -> ApiResult<register::v3::Response> {
    rate_limit(&state, peer)?;
    check_registration_allowed(&state, &headers)?;
    if request.kind == RegistrationKind::Guest {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::GuestAccessForbidden,
            "Guest accounts are not offered here",
        ));
    }
    let localpart = match &request.username {
        Some(username) => {
            let localpart = valid_localpart(&state, username)?;
            if state.store.account(localpart.clone()).await?.is_some() {
                return Err(user_in_use());
            }
            localpart
        }
        None => format!("user_{}", new_device_id()?.to_lowercase()),
    };
    check_password_size(request.password.as_deref())?;
    check_registration_auth(&state, request.auth)?;

    let password_hash = match request.password {
        Some(password) => Some(hash_password(password).await?),
        None => None,
    };
    state
        .store
        .create_account(localpart.clone(), password_hash)
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists(_) => user_in_use(),
            e => e.into(),
        })?;
    let user_id = user_id(&state, &localpart)?;
    tracing::info!(%user_id, "account registered");
    let mut response = register::v3::Response::new(user_id);
    if !request.inhibit_login {
        let (device_id, access_token) = log_in_device(
            &state,
            &localpart,
            request.device_id,
            request.initial_device_display_name,
        )
        .await?;
        response.device_id = Some(device_id);
        response.access_token = Some(access_token);
    }
    Ok(Ruma(response))
}

/// Refuses before anything else (even telling whether a name is taken) when nobody may register
/// from where this request comes.
fn check_registration_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), MatrixError> {
    match &*state.registration {
        Registration::Closed => Err(MatrixError::forbidden(
            "Registration on this node needs a registration token, and none is set",
        )),
        Registration::Loopback if headers.contains_key(header::ORIGIN) => {
            Err(MatrixError::forbidden(
                "Registering from a web page needs the node started with --open-registration",
            ))
        }
        _ => Ok(()),
    }
}

fn check_registration_auth(state: &AppState, auth: Option<AuthData>) -> Result<(), MatrixError> {
    let session = auth.as_ref().and_then(|a| a.session()).map(str::to_owned);
    match (&*state.registration, auth) {
        (Registration::Closed, _) => Err(MatrixError::forbidden(
            "Registration on this node needs a registration token, and none is set",
        )),
        (Registration::Open | Registration::Loopback, Some(AuthData::Dummy(_))) => Ok(()),
        (Registration::Open | Registration::Loopback, _) => {
            Err(uia::challenge(AuthType::Dummy, session, None)?)
        }
        (Registration::Token(tokens), Some(AuthData::RegistrationToken(given))) => {
            if tokens.contains(&given.token) {
                Ok(())
            } else {
                Err(uia::challenge(
                    AuthType::RegistrationToken,
                    session,
                    Some((ErrorKind::Forbidden, "Invalid registration token")),
                )?)
            }
        }
        (Registration::Token(_), _) => {
            Err(uia::challenge(AuthType::RegistrationToken, session, None)?)
        }
    }
}

pub(crate) async fn username_available(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Req(request): Req<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    rate_limit(&state, peer)?;
    check_registration_allowed(&state, &headers)?;
    let localpart = valid_localpart(&state, &request.username)?;
    if state.store.account(localpart).await?.is_some() {
        return Err(user_in_use());
    }
    Ok(Ruma(get_username_availability::v3::Response::new(true)))
}

/// Only what a client can use: passwords. Login tokens are minted for the embedding app alone
/// (`Node::login_token`), which does not ask; no client can obtain one, so none is offered.
pub(crate) async fn login_types() -> Ruma<get_login_types::v3::Response> {
    Ruma(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
    ]))
}

pub(crate) async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Req(request): Req<login::v3::Request>,
) -> ApiResult<login::v3::Response> {
    rate_limit(&state, peer)?;
    let password = match request.login_info {
        login::v3::LoginInfo::Password(password) => password,
        login::v3::LoginInfo::Token(token) => {
            let localpart = state
                .login_tokens
                .redeem(&token.token)
                .ok_or_else(|| MatrixError::forbidden("Invalid or expired login token"))?;
            return finish_login(
                &state,
                localpart,
                request.device_id,
                request.initial_device_display_name,
            )
            .await;
        }
        _ => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                "Unsupported login type; this node offers m.login.password and m.login.token",
            ));
        }
    };
    #[allow(deprecated)] // `user` is deprecated, but older clients still send it.
    let name = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => {
            return Err(MatrixError::bad_json("Log in with an m.id.user identifier"));
        }
    };
    let refused = || MatrixError::forbidden("Invalid username or password");
    let localpart = local_name(&state, &name).ok_or_else(refused)?;
    check_password_size(Some(&password.password))?;
    let account = state.store.account(localpart.clone()).await?;
    let hash = account.as_ref().and_then(|a| a.password_hash.clone());
    // Without an account, still spend the time of a check: timing must not tell who exists.
    let matches = verify_password(password.password, hash.clone().unwrap_or_else(decoy_hash)).await;
    if !(matches && hash.is_some()) {
        return Err(refused());
    }
    finish_login(
        &state,
        localpart,
        request.device_id,
        request.initial_device_display_name,
    )
    .await
}

/// Logs an authenticated account in on a (new or named) device.
async fn finish_login(
    state: &AppState,
    localpart: String,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<String>,
) -> ApiResult<login::v3::Response> {
    let account = state.store.account(localpart.clone()).await?;
    if account.is_none_or(|a| a.deactivated) {
        return Err(MatrixError::new(
            StatusCode::FORBIDDEN,
            ErrorKind::UserDeactivated,
            "This account is deactivated",
        ));
    }
    let (device_id, access_token) =
        log_in_device(state, &localpart, device_id, display_name).await?;
    let user_id = user_id(state, &localpart)?;
    tracing::info!(%user_id, %device_id, "logged in");
    Ok(Ruma(login::v3::Response::new(
        user_id,
        access_token,
        device_id,
    )))
}

pub(crate) async fn logout(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<logout::v3::Response> {
    let found = state
        .store
        .delete_device(user.user_id.to_string(), user.device_id.to_string())
        .await?;
    if found {
        remote_keys::announce_device(&state, &user.user_id, &user.device_id).await;
    }
    Ok(Ruma(logout::v3::Response::new()))
}

pub(crate) async fn logout_all(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<logout_all::v3::Response> {
    delete_devices_except(&state, &user, None).await?;
    Ok(Ruma(logout_all::v3::Response::new()))
}

pub(crate) async fn whoami(user: User) -> Ruma<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(user.user_id, false);
    response.device_id = Some(user.device_id);
    Ruma(response)
}

pub(crate) async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: User,
    Req(request): Req<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    rate_limit(&state, peer)?;
    check_password_size(Some(&request.new_password))?;
    uia::require_password(&state, &user, request.auth).await?;
    let hash = hash_password(request.new_password).await?;
    state
        .store
        .set_password_hash(user.localpart.clone(), hash)
        .await?;
    if request.logout_devices {
        delete_devices_except(&state, &user, Some(&user.device_id)).await?;
    }
    Ok(Ruma(change_password::v3::Response::new()))
}

/// Deletes all of the user's devices but `keep`, and tells the servers that share a room with
/// the user that they are gone.
async fn delete_devices_except(
    state: &AppState,
    user: &User,
    keep: Option<&DeviceId>,
) -> Result<(), MatrixError> {
    let devices = state.store.devices(user.localpart.clone()).await?;
    state
        .store
        .delete_devices_except(user.user_id.to_string(), keep.map(ToString::to_string))
        .await?;
    for device in devices {
        let device_id = OwnedDeviceId::from(device.device_id);
        if Some(&*device_id) != keep {
            remote_keys::announce_device(state, &user.user_id, &device_id).await;
        }
    }
    Ok(())
}

/// Creates the device (or re-logs-in an existing device id) with a fresh access token.
async fn log_in_device(
    state: &AppState,
    localpart: &str,
    device_id: Option<OwnedDeviceId>,
    display_name: Option<String>,
) -> Result<(OwnedDeviceId, String), MatrixError> {
    let device_id = match device_id {
        Some(id) => id,
        None => new_device_id()?.into(),
    };
    let access_token = new_access_token()?;
    state
        .store
        .login_device(NewDevice {
            localpart: localpart.to_owned(),
            device_id: device_id.to_string(),
            display_name,
            token_hash: token_hash(&access_token),
        })
        .await?;
    Ok((device_id, access_token))
}

pub(crate) fn rate_limit(state: &AppState, peer: SocketAddr) -> Result<(), MatrixError> {
    state
        .limiter
        .check(peer.ip())
        .map_err(MatrixError::limit_exceeded)
}

fn check_password_size(password: Option<&str>) -> Result<(), MatrixError> {
    match password {
        Some(p) if p.len() > MAX_PASSWORD_BYTES => Err(MatrixError::invalid_param(format!(
            "Passwords are limited to {MAX_PASSWORD_BYTES} bytes"
        ))),
        _ => Ok(()),
    }
}

fn user_in_use() -> MatrixError {
    MatrixError::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::UserInUse,
        "This user id is taken",
    )
}

/// A requested username as a localpart: lower-cased, and only the characters the spec allows
/// for new user ids.
fn valid_localpart(state: &AppState, username: &str) -> Result<String, MatrixError> {
    let localpart = username.to_lowercase();
    let allowed = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+');
    let invalid = |why: &str| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidUsername,
            format!("Invalid username {username:?}: {why}"),
        )
    };
    if localpart.is_empty() || !localpart.chars().all(allowed) {
        return Err(invalid("use only a-z, 0-9 and . _ = - / +"));
    }
    // The node's own accounts (its policy subscriptions' service account).
    if localpart.starts_with("_hyphae") {
        return Err(invalid("names starting with _hyphae are the node's own"));
    }
    // @ + localpart + : + server name must fit in 255 bytes.
    if localpart.len() + state.server_name.as_str().len() + 2 > 255 {
        return Err(invalid("too long"));
    }
    Ok(localpart)
}

/// The localpart named by `name` (a bare localpart or a full user id on this server).
pub(crate) fn local_name(state: &AppState, name: &str) -> Option<String> {
    if name.starts_with('@') {
        let user_id = UserId::parse(name).ok()?;
        (user_id.server_name() == state.server_name).then(|| user_id.localpart().to_lowercase())
    } else {
        Some(name.to_lowercase())
    }
}

fn user_id(state: &AppState, localpart: &str) -> Result<OwnedUserId, MatrixError> {
    UserId::parse_with_server_name(localpart, &state.server_name)
        .map_err(|e| MatrixError::unknown(format!("bad user id: {e}")))
}
