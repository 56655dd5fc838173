//! Looking up users by id or by name.

use im_proto::v1::{FindUserRequest, GetUserRequest, UserInfo};

use super::caller::Caller;
use super::register::validate_username;
use super::Logic;
use crate::error::LogicError;
use crate::ids::UserId;
use crate::store::pg::users::{self, Profile};

/// Returns the user with `request.user_id`.
///
/// # Errors
///
/// [`LogicError::NotFound`] for an unknown user; store errors.
pub async fn get_user(
    logic: &Logic,
    _caller: Caller,
    request: GetUserRequest,
) -> Result<UserInfo, LogicError> {
    let profile = users::profile(&logic.pg, UserId(request.user_id))
        .await?
        .ok_or(LogicError::NotFound("user"))?;
    Ok(user_info(profile))
}

/// Returns the user named `request.username`; names match case-sensitively.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a name that breaks the username rules,
/// [`LogicError::NotFound`] for an unknown user; store errors.
pub async fn find_user(
    logic: &Logic,
    _caller: Caller,
    request: FindUserRequest,
) -> Result<UserInfo, LogicError> {
    validate_username(&request.username)?;
    let profile = users::profile_by_username(&logic.pg, &request.username)
        .await?
        .ok_or(LogicError::NotFound("user"))?;
    Ok(user_info(profile))
}

fn user_info(profile: Profile) -> UserInfo {
    UserInfo {
        user_id: profile.id.0,
        username: profile.username,
        open: profile.open,
        created_at_ms: profile.created_at_ms,
    }
}
