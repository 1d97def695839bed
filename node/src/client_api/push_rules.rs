//! Push rules over the Client-Server API: the user's own rules, read whole or one at a time,
//! and changed one at a time (`/pushrules/global/{kind}/{ruleId}`, its `enabled` and
//! `actions`). They are kept as `m.push_rules` account data (`crate::push`).

use axum::extract::State;
use ruma::api::client::push::{
    PushRule, delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
    get_pushrules_all, get_pushrules_global_scope, set_pushrule, set_pushrule_actions,
    set_pushrule_enabled,
};
use ruma::push::{InsertPushRuleError, RemovePushRuleError, RuleKind, Ruleset};

use super::Ruma;
use super::error::{ApiResult, MatrixError};
use super::request::{Req, User};
use crate::node::AppState;
use crate::push::{update_ruleset, user_ruleset};

/// User-defined rules a user may keep: each one is matched against every event they see.
const MAX_USER_RULES: usize = 500;

pub(crate) async fn get_all(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<get_pushrules_all::v3::Response> {
    let ruleset = user_ruleset(&state.store, &user.user_id).await?;
    Ok(Ruma(get_pushrules_all::v3::Response::new(ruleset)))
}

pub(crate) async fn get_global(
    State(state): State<AppState>,
    user: User,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    let ruleset = user_ruleset(&state.store, &user.user_id).await?;
    Ok(Ruma(get_pushrules_global_scope::v3::Response::new(ruleset)))
}

fn no_such_rule() -> MatrixError {
    MatrixError::not_found("No such push rule")
}

/// The user's rule of this kind and id, as the API shows it.
async fn rule(
    state: &AppState,
    user: &User,
    kind: RuleKind,
    rule_id: &str,
) -> Result<PushRule, MatrixError> {
    let ruleset = user_ruleset(&state.store, &user.user_id).await?;
    ruleset
        .get(kind, rule_id)
        .map(PushRule::from)
        .ok_or_else(no_such_rule)
}

pub(crate) async fn get_rule(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_pushrule::v3::Request>,
) -> ApiResult<get_pushrule::v3::Response> {
    let rule = rule(&state, &user, request.kind, &request.rule_id).await?;
    Ok(Ruma(get_pushrule::v3::Response::new(rule)))
}

pub(crate) async fn get_enabled(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let rule = rule(&state, &user, request.kind, &request.rule_id).await?;
    Ok(Ruma(get_pushrule_enabled::v3::Response::new(rule.enabled)))
}

pub(crate) async fn get_actions(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let rule = rule(&state, &user, request.kind, &request.rule_id).await?;
    Ok(Ruma(get_pushrule_actions::v3::Response::new(rule.actions)))
}

fn user_rules(ruleset: &Ruleset) -> usize {
    ruleset
        .iter()
        .filter(|rule| !rule.is_server_default())
        .count()
}

pub(crate) async fn set_rule(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_pushrule::v3::Request>,
) -> ApiResult<set_pushrule::v3::Response> {
    let set_pushrule::v3::Request {
        rule,
        before,
        after,
        ..
    } = request;
    update_ruleset(&state.store, &user.user_id, move |ruleset| {
        let new = ruleset.get(rule.kind(), rule.rule_id()).is_none();
        if new && user_rules(ruleset) >= MAX_USER_RULES {
            return Err(MatrixError::invalid_param(format!(
                "A user keeps at most {MAX_USER_RULES} push rules of their own"
            )));
        }
        ruleset
            .insert(rule, after.as_deref(), before.as_deref())
            .map_err(|e| match e {
                InsertPushRuleError::UnknownRuleId => {
                    MatrixError::invalid_param("The `before` or `after` rule does not exist")
                }
                e => MatrixError::invalid_param(e.to_string()),
            })
    })
    .await??;
    Ok(Ruma(set_pushrule::v3::Response::new()))
}

pub(crate) async fn delete_rule(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<delete_pushrule::v3::Request>,
) -> ApiResult<delete_pushrule::v3::Response> {
    update_ruleset(&state.store, &user.user_id, move |ruleset| {
        ruleset
            .remove(request.kind, &request.rule_id)
            .map_err(|e| match e {
                RemovePushRuleError::ServerDefault => MatrixError::invalid_param(
                    "Server-default push rules cannot be deleted; disable it instead",
                ),
                _ => no_such_rule(),
            })
    })
    .await??;
    Ok(Ruma(delete_pushrule::v3::Response::new()))
}

pub(crate) async fn set_enabled(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    update_ruleset(&state.store, &user.user_id, move |ruleset| {
        ruleset
            .set_enabled(request.kind, &request.rule_id, request.enabled)
            .map_err(|_| no_such_rule())
    })
    .await??;
    Ok(Ruma(set_pushrule_enabled::v3::Response::new()))
}

pub(crate) async fn set_actions(
    State(state): State<AppState>,
    user: User,
    Req(request): Req<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    update_ruleset(&state.store, &user.user_id, move |ruleset| {
        ruleset
            .set_actions(request.kind, &request.rule_id, request.actions)
            .map_err(|_| no_such_rule())
    })
    .await??;
    Ok(Ruma(set_pushrule_actions::v3::Response::new()))
}
