//! User-interactive authentication. Every flow offered is a single stage, so completing that
//! stage completes the auth and no session state needs keeping; the session id is only echoed.

use ruma::api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier};
use ruma::api::error::{ErrorKind, StandardErrorBody};

use super::account::local_name;
use super::error::MatrixError;
use super::request::User;
use crate::credentials::{new_session_id, verify_password};
use crate::node::AppState;

/// A 401 offering `stage`, in the client's `session` if it sent one, with `error` saying why the
/// last attempt failed.
pub(crate) fn challenge(
    stage: AuthType,
    session: Option<String>,
    error: Option<(ErrorKind, &str)>,
) -> Result<MatrixError, MatrixError> {
    let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![stage])]);
    info.session = Some(match session {
        Some(session) => session,
        None => new_session_id()?,
    });
    info.auth_error =
        error.map(|(kind, message)| Box::new(StandardErrorBody::new(kind, message.into())));
    Ok(MatrixError::uia(info))
}

/// Requires `auth` to prove that `user` knows their password.
pub(crate) async fn require_password(
    state: &AppState,
    user: &User,
    auth: Option<AuthData>,
) -> Result<(), MatrixError> {
    let session = auth.as_ref().and_then(|a| a.session()).map(str::to_owned);
    let password = match auth {
        None => return Err(challenge(AuthType::Password, session, None)?),
        Some(AuthData::Password(password)) => password,
        Some(_) => {
            let error = (
                ErrorKind::Unrecognized,
                "Only m.login.password is offered here",
            );
            return Err(challenge(AuthType::Password, session, Some(error))?);
        }
    };
    let names_this_user = match &password.identifier {
        UserIdentifier::Matrix(id) => {
            local_name(state, &id.user).is_some_and(|name| name == user.localpart)
        }
        _ => false,
    };
    let account = state.store.account(user.localpart.clone()).await?;
    let hash = account.and_then(|a| a.password_hash);
    let verified = match hash {
        Some(hash) if names_this_user => verify_password(password.password, hash).await,
        _ => false,
    };
    if verified {
        Ok(())
    } else {
        let error = (ErrorKind::Forbidden, "Invalid password");
        Err(challenge(AuthType::Password, session, Some(error))?)
    }
}
