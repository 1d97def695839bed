//! The user's devices: list, look at, rename, delete (deleting needs the password).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use ruma::api::client::device::{
    self, delete_device, delete_devices, get_device, get_devices, update_device,
};
use ruma::{MilliSecondsSinceUnixEpoch, UInt};

use super::Ruma;
use super::account::rate_limit;
use super::error::{ApiResult, MatrixError};
use super::remote_keys;
use super::request::{Req, User};
use super::uia;
use crate::node::AppState;

fn to_ruma(device: hyphae_store::Device) -> device::Device {
    let mut out = device::Device::new(device.device_id.into());
    out.display_name = device.display_name;
    out.last_seen_ip = device.last_seen_ip;
    out.last_seen_ts = device
        .last_seen_ms
        .and_then(|ms| UInt::new(ms as u64))
        .map(MilliSecondsSinceUnixEpoch);
    out
}

pub(crate) async fn list(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<get_devices::v3::Response> {
    let devices = state.store.devices(user.localpart).await?;
    Ok(Ruma(get_devices::v3::Response::new(
        devices.into_iter().map(to_ruma).collect(),
    )))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_device::v3::Request>,
) -> ApiResult<get_device::v3::Response> {
    let device = state
        .store
        .device(user.localpart, request.device_id.to_string())
        .await?
        .ok_or_else(|| MatrixError::not_found("No such device"))?;
    Ok(Ruma(get_device::v3::Response::new(to_ruma(device))))
}

pub(crate) async fn update(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<update_device::v3::Request>,
) -> ApiResult<update_device::v3::Response> {
    // An absent display_name leaves the name as it is.
    let found = match request.display_name {
        Some(name) => {
            state
                .store
                .rename_device(user.localpart, request.device_id.to_string(), Some(name))
                .await?
        }
        None => state
            .store
            .device(user.localpart, request.device_id.to_string())
            .await?
            .is_some(),
    };
    if !found {
        return Err(MatrixError::not_found("No such device"));
    }
    Ok(Ruma(update_device::v3::Response::new()))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: User,
    Req(request): Req<delete_device::v3::Request>,
) -> ApiResult<delete_device::v3::Response> {
    rate_limit(&state, peer)?;
    uia::require_password(&state, &user, request.auth).await?;
    let found = state
        .store
        .delete_device(user.user_id.to_string(), request.device_id.to_string())
        .await?;
    if !found {
        return Err(MatrixError::not_found("No such device"));
    }
    remote_keys::announce_device(&state, &user.user_id, &request.device_id).await;
    Ok(Ruma(delete_device::v3::Response::new()))
}

pub(crate) async fn delete_many(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: User,
    Req(request): Req<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    rate_limit(&state, peer)?;
    uia::require_password(&state, &user, request.auth).await?;
    for device_id in request.devices {
        let found = state
            .store
            .delete_device(user.user_id.to_string(), device_id.to_string())
            .await?;
        if found {
            remote_keys::announce_device(&state, &user.user_id, &device_id).await;
        }
    }
    Ok(Ruma(delete_devices::v3::Response::new()))
}
