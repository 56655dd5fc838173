//! Redis layout and commands: device tokens and online status.
//!
//! | key | type | field | value |
//! | --- | --- | --- | --- |
//! | `auth:<user_id>` | hash | device id, decimal | `v1:<sha256 of the token, hex>:<expires_at_ms>` |
//! | `online:<user_id>` | hash | device id, decimal | `<node>\|<conn_id>` |
//!
//! The plain token is never stored. An `auth:` key expires seven days after the newest token
//! in it, so an expired token is still told apart from an unknown device for a while.
//! Every command goes through the [`RedisBatcher`], so concurrent calls share pipelines.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Script, ServerErrorKind, Value};

use super::redis_batch::RedisBatcher;
use crate::config::Config;
use crate::error::LogicError;
use crate::ids::{ConnRef, DeviceId, UserId};

/// Sets a device's online status and returns the previous value, or nil.
const SET_STATUS_LUA: &str = r"
local previous = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return previous
";

/// Deletes a device's online status only if it still names the closing connection; returns 1
/// when it deleted the field, else 0.
const CLEAR_STATUS_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

/// Stores a token record and extends the key's lifetime to at least the token's, in
/// milliseconds (ARGV[3]); a key without expiry gets one.
const STORE_TOKEN_LUA: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local remaining = redis.call('PTTL', KEYS[1])
if remaining < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
";

/// How long a token record outlives its token, so that SIGN_IN with an old token gets
/// TOKEN_EXPIRED (log in again) rather than DEVICE_UNKNOWN.
const EXPIRED_TOKEN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Version tag of the token record format.
const TOKEN_RECORD_VERSION: &str = "v1";

/// Record of a device's token as Redis stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 of the token's text.
    pub hash: [u8; 32],
    /// Milliseconds since the Unix epoch after which the token is rejected.
    pub expires_at_ms: i64,
}

impl TokenRecord {
    /// Returns the stored form, "v1:<hash hex>:<expires_at_ms>".
    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_RECORD_VERSION}:{}:{}",
            hex::encode(self.hash),
            self.expires_at_ms
        )
    }

    /// Parses the stored form; `None` when it is not a v1 record.
    pub fn decode(value: &str) -> Option<TokenRecord> {
        let mut parts = value.split(':');
        if parts.next()? != TOKEN_RECORD_VERSION {
            return None;
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(parts.next()?, &mut hash).ok()?;
        let expires_at_ms = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(TokenRecord {
            hash,
            expires_at_ms,
        })
    }
}

/// A device with an online status: where its connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineDevice {
    /// The device.
    pub device: DeviceId,
    /// Its connection.
    pub conn: ConnRef,
}

impl OnlineDevice {
    /// Parses one field and value of an `online:` hash.
    fn parse(device: &str, status: &str) -> Option<OnlineDevice> {
        Some(OnlineDevice {
            device: DeviceId(device.parse().ok()?),
            conn: ConnRef::parse_status(status)?,
        })
    }
}

/// Returns the key of a user's token hash.
pub fn auth_key(user: UserId) -> String {
    format!("auth:{user}")
}

/// Returns the key of a user's online-status hash.
pub fn online_key(user: UserId) -> String {
    format!("online:{user}")
}

/// Opens a connection manager that reconnects on its own; the first connection is made on the
/// first command.
///
/// A failed connect is not retried inside the manager: commands waiting for it fail at once
/// with UNAVAILABLE, and the next command starts a new attempt. Commands reach the manager one
/// pipeline at a time, so an outage costs at most one connect attempt per pipeline.
///
/// # Errors
///
/// A [`redis::RedisError`] when `redis_url` does not parse.
pub fn connection_manager(config: &Config) -> redis::RedisResult<ConnectionManager> {
    let timeout = Duration::from_millis(config.redis_timeout_ms);
    let client = redis::Client::open(config.redis_url.as_str())?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

/// Tokens and online status of devices.
#[derive(Clone)]
pub struct RedisStore {
    batcher: RedisBatcher,
    set_status: LuaScript,
    clear_status: LuaScript,
    store_token: LuaScript,
}

impl RedisStore {
    /// Wraps a running pipelining task.
    pub fn new(batcher: RedisBatcher) -> RedisStore {
        RedisStore {
            batcher,
            set_status: LuaScript::new(SET_STATUS_LUA),
            clear_status: LuaScript::new(CLEAR_STATUS_LUA),
            store_token: LuaScript::new(STORE_TOKEN_LUA),
        }
    }

    /// Returns the pipelining task's handle.
    pub fn batcher(&self) -> &RedisBatcher {
        &self.batcher
    }

    /// Sends PING, to check that Redis replies.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn ping(&self) -> Result<(), LogicError> {
        self.batcher.query(redis::cmd("PING")).await.map(|_| ())
    }

    /// Stores `record` as the token of `device`, replacing any earlier one; `ttl` keeps the key
    /// alive at least that long.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn store_token(
        &self,
        user: UserId,
        device: DeviceId,
        record: &TokenRecord,
        ttl: Duration,
    ) -> Result<(), LogicError> {
        let ttl_ms = u64::try_from((ttl + EXPIRED_TOKEN_RETENTION).as_millis()).unwrap_or(u64::MAX);
        let args = [device.to_string(), record.encode(), ttl_ms.to_string()];
        self.store_token
            .invoke(&self.batcher, &auth_key(user), &args)
            .await
            .map(|_| ())
    }

    /// Returns the stored token record of `device`: `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`LogicError::Internal`] when the stored value is not a token record; store errors.
    pub async fn load_token(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<TokenRecord>, LogicError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(auth_key(user)).arg(device.0);
        let value: Option<String> = parse(self.batcher.query(cmd).await?)?;
        match value {
            None => Ok(None),
            Some(text) => TokenRecord::decode(&text)
                .map(Some)
                .ok_or(LogicError::Internal("stored token record is malformed")),
        }
    }

    /// Sets the online status of `device` to `conn` and returns the status it replaced.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn set_online(
        &self,
        user: UserId,
        device: DeviceId,
        conn: &ConnRef,
    ) -> Result<Option<String>, LogicError> {
        let args = [device.to_string(), conn.status_value()];
        let previous = self
            .set_status
            .invoke(&self.batcher, &online_key(user), &args)
            .await?;
        parse(previous)
    }

    /// Deletes the online status of `device` if it still names `conn`; returns whether it did.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn set_offline(
        &self,
        user: UserId,
        device: DeviceId,
        conn: &ConnRef,
    ) -> Result<bool, LogicError> {
        let args = [device.to_string(), conn.status_value()];
        let removed = self
            .clear_status
            .invoke(&self.batcher, &online_key(user), &args)
            .await?;
        Ok(parse::<i64>(removed)? == 1)
    }

    /// Returns the devices of each of `users` that have an online status, in the order of
    /// `users`. The HGETALL commands are queued at once, so they travel in shared pipelines.
    /// A field or value that does not parse is left out.
    pub async fn online_devices(
        &self,
        users: &[UserId],
    ) -> Vec<Result<Vec<OnlineDevice>, LogicError>> {
        let queries = users.iter().map(|&user| async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(online_key(user));
            let fields: Vec<(String, String)> = parse(self.batcher.query(cmd).await?)?;
            Ok(fields
                .iter()
                .filter_map(|(device, status)| OnlineDevice::parse(device, status))
                .collect())
        });
        futures::future::join_all(queries).await
    }

    /// Returns the online status of `device`, "node|conn_id", or `None`.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn online_status(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<String>, LogicError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(online_key(user)).arg(device.0);
        parse(self.batcher.query(cmd).await?)
    }
}

fn parse<T: FromRedisValue>(value: Value) -> Result<T, LogicError> {
    T::from_redis_value(value).map_err(|err| LogicError::Redis(err.into()))
}

/// A Lua script run by EVALSHA, loaded on demand: after a Redis restart the script cache is
/// empty, and the first call loads the script again.
#[derive(Clone)]
struct LuaScript {
    script: Script,
    source: &'static str,
}

impl LuaScript {
    fn new(source: &'static str) -> LuaScript {
        LuaScript {
            script: Script::new(source),
            source,
        }
    }

    async fn invoke(
        &self,
        batcher: &RedisBatcher,
        key: &str,
        args: &[String],
    ) -> Result<Value, LogicError> {
        match batcher.query(self.evalsha(key, args)).await {
            Err(LogicError::Redis(err))
                if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                batcher.query(self.load()).await?;
                batcher.query(self.evalsha(key, args)).await
            }
            result => result,
        }
    }

    fn evalsha(&self, key: &str, args: &[String]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(1).arg(key).arg(args);
        cmd
    }

    fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(self.source);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_record_round_trips() {
        let record = TokenRecord {
            hash: [0xab; 32],
            expires_at_ms: 1_700_000_000_123,
        };
        let encoded = record.encode();
        assert_eq!(encoded, format!("v1:{}:1700000000123", "ab".repeat(32)));
        assert_eq!(TokenRecord::decode(&encoded), Some(record));
    }

    #[test]
    fn malformed_token_records_are_rejected() {
        let hash = "ab".repeat(32);
        for value in [
            String::new(),
            format!("v2:{hash}:1"),
            format!("v1:{hash}"),
            format!("v1:{hash}:x"),
            format!("v1:{hash}:1:2"),
            "v1:abcd:1".to_owned(),
        ] {
            assert_eq!(TokenRecord::decode(&value), None, "{value}");
        }
    }

    #[test]
    fn online_device_fields_parse() {
        let parsed = OnlineDevice::parse("12", "127.0.0.1:7100|5").expect("valid");
        assert_eq!(parsed.device, DeviceId(12));
        assert_eq!(parsed.conn.node, "127.0.0.1:7100");
        assert_eq!(parsed.conn.conn_id.0, 5);
        assert_eq!(OnlineDevice::parse("x", "127.0.0.1:7100|5"), None);
        assert_eq!(OnlineDevice::parse("12", "no-conn-id"), None);
    }

    #[test]
    fn keys_follow_the_layout() {
        assert_eq!(auth_key(UserId(7)), "auth:7");
        assert_eq!(online_key(UserId(7)), "online:7");
    }
}
