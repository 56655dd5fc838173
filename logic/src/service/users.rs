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
/// [`LogicError::InvalidArgument`] for user 0, [`LogicError::NotFound`] for an unknown user;
/// store errors.
pub async fn get_user(
    logic: &Logic,
    _caller: Caller,
    request: GetUserRequest,
) -> Result<UserInfo, LogicError> {
    if request.user_id == 0 {
        return Err(LogicError::InvalidArgument {
            field: "user_id",
            reason: "must not be 0",
        });
    }
    let user = UserId(request.user_id);
    let profile = users::profile(&logic.pg, user)
        .await?
        .ok_or_else(|| LogicError::NotFound(format!("user {user} not found")))?;
    Ok(user_info(profile))
}

/// Returns the user named `request.username`; names match in any letter case.
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
        .ok_or_else(|| {
            // The name passed the username rules, so it is plain ASCII and safe to repeat.
            LogicError::NotFound(format!("no user is named {}", request.username))
        })?;
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
