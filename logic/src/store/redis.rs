//! Redis layout and commands: device tokens and online status.
//!
//! | key | type | field | value |
//! | --- | --- | --- | --- |
//! | `auth:<user_id>` | hash | device id, decimal | `v1:<sha256 of the token, hex>:<expires_at_ms>` |
//! | `online:<user_id>` | hash | device id, decimal | `<node>\|<conn_id>` |
//! | `lease:nodes` | sorted set | node address | lease expiry, ms since the Unix epoch (Redis clock) |
//! | `lease:incarnation` | hash | node address | the node's incarnation, decimal |
//! | `lease:reaped` | set | node address | - |
//! | `lease:devices:<node>:<incarnation>` | set | `<user_id>:<device_id>` | - |
//!
//! A revoked token's record ends in `:revoked`. PostgreSQL stores the same record (see
//! `store::pg::device_tokens`), and this hash is a cache of it, refilled on a miss.
//! `lease:devices:` indexes which devices' online status names a node; the scripts that write
//! and clear online status keep it, and `store::lease` reads it when a lease lapses. The
//! scripts name these keys themselves, so they need one Redis server, not a cluster.
//!
//! The plain token is never stored. An `auth:` key expires seven days after the newest token
//! in it, so an expired token is still told apart from an unknown device for a while.
//! Every command goes through the [`RedisBatcher`], so concurrent calls share pipelines.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{
    Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Script, ServerErrorKind, Value,
};

use super::redis_batch::RedisBatcher;
use crate::config::Config;
use crate::error::LogicError;
use crate::ids::{ConnRef, DeviceId, UserId};

/// Returns the key of the set that indexes the devices online at a node's current incarnation.
/// A node that never renewed a lease has incarnation "0".
pub(crate) const NODE_INDEX_LUA: &str = r"
local function node_index(node)
  local incarnation = redis.call('HGET', 'lease:incarnation', node) or '0'
  return 'lease:devices:' .. node .. ':' .. incarnation
end
";

/// Sets field `device` of the online hash `key` to `status` and returns the previous value, or
/// false. `node` is the status's node and `member` the index member "user:device": the member
/// moves to that node's index.
const SET_STATUS_FN_LUA: &str = r"
local function set_status(key, device, status, node, member)
  local previous = redis.call('HGET', key, device)
  redis.call('HSET', key, device, status)
  if previous then
    local old_node = string.match(previous, '^(.*)|')
    if old_node and old_node ~= node then
      redis.call('SREM', node_index(old_node), member)
    end
  end
  redis.call('SADD', node_index(node), member)
  return previous
end
";

/// Sets a device's online status (ARGV[2]) and returns the previous value, or nil. ARGV[3] is
/// the status's node and ARGV[4] the index member "user:device".
const SET_STATUS_LUA: &str = r"
return set_status(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
";

/// SIGN_IN in one round trip. Reads the token record of device ARGV[1] from KEYS[1] and sets
/// the device's online status in KEYS[2] (ARGV[4] to ARGV[6], as in `SET_STATUS_LUA`) only
/// when the record is a v1 record whose hash equals ARGV[2] (SHA-256 of the presented token,
/// lowercase hex), is not revoked and expires after ARGV[3] (ms since the Unix epoch).
/// Returns nil when there is no record, else {record, accepted (1 or 0), previous status or
/// nil}.
///
/// The hash comparison is not constant-time. It compares digests of the presented token,
/// so its timing shows at most how many leading digits of that digest match the stored one,
/// which does not help to construct a token.
const SIGN_IN_LUA: &str = r"
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return false
end
local hash, expires = string.match(record, '^v1:(%x+):(%d+)$')
if hash ~= ARGV[2] or tonumber(expires) <= tonumber(ARGV[3]) then
  return {record, 0}
end
return {record, 1, set_status(KEYS[2], ARGV[1], ARGV[4], ARGV[5], ARGV[6])}
";

/// Deletes a device's online status only if it still names the closing connection, and its
/// member ARGV[4] from the index of node ARGV[3]; returns 1 when it deleted the field, else 0.
const CLEAR_STATUS_LUA: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', node_index(ARGV[3]), ARGV[4])
  return 1
end
return 0
";

/// Marks the token records of devices ARGV[1..] revoked, keeping hash and expiry; a device
/// without a record is left alone, since PostgreSQL has its revocation. Returns how many
/// records it marked.
const REVOKE_TOKENS_LUA: &str = r"
local marked = 0
for _, device in ipairs(ARGV) do
  local record = redis.call('HGET', KEYS[1], device)
  if record and string.sub(record, -8) ~= ':revoked' then
    redis.call('HSET', KEYS[1], device, record .. ':revoked')
    marked = marked + 1
  end
end
return marked
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

/// Suffix of a revoked token's record.
const REVOKED_SUFFIX: &str = "revoked";

/// Record of a device's token as Redis stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 of the token's text.
    pub hash: [u8; 32],
    /// Milliseconds since the Unix epoch after which the token is rejected.
    pub expires_at_ms: i64,
    /// True once a logout or kick revoked the token.
    pub revoked: bool,
}

impl TokenRecord {
    /// Returns the stored form, "v1:<hash hex>:<expires_at_ms>", with ":revoked" appended for
    /// a revoked token.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{TOKEN_RECORD_VERSION}:{}:{}",
            hex::encode(self.hash),
            self.expires_at_ms
        );
        if self.revoked {
            text.push(':');
            text.push_str(REVOKED_SUFFIX);
        }
        text
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
        let revoked = match parts.next() {
            None => false,
            Some(REVOKED_SUFFIX) => true,
            Some(_) => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(TokenRecord {
            hash,
            expires_at_ms,
            revoked,
        })
    }
}

/// Result of [`RedisStore::sign_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOutcome {
    /// No token record is cached for the device; nothing was changed.
    NotCached,
    /// The cached record. When `accepted`, the online status was set, and `previous` is the
    /// status it replaced.
    Checked {
        /// The device's token record.
        record: TokenRecord,
        /// True when the script found the token valid and set the online status.
        accepted: bool,
        /// The online status that the new one replaced, if any.
        previous: Option<String>,
    },
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

/// Returns the member that stands for a device in a node's index, "user:device".
fn index_member(user: UserId, device: DeviceId) -> String {
    format!("{user}:{device}")
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
    let client = redis::Client::open(connection_info(&config.redis_url)?)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, manager_config)
}

/// Parses `redis_url` and turns TCP_NODELAY on. redis-rs leaves Nagle's algorithm on by
/// default, which delays a pipeline written while an earlier one is unacknowledged until the
/// server's delayed ACK.
fn connection_info(redis_url: &str) -> redis::RedisResult<ConnectionInfo> {
    Ok(redis_url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true)))
}

/// Tokens and online status of devices.
#[derive(Clone)]
pub struct RedisStore {
    batcher: RedisBatcher,
    set_status: LuaScript,
    sign_in: LuaScript,
    clear_status: LuaScript,
    store_token: LuaScript,
    revoke_tokens: LuaScript,
    pub(crate) renew_lease: LuaScript,
    pub(crate) reap_leases: LuaScript,
    pub(crate) restore_online: LuaScript,
}

impl RedisStore {
    /// Wraps a running pipelining task.
    pub fn new(batcher: RedisBatcher) -> RedisStore {
        let status_prelude = format!("{NODE_INDEX_LUA}{SET_STATUS_FN_LUA}");
        RedisStore {
            batcher,
            set_status: LuaScript::with_prelude(&status_prelude, SET_STATUS_LUA),
            sign_in: LuaScript::with_prelude(&status_prelude, SIGN_IN_LUA),
            clear_status: LuaScript::with_prelude(NODE_INDEX_LUA, CLEAR_STATUS_LUA),
            store_token: LuaScript::new(STORE_TOKEN_LUA),
            revoke_tokens: LuaScript::new(REVOKE_TOKENS_LUA),
            renew_lease: super::lease::renew_script(),
            reap_leases: super::lease::reap_script(),
            restore_online: super::lease::restore_script(),
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

    /// Checks the cached token record of `device` against `token_digest_hex` (the presented
    /// token's SHA-256, lowercase hex) and, when the token is valid at `now_ms`, sets the
    /// device's online status to `conn`, in one script run.
    ///
    /// # Errors
    ///
    /// [`LogicError::Internal`] when the stored value is not a token record; store errors.
    pub async fn sign_in(
        &self,
        user: UserId,
        device: DeviceId,
        token_digest_hex: &str,
        now_ms: i64,
        conn: &ConnRef,
    ) -> Result<SignInOutcome, LogicError> {
        let auth = auth_key(user);
        let online = online_key(user);
        let args = [
            device.to_string(),
            token_digest_hex.to_owned(),
            now_ms.to_string(),
            conn.status_value(),
            conn.node.clone(),
            index_member(user, device),
        ];
        let reply = self
            .sign_in
            .invoke_keys(&self.batcher, &[&auth, &online], &args)
            .await?;
        let parts: Option<(String, i64, Option<String>)> = match reply {
            Value::Nil => None,
            Value::Array(mut items) => {
                // Lua drops a trailing nil from a table, so "no previous status" may be absent.
                if items.len() == 2 {
                    items.push(Value::Nil);
                }
                Some(parse(Value::Array(items))?)
            }
            other => return Err(LogicError::Redis(unexpected_reply(&other))),
        };
        let Some((text, accepted, previous)) = parts else {
            return Ok(SignInOutcome::NotCached);
        };
        let record = TokenRecord::decode(&text)
            .ok_or(LogicError::Internal("stored token record is malformed"))?;
        Ok(SignInOutcome::Checked {
            record,
            accepted: accepted == 1,
            previous,
        })
    }

    /// Marks the token records of `devices` revoked and returns how many it marked; a device
    /// whose record is not cached is skipped.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn revoke_tokens(
        &self,
        user: UserId,
        devices: &[DeviceId],
    ) -> Result<u64, LogicError> {
        if devices.is_empty() {
            return Ok(0);
        }
        let args: Vec<String> = devices.iter().map(ToString::to_string).collect();
        let marked = self
            .revoke_tokens
            .invoke(&self.batcher, &auth_key(user), &args)
            .await?;
        parse(marked)
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
        let args = [
            device.to_string(),
            conn.status_value(),
            conn.node.clone(),
            index_member(user, device),
        ];
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
        let args = [
            device.to_string(),
            conn.status_value(),
            conn.node.clone(),
            index_member(user, device),
        ];
        let removed = self
            .clear_status
            .invoke(&self.batcher, &online_key(user), &args)
            .await?;
        Ok(parse::<i64>(removed)? == 1)
    }

    /// Returns the devices of each of `users` that have an online status, in the order of
    /// `users`. The HGETALL commands are queued at once and travel in one pipeline.
    /// A field or value that does not parse is left out.
    pub async fn online_devices(
        &self,
        users: &[UserId],
    ) -> Vec<Result<Vec<OnlineDevice>, LogicError>> {
        let cmds = users
            .iter()
            .map(|&user| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(online_key(user));
                cmd
            })
            .collect();
        self.batcher
            .query_many(cmds)
            .await
            .into_iter()
            .map(|reply| {
                let fields: Vec<(String, String)> = parse(reply?)?;
                Ok(fields
                    .iter()
                    .filter_map(|(device, status)| OnlineDevice::parse(device, status))
                    .collect())
            })
            .collect()
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

fn unexpected_reply(value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply to the sign-in script",
        format!("{value:?}"),
    ))
}

pub(crate) fn parse<T: FromRedisValue>(value: Value) -> Result<T, LogicError> {
    T::from_redis_value(value).map_err(|err| LogicError::Redis(err.into()))
}

/// A Lua script run by EVALSHA, loaded on demand: after a Redis restart the script cache is
/// empty, and the first call loads the script again.
#[derive(Clone)]
pub(crate) struct LuaScript {
    script: Script,
    source: String,
}

impl LuaScript {
    pub(crate) fn new(source: &str) -> LuaScript {
        LuaScript {
            script: Script::new(source),
            source: source.to_owned(),
        }
    }

    /// Creates a script from shared helper functions followed by its body.
    pub(crate) fn with_prelude(prelude: &str, body: &str) -> LuaScript {
        LuaScript::new(&format!("{prelude}{body}"))
    }

    async fn invoke(
        &self,
        batcher: &RedisBatcher,
        key: &str,
        args: &[String],
    ) -> Result<Value, LogicError> {
        self.invoke_keys(batcher, &[key], args).await
    }

    /// Runs the script with `keys` as KEYS and `args` as ARGV.
    pub(crate) async fn invoke_keys(
        &self,
        batcher: &RedisBatcher,
        keys: &[&str],
        args: &[String],
    ) -> Result<Value, LogicError> {
        match batcher.query(self.evalsha(keys, args)).await {
            Err(LogicError::Redis(err))
                if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                batcher.query(self.load()).await?;
                batcher.query(self.evalsha(keys, args)).await
            }
            result => result,
        }
    }

    fn evalsha(&self, keys: &[&str], args: &[String]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        cmd
    }

    fn load(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.source);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_send_without_delay() {
        let info = connection_info("redis://127.0.0.1:6379/").expect("valid URL");
        assert!(info.tcp_settings().nodelay());
        assert!(connection_info("not a url").is_err());
    }

    #[test]
    fn token_record_round_trips() {
        let record = TokenRecord {
            hash: [0xab; 32],
            expires_at_ms: 1_700_000_000_123,
            revoked: false,
        };
        let encoded = record.encode();
        assert_eq!(encoded, format!("v1:{}:1700000000123", "ab".repeat(32)));
        assert_eq!(TokenRecord::decode(&encoded), Some(record.clone()));

        let revoked = TokenRecord {
            revoked: true,
            ..record
        };
        let encoded = revoked.encode();
        assert_eq!(
            encoded,
            format!("v1:{}:1700000000123:revoked", "ab".repeat(32))
        );
        assert_eq!(TokenRecord::decode(&encoded), Some(revoked));
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
            format!("v1:{hash}:1:revoked:x"),
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
