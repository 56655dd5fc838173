//! Errors of the logic tier and their mapping to gRPC statuses, in one place.
//!
//! Each failed call returns a `tonic::Status` whose metadata key
//! [`im_proto::ERROR_CODE_METADATA_KEY`] contains the [`ErrorCode`] number that the engine forwards
//! to the device.

use std::error::Error as StdError;
use std::fmt;

use im_proto::v1::ErrorCode;
use redis::{ErrorKind as RedisErrorKind, ServerErrorKind};
use tonic::metadata::MetadataValue;
use tonic::Code;

/// A store or engine node the logic tier depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The PostgreSQL database.
    Postgres,
    /// The Redis server.
    Redis,
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Store::Postgres => "PostgreSQL",
            Store::Redis => "Redis",
        })
    }
}

/// Side that caused a failure, which picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request was wrong or not allowed: debug.
    Client,
    /// A store is down, slow or refusing: warn.
    Dependency,
    /// The logic tier itself is broken: error.
    Internal,
    /// The logic tier turned the request away because it has as much of some work as it
    /// allows: warn.
    Overload,
}

/// Error of a call to the logic tier.
#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    /// A request field is missing or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the .proto file.
        field: &'static str,
        /// The rule the value breaks.
        reason: &'static str,
    },
    /// A text field contains a control character (Unicode category Cc).
    #[error(
        "invalid {field}: contains control character U+{code_point:04X} at character \
         {position}; remove it"
    )]
    ControlCharacter {
        /// The field, as named in the .proto file.
        field: &'static str,
        /// The first control character found.
        code_point: u32,
        /// Its position in the field, in characters from 0.
        position: usize,
    },
    /// A text field contains a bidirectional control character (U+061C, U+200E, U+200F,
    /// U+202A to U+202E, U+2066 to U+2069), which makes the text display in another order than
    /// the one it is stored in.
    #[error(
        "invalid {field}: contains bidirectional control character U+{code_point:04X} at \
         character {position}, which can make the text display differently from what it \
         contains; remove it"
    )]
    BidiControl {
        /// The field, as named in the .proto file.
        field: &'static str,
        /// The first bidirectional control character found.
        code_point: u32,
        /// Its position in the field, in characters from 0.
        position: usize,
    },
    /// The request message does not decode, because it is not valid protobuf or a string field
    /// is not UTF-8. The text is the decoder's, which names the message and the field.
    #[error("invalid request message: {0}")]
    Undecodable(String),
    /// The request body contains no request message at all, not even an empty one.
    #[error(
        "invalid request: the request body is empty; send one request message (a message with \
         every field at its default is 5 bytes: the gRPC frame header with length 0)"
    )]
    EmptyRequest,
    /// The request body is not a sequence of gRPC length-prefixed messages: a message header
    /// has an invalid compressed-flag, or the body ends inside a header or a message. The text
    /// is tonic's.
    #[error(
        "invalid request body: {0}; send each request message after a 5-byte header: the \
         compressed-flag 0, then the message length as a big-endian 32-bit integer"
    )]
    InvalidFraming(String),
    /// A request field is above the limit that this server is configured with.
    #[error("invalid {field}: {value} is above this server's maximum of {max}")]
    AboveMaximum {
        /// The field, as named in the .proto file.
        field: &'static str,
        /// The value sent.
        value: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The username does not exist or the password does not match.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The token does not match the device's current token.
    #[error("token does not match the device's current token; log in again")]
    TokenInvalid,
    /// The token is past its expiry.
    #[error("token expired; log in again")]
    TokenExpired,
    /// The token was revoked by a logout or a kick.
    #[error("token revoked; log in again")]
    TokenRevoked,
    /// No token is stored for this user and device.
    #[error("no token stored for this user and device; log in again")]
    DeviceUnknown,
    /// The device id belongs to another user.
    #[error("device belongs to another user")]
    DeviceNotOwned,
    /// LOGIN named a device id, given here, that does not exist.
    #[error("device {0} not found; log in with device_id 0 to get a new device")]
    LoginDeviceUnknown(u64),
    /// LOGIN named a device id, given here, that belongs to another user.
    #[error("device {0} belongs to another user; log in with device_id 0 to get a new device")]
    LoginDeviceNotOwned(u64),
    /// The username, in any letter case, is already registered.
    #[error("username {0} is taken (usernames match in any letter case); choose another")]
    UsernameTaken(String),
    /// The request metadata lacks a credential of the caller, or it does not parse.
    #[error("missing or malformed {0} metadata")]
    MissingCredentials(&'static str),
    /// A message with empty content.
    #[error("content is empty")]
    ContentEmpty,
    /// A message with content over `max_content_bytes`.
    #[error("content has {size} bytes, more than the maximum of {max}")]
    ContentTooLarge {
        /// The content's size, in bytes.
        size: usize,
        /// `max_content_bytes`.
        max: u32,
    },
    /// The receiving user or group does not exist.
    #[error("receiving {kind} {id} not found")]
    ReceiverNotFound {
        /// "user" or "group".
        kind: &'static str,
        /// The request's `receiver_id`.
        id: u64,
    },
    /// A direct message to a user, with this id, who is neither a friend nor open to
    /// strangers.
    #[error(
        "user {0} accepts direct messages only from friends: become friends first (one of you \
         sends RequestFriend, the other AcceptFriend)"
    )]
    NotFriend(u64),
    /// A group member added by a user who is neither a friend of the member nor allowed by
    /// the member's `open` setting.
    #[error(
        "user {0} joins groups only through friends: become friends first (one of you sends \
         RequestFriend, the other AcceptFriend)"
    )]
    NotFriendToAdd(u64),
    /// The caller is not a member of the group with this id.
    #[error("not a member of group {0}")]
    NotGroupMember(u64),
    /// The group would have more than `max_group_members` members.
    #[error("{}", group_full_message(*max, *members))]
    GroupFull {
        /// `max_group_members`.
        max: u32,
        /// The members the group would have after the request, its owner included.
        members: usize,
    },
    /// A user would be a member of more than `max_groups_per_user` groups.
    #[error(
        "user {user} is a member of {max} groups, the maximum this server allows \
         (max_groups_per_user), so they must leave a group first"
    )]
    TooManyGroups {
        /// The user who is a member of `max` groups already.
        user: u64,
        /// `max_groups_per_user`.
        max: u32,
    },
    /// A friend request would give a user more than `max_friends_per_user` friends and
    /// pending friend requests.
    #[error(
        "user {user} has {max} friends and pending friend requests, the maximum this server \
         allows (max_friends_per_user), so one of them must be removed first"
    )]
    TooManyFriends {
        /// The user whose list is full.
        user: u64,
        /// `max_friends_per_user`.
        max: u32,
    },
    /// A password hash or check found every one of the `max_password_hashes` places taken for
    /// `password_hash_wait_ms`, and was rejected without being run.
    #[error("{}", crate::password::busy_message(*max, *wait_ms))]
    PasswordsBusy {
        /// Hashes that run at once: `max_password_hashes`, or the number of CPUs.
        max: usize,
        /// `password_hash_wait_ms`.
        wait_ms: u64,
    },
    /// The caller is not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// A call made with the server secret, named here, while the `server_secret` setting is
    /// empty.
    #[error(
        "permission denied: {0} is off because the server_secret setting is empty: set \
         IM_LOGIC_SERVER_SECRET (16 to 1024 bytes) and send it as im-server-secret"
    )]
    ServerSecretUnset(&'static str),
    /// The friend request, friendship or group member already exists. The text is a sentence
    /// that names it, such as "user 7 is a member of group 3 already".
    #[error("{0}")]
    AlreadyExists(String),
    /// The user, friend request, group or group member does not exist. The text is a sentence
    /// that names it, such as "user 7 not found".
    #[error("{0}")]
    NotFound(String),
    /// A PostgreSQL request failed.
    #[error("PostgreSQL request failed")]
    Database(#[source] tokio_postgres::Error),
    /// A Redis request failed.
    #[error("Redis request failed")]
    Redis(#[source] redis::RedisError),
    /// A store did not reply within its deadline.
    #[error("{store} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The store that timed out.
        store: Store,
        /// The deadline that passed, in milliseconds.
        timeout_ms: u64,
    },
    /// A store cannot be reached at all, for example because its pool is closed.
    #[error("{0} is unavailable")]
    Unavailable(Store),
    /// The logic tier broke one of its own invariants.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl LogicError {
    /// Returns the code the device receives.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogicError::InvalidArgument { .. }
            | LogicError::ControlCharacter { .. }
            | LogicError::BidiControl { .. }
            | LogicError::Undecodable(_)
            | LogicError::EmptyRequest
            | LogicError::InvalidFraming(_)
            | LogicError::AboveMaximum { .. } => ErrorCode::InvalidArgument,
            LogicError::InvalidCredentials => ErrorCode::InvalidCredentials,
            LogicError::TokenInvalid => ErrorCode::TokenInvalid,
            LogicError::TokenExpired => ErrorCode::TokenExpired,
            LogicError::TokenRevoked => ErrorCode::TokenRevoked,
            LogicError::DeviceUnknown | LogicError::LoginDeviceUnknown(_) => {
                ErrorCode::DeviceUnknown
            }
            LogicError::DeviceNotOwned | LogicError::LoginDeviceNotOwned(_) => {
                ErrorCode::DeviceNotOwned
            }
            LogicError::UsernameTaken(_) => ErrorCode::UsernameTaken,
            // The token check's own code: the device must present its identity and token.
            LogicError::MissingCredentials(_) => ErrorCode::TokenInvalid,
            LogicError::ContentEmpty => ErrorCode::ContentEmpty,
            LogicError::ContentTooLarge { .. } => ErrorCode::ContentTooLarge,
            LogicError::ReceiverNotFound { .. } => ErrorCode::ReceiverNotFound,
            LogicError::NotFriend(_) | LogicError::NotFriendToAdd(_) => ErrorCode::NotFriend,
            LogicError::NotGroupMember(_) => ErrorCode::NotGroupMember,
            LogicError::GroupFull { .. } => ErrorCode::GroupFull,
            LogicError::TooManyGroups { .. } => ErrorCode::TooManyGroups,
            LogicError::TooManyFriends { .. } => ErrorCode::TooManyFriends,
            LogicError::PasswordsBusy { .. } => ErrorCode::Busy,
            LogicError::PermissionDenied(_) | LogicError::ServerSecretUnset(_) => {
                ErrorCode::PermissionDenied
            }
            LogicError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            LogicError::NotFound(_) => ErrorCode::NotFound,
            LogicError::Database(err) => postgres_code(err),
            LogicError::Redis(err) => redis_code(err),
            LogicError::Timeout { .. } => ErrorCode::Timeout,
            LogicError::Unavailable(_) => ErrorCode::Unavailable,
            LogicError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Returns the side that caused the failure.
    pub fn side(&self) -> Side {
        match self.code() {
            ErrorCode::Unavailable | ErrorCode::Timeout => Side::Dependency,
            ErrorCode::Internal => Side::Internal,
            ErrorCode::Busy => Side::Overload,
            _ => Side::Client,
        }
    }
}

impl From<tokio_postgres::Error> for LogicError {
    fn from(err: tokio_postgres::Error) -> Self {
        LogicError::Database(err)
    }
}

impl From<redis::RedisError> for LogicError {
    fn from(err: redis::RedisError) -> Self {
        LogicError::Redis(err)
    }
}

/// Classifies a PostgreSQL error: lost or refused connections and server shutdowns are outages,
/// a cancelled statement is a timeout, anything else (a constraint or a bad statement) is ours.
fn postgres_code(err: &tokio_postgres::Error) -> ErrorCode {
    if err.is_closed() {
        return ErrorCode::Unavailable;
    }
    let Some(db_error) = err.as_db_error() else {
        let is_io = err
            .source()
            .is_some_and(|cause| cause.is::<std::io::Error>());
        return if is_io {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
    };
    let sqlstate = db_error.code().code();
    match sqlstate {
        "57014" => ErrorCode::Timeout,
        _ if sqlstate.starts_with("08") || sqlstate.starts_with("53") => ErrorCode::Unavailable,
        "57P01" | "57P02" | "57P03" => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Classifies a Redis error: I/O failures and a server that is loading, read-only or without a
/// cluster quorum are outages, a response deadline is a timeout, anything else is ours.
fn redis_code(err: &redis::RedisError) -> ErrorCode {
    if err.is_timeout() {
        return ErrorCode::Timeout;
    }
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        return ErrorCode::Unavailable;
    }
    match err.kind() {
        RedisErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Returns the gRPC code that matches an [`ErrorCode`].
fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::ContentEmpty | ErrorCode::ContentTooLarge => {
            Code::InvalidArgument
        }
        ErrorCode::InvalidCredentials
        | ErrorCode::TokenInvalid
        | ErrorCode::TokenExpired
        | ErrorCode::TokenRevoked
        | ErrorCode::DeviceUnknown => Code::Unauthenticated,
        ErrorCode::DeviceNotOwned
        | ErrorCode::NotFriend
        | ErrorCode::NotGroupMember
        | ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::UsernameTaken | ErrorCode::AlreadyExists => Code::AlreadyExists,
        ErrorCode::ReceiverNotFound | ErrorCode::NotFound => Code::NotFound,
        ErrorCode::GroupFull | ErrorCode::TooManyGroups | ErrorCode::TooManyFriends => {
            Code::FailedPrecondition
        }
        ErrorCode::Busy => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Timeout => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// Describes [`LogicError::GroupFull`] with what the caller or the operator can do about it:
/// send fewer members, or raise `max_group_members` while it is below the highest value the
/// setting accepts.
fn group_full_message(max: u32, members: usize) -> String {
    let limit = crate::config::MAX_GROUP_MEMBERS_LIMIT;
    let fix = if max < limit {
        format!(
            "send fewer members, or raise the logic tier's max_group_members (under [logic] in \
             im.toml or IM_LOGIC_MAX_GROUP_MEMBERS, at most {limit})"
        )
    } else {
        "send fewer members: max_group_members is already at its highest accepted value".to_owned()
    };
    format!(
        "a group has at most {max} members (max_group_members), but this request would give it \
         {members}: {fix}"
    )
}

impl From<LogicError> for tonic::Status {
    fn from(err: LogicError) -> Self {
        let code = err.code();
        let mut status = tonic::Status::new(grpc_code(code), err.to_string());
        status.metadata_mut().insert(
            im_proto::ERROR_CODE_METADATA_KEY,
            MetadataValue::from(code as i32),
        );
        status
    }
}

/// Displays an error followed by each of its causes, separated by ": ". A cause whose text
/// repeats the one before it is skipped, since some wrappers display their source's text.
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            let text = err.to_string();
            if text != previous {
                write!(f, ": {text}")?;
            }
            previous = text;
            cause = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_code_number(status: &tonic::Status) -> Option<i32> {
        let value = status.metadata().get(im_proto::ERROR_CODE_METADATA_KEY)?;
        value.to_str().ok()?.parse().ok()
    }

    #[test]
    fn status_carries_error_code_and_grpc_code() {
        let cases = [
            (
                LogicError::InvalidCredentials,
                Code::Unauthenticated,
                ErrorCode::InvalidCredentials,
            ),
            (
                LogicError::TokenExpired,
                Code::Unauthenticated,
                ErrorCode::TokenExpired,
            ),
            (
                LogicError::DeviceNotOwned,
                Code::PermissionDenied,
                ErrorCode::DeviceNotOwned,
            ),
            (
                LogicError::UsernameTaken("bob".to_owned()),
                Code::AlreadyExists,
                ErrorCode::UsernameTaken,
            ),
            (
                LogicError::Unavailable(Store::Redis),
                Code::Unavailable,
                ErrorCode::Unavailable,
            ),
            (
                LogicError::Timeout {
                    store: Store::Postgres,
                    timeout_ms: 5,
                },
                Code::DeadlineExceeded,
                ErrorCode::Timeout,
            ),
            (
                LogicError::Internal("x"),
                Code::Internal,
                ErrorCode::Internal,
            ),
            (
                LogicError::MissingCredentials("im-token"),
                Code::Unauthenticated,
                ErrorCode::TokenInvalid,
            ),
            (
                LogicError::ContentTooLarge { size: 9, max: 8 },
                Code::InvalidArgument,
                ErrorCode::ContentTooLarge,
            ),
            (
                LogicError::ReceiverNotFound {
                    kind: "group",
                    id: 7,
                },
                Code::NotFound,
                ErrorCode::ReceiverNotFound,
            ),
            (
                LogicError::NotFriend(7),
                Code::PermissionDenied,
                ErrorCode::NotFriend,
            ),
            (
                LogicError::NotFriendToAdd(7),
                Code::PermissionDenied,
                ErrorCode::NotFriend,
            ),
            (
                LogicError::GroupFull { max: 5, members: 6 },
                Code::FailedPrecondition,
                ErrorCode::GroupFull,
            ),
            (
                LogicError::TooManyGroups { user: 7, max: 3 },
                Code::FailedPrecondition,
                ErrorCode::TooManyGroups,
            ),
            (
                LogicError::TooManyFriends { user: 7, max: 3 },
                Code::FailedPrecondition,
                ErrorCode::TooManyFriends,
            ),
            (
                LogicError::PasswordsBusy { max: 2, wait_ms: 5 },
                Code::ResourceExhausted,
                ErrorCode::Busy,
            ),
            (
                LogicError::BidiControl {
                    field: "name",
                    code_point: 0x202e,
                    position: 1,
                },
                Code::InvalidArgument,
                ErrorCode::InvalidArgument,
            ),
            (
                LogicError::AlreadyExists("friend request to user 7 is pending already".to_owned()),
                Code::AlreadyExists,
                ErrorCode::AlreadyExists,
            ),
            (
                LogicError::NotFound("group 7 not found".to_owned()),
                Code::NotFound,
                ErrorCode::NotFound,
            ),
        ];
        for (err, grpc, code) in cases {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), grpc);
            assert_eq!(status_code_number(&status), Some(code as i32));
        }
    }

    /// Returns the rows of the table of `im-error-code` values and gRPC statuses in
    /// docs/protocol.md, as (code number, gRPC status name).
    fn documented_grpc_statuses() -> Vec<(i32, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let text = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
        let section = text
            .split("### Errors of the business API")
            .nth(1)
            .expect("docs/protocol.md has the section Errors of the business API");
        let section = section.split("\n#").next().unwrap_or_default();
        let mut rows = Vec::new();
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // A row is "| 31 | `NOT_FRIEND` | `PERMISSION_DENIED` |".
            let [_, number, _, status, _] = cells[..] else {
                continue;
            };
            let Ok(number) = number.parse::<i32>() else {
                continue;
            };
            rows.push((number, status.trim_matches('`').to_owned()));
        }
        rows
    }

    /// Returns the name of a gRPC status code as gRPC's documentation spells it.
    fn grpc_status_name(code: Code) -> String {
        let mut name = String::new();
        for (index, letter) in format!("{code:?}").chars().enumerate() {
            if letter.is_ascii_uppercase() && index > 0 {
                name.push('_');
            }
            name.push(letter.to_ascii_uppercase());
        }
        name
    }

    #[test]
    fn protocol_doc_maps_codes_to_grpc_statuses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
        let text = std::fs::read_to_string(path).expect("docs/protocol.md is readable");
        assert!(
            text.contains(&format!("`{}`", im_proto::ERROR_CODE_METADATA_KEY)),
            "docs/protocol.md names the metadata key"
        );
        let rows = documented_grpc_statuses();
        for (number, status) in &rows {
            let code = ErrorCode::try_from(*number)
                .unwrap_or_else(|_| panic!("docs/protocol.md lists unknown code {number}"));
            assert_eq!(
                status,
                &grpc_status_name(grpc_code(code)),
                "gRPC status of {}",
                code.as_str_name()
            );
        }
        // Every code with its own gRPC status, and INTERNAL, which is what the logic tier
        // returns. The other codes fall through to INTERNAL and come from the engine only.
        for number in 0..=255 {
            let Ok(code) = ErrorCode::try_from(number) else {
                continue;
            };
            if grpc_code(code) == Code::Internal && code != ErrorCode::Internal {
                continue;
            }
            assert!(
                rows.iter().any(|(row, _)| *row == number),
                "docs/protocol.md lists {} ({number})",
                code.as_str_name()
            );
        }
    }

    #[test]
    fn group_full_names_setting_that_raises_cap() {
        let text = LogicError::GroupFull {
            max: 500,
            members: 501,
        }
        .to_string();

        assert!(
            text.starts_with(
                "a group has at most 500 members (max_group_members), but this request would \
                 give it 501: "
            ),
            "{text}"
        );
        assert!(text.contains("max_group_members (under [logic]"), "{text}");
        assert!(text.contains("IM_LOGIC_MAX_GROUP_MEMBERS"), "{text}");
        assert!(text.contains("at most 10000"), "{text}");
    }

    #[test]
    fn group_full_at_highest_cap() {
        let text = LogicError::GroupFull {
            max: 10_000,
            members: 10_001,
        }
        .to_string();

        assert!(
            text.contains("already at its highest accepted value"),
            "{text}"
        );
        assert!(!text.contains("raise"), "{text}");
    }

    #[test]
    fn login_device_errors_say_to_use_device_zero() {
        let unknown = LogicError::LoginDeviceUnknown(42);
        assert_eq!(unknown.code(), ErrorCode::DeviceUnknown);
        assert!(unknown.to_string().contains("device 42"), "{unknown}");
        assert!(unknown.to_string().contains("device_id 0"), "{unknown}");
        let foreign = LogicError::LoginDeviceNotOwned(42);
        assert_eq!(foreign.code(), ErrorCode::DeviceNotOwned);
        assert!(foreign.to_string().contains("device 42"), "{foreign}");
        assert!(foreign.to_string().contains("device_id 0"), "{foreign}");
    }

    #[test]
    fn redis_io_error_is_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = LogicError::from(redis::RedisError::from(io));
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert_eq!(err.side(), Side::Dependency);
    }

    #[test]
    fn redis_timeout_is_timeout() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let err = LogicError::from(redis::RedisError::from(io));
        assert_eq!(err.code(), ErrorCode::Timeout);
    }

    #[test]
    fn error_chain_skips_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply");
        let err = LogicError::from(redis::RedisError::from(io));
        assert_eq!(
            ErrorChain(&err).to_string(),
            "Redis request failed: no reply"
        );
    }

    #[test]
    fn invalid_argument_message_names_the_field() {
        let err = LogicError::InvalidArgument {
            field: "username",
            reason: "too short",
        };
        assert_eq!(
            tonic::Status::from(err).message(),
            "invalid username: too short"
        );
    }
}
