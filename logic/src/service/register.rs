//! REGISTER: creating an account, and the username and password rules it shares with LOGIN.

use im_proto::v1::{RegisterReply, RegisterRequest};

use super::Logic;
use crate::error::LogicError;
use crate::store::pg::users;

/// Minimum and maximum username length, in ASCII characters.
const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;

/// Minimum and maximum password length, in bytes of UTF-8.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;

/// Registers a user and returns the new user id. `request.open` lets anyone send the user
/// direct messages.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] for a username or password that breaks the rules,
/// [`LogicError::UsernameTaken`], store errors.
pub async fn register(
    logic: &Logic,
    request: RegisterRequest,
) -> Result<RegisterReply, LogicError> {
    validate_username(&request.username)?;
    validate_password(&request.password)?;

    let hash = logic.passwords.hash(request.password).await?;
    let user = users::insert(&logic.pg, &request.username, &hash, request.open).await?;
    tracing::debug!(user_id = user.0, open = request.open, "user registered");
    Ok(RegisterReply { user_id: user.0 })
}

/// Checks that a username has 3 to 32 characters, each an ASCII letter, digit, '_', '-' or '.'.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] naming the broken rule.
pub fn validate_username(username: &str) -> Result<(), LogicError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let reason = if username.is_empty() {
        "missing"
    } else if !username.chars().all(allowed) {
        "only ASCII letters, digits, '_', '-' and '.' are allowed"
    } else if !USERNAME_LEN.contains(&username.len()) {
        "must have 3 to 32 characters"
    } else {
        return Ok(());
    };
    Err(LogicError::InvalidArgument {
        field: "username",
        reason,
    })
}

/// Checks that a password has 8 to 128 bytes.
///
/// # Errors
///
/// [`LogicError::InvalidArgument`] naming the broken rule.
pub fn validate_password(password: &str) -> Result<(), LogicError> {
    if PASSWORD_LEN.contains(&password.len()) {
        return Ok(());
    }
    Err(LogicError::InvalidArgument {
        field: "password",
        reason: "must have 8 to 128 bytes",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rules() {
        for name in ["abc", "a.b-c_d", "Z9Z", &"x".repeat(32)] {
            assert!(validate_username(name).is_ok(), "{name} should pass");
        }
        for name in [
            "",
            "ab",
            &"x".repeat(33),
            "has space",
            "émile",
            "a/b",
            "a@b",
        ] {
            assert!(validate_username(name).is_err(), "{name} should fail");
        }
    }

    #[test]
    fn passwords_follow_the_rules() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"p".repeat(128)).is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"p".repeat(129)).is_err());
        // 4 characters, 8 bytes of UTF-8.
        assert!(validate_password("éééé").is_ok());
    }
}
