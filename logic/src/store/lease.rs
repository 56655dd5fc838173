//! Node leases in Redis: each engine node renews its lease, and the reaper removes the online
//! status of devices on nodes whose lease lapsed. The key layout is in `store::redis`.
//!
//! Both scripts read the time from Redis (`TIME`), so logic instances with skewed clocks agree
//! on which leases lapsed. Each script runs atomically, so any number of logic instances may
//! renew and reap at once: a status is removed only while it still names the dead node.

use super::redis::{parse, LuaScript, RedisStore};
use crate::error::LogicError;

/// Lua helpers of both scripts: the current time and the conditional removal of the statuses a
/// node index lists.
const LEASE_PRELUDE_LUA: &str = r"
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function index_key(node, incarnation)
  return 'lease:devices:' .. node .. ':' .. incarnation
end

-- Removes the online status of each member of `members` that still names `node`, skipping
-- members of `keep_key` (devices that signed in again at the node's new incarnation).
local function clear_statuses(node, members, keep_key)
  local prefix = node .. '|'
  local removed = 0
  for _, member in ipairs(members) do
    local kept = keep_key and redis.call('SISMEMBER', keep_key, member) == 1
    local user, device = string.match(member, '^(%d+):(%d+)$')
    if user and not kept then
      local online = 'online:' .. user
      local status = redis.call('HGET', online, device)
      if status and string.sub(status, 1, #prefix) == prefix then
        redis.call('HDEL', online, device)
        removed = removed + 1
      end
    end
  end
  return removed
end
";

/// Renews the lease of node ARGV[1], incarnation ARGV[2], for ARGV[3] ms. A new incarnation
/// clears the statuses indexed under the one before it; the statuses a node indexed before its
/// first lease move under its incarnation. Returns {statuses removed, resync}, where resync is 1
/// when Redis held no lease for the node (a first renewal, or Redis lost its data) or the lease
/// had been reaped: the node's statuses may be missing and the node should restore them.
const RENEW_LUA: &str = r"
local node, incarnation = ARGV[1], ARGV[2]
local previous = redis.call('HGET', 'lease:incarnation', node)
redis.call('HSET', 'lease:incarnation', node, incarnation)
redis.call('ZADD', 'lease:nodes', now_ms() + tonumber(ARGV[3]), node)
local reaped = redis.call('SREM', 'lease:reaped', node)
local current = index_key(node, incarnation)
if not previous then
  local unleased = index_key(node, '0')
  if redis.call('EXISTS', unleased) == 1 then
    redis.call('SUNIONSTORE', current, current, unleased)
    redis.call('DEL', unleased)
  end
  return {0, 1}
end
if previous == incarnation then
  return {0, reaped}
end
local old = index_key(node, previous)
local removed = clear_statuses(node, redis.call('SMEMBERS', old), current)
redis.call('DEL', old)
return {removed, 0}
";

/// Restores the online status of devices at node ARGV[1]: ARGV[2..] are triples of user id,
/// device id and connection id. A device with a status is left alone, since it names a newer
/// sign-in. Returns the number of statuses written.
const RESTORE_LUA: &str = r"
local node = ARGV[1]
local index = node_index(node)
local restored = 0
for i = 2, #ARGV - 2, 3 do
  local user, device, conn = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local online = 'online:' .. user
  if redis.call('HSETNX', online, device, node .. '|' .. conn) == 1 then
    redis.call('SADD', index, user .. ':' .. device)
    restored = restored + 1
  end
end
return restored
";

/// Reaps lapsed leases: for each node whose lease expired, removes up to ARGV[1] of its
/// indexed statuses that still name it. A lease lapsed for more than ARGV[2] ms with an empty
/// index is forgotten. Returns a flat array of (node, first, removed) per lapsed node, where
/// `first` is 1 the first time the lapse is seen.
const REAP_LUA: &str = r"
local batch, forget_after = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local result = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', 'lease:nodes', '-inf', '(' .. now)) do
  local incarnation = redis.call('HGET', 'lease:incarnation', node) or '0'
  local key = index_key(node, incarnation)
  local members = redis.call('SPOP', key, batch)
  local removed = clear_statuses(node, members, nil)
  local first = redis.call('SADD', 'lease:reaped', node)
  table.insert(result, node)
  table.insert(result, first)
  table.insert(result, removed)
end
local stale = redis.call('ZRANGEBYSCORE', 'lease:nodes', '-inf', '(' .. (now - forget_after))
for _, node in ipairs(stale) do
  local incarnation = redis.call('HGET', 'lease:incarnation', node) or '0'
  if redis.call('SCARD', index_key(node, incarnation)) == 0 then
    redis.call('ZREM', 'lease:nodes', node)
    redis.call('HDEL', 'lease:incarnation', node)
    redis.call('SREM', 'lease:reaped', node)
  end
end
return result
";

pub(crate) fn renew_script() -> LuaScript {
    LuaScript::with_prelude(LEASE_PRELUDE_LUA, RENEW_LUA)
}

pub(crate) fn restore_script() -> LuaScript {
    LuaScript::with_prelude(super::redis::NODE_INDEX_LUA, RESTORE_LUA)
}

pub(crate) fn reap_script() -> LuaScript {
    LuaScript::with_prelude(LEASE_PRELUDE_LUA, REAP_LUA)
}

/// Outcome of one lease renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// Online statuses of the node's previous incarnation that it removed.
    pub removed: u64,
    /// The node's statuses may be missing: it should report its devices.
    pub resync: bool,
}

/// A lapsed lease as one reaper pass found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LapsedNode {
    /// The node's address.
    pub node: String,
    /// True the first time any reaper saw this lapse.
    pub first: bool,
    /// Online statuses this pass removed.
    pub removed: u64,
}

impl RedisStore {
    /// Renews the lease of `node` at `incarnation` for `ttl_ms`.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn renew_lease(
        &self,
        node: &str,
        incarnation: u64,
        ttl_ms: u32,
    ) -> Result<Renewal, LogicError> {
        let args = [node.to_owned(), incarnation.to_string(), ttl_ms.to_string()];
        let reply = self
            .renew_lease
            .invoke_keys(self.batcher(), &[], &args)
            .await?;
        let (removed, resync): (u64, u8) = parse(reply)?;
        Ok(Renewal {
            removed,
            resync: resync != 0,
        })
    }

    /// Writes the online status of `devices` (user, device, connection id) at `node` where a
    /// device has none, and indexes them under the node. Returns how many it wrote.
    ///
    /// # Errors
    ///
    /// Store errors.
    pub async fn restore_online(
        &self,
        node: &str,
        devices: &[(u64, u64, u64)],
    ) -> Result<u64, LogicError> {
        let mut args = Vec::with_capacity(1 + devices.len() * 3);
        args.push(node.to_owned());
        for (user, device, conn) in devices {
            args.extend([user.to_string(), device.to_string(), conn.to_string()]);
        }
        let reply = self
            .restore_online
            .invoke_keys(self.batcher(), &[], &args)
            .await?;
        parse(reply)
    }

    /// Runs one reaper pass: removes up to `batch` statuses per lapsed node and deletes leases
    /// lapsed longer than `forget_after_ms`. Returns every lapsed node.
    ///
    /// # Errors
    ///
    /// Store errors, or [`LogicError::Internal`] when the script's reply is malformed.
    pub async fn reap_leases(
        &self,
        batch: u32,
        forget_after_ms: u64,
    ) -> Result<Vec<LapsedNode>, LogicError> {
        let args = [batch.to_string(), forget_after_ms.to_string()];
        let reply = self
            .reap_leases
            .invoke_keys(self.batcher(), &[], &args)
            .await?;
        let flat: Vec<redis::Value> = parse(reply)?;
        flat.chunks(3).map(lapsed_node).collect()
    }
}

fn lapsed_node(fields: &[redis::Value]) -> Result<LapsedNode, LogicError> {
    let [node, first, removed] = fields else {
        return Err(LogicError::Internal("reaper reply is not in triples"));
    };
    Ok(LapsedNode {
        node: parse(node.clone())?,
        first: parse::<i64>(first.clone())? == 1,
        removed: parse(removed.clone())?,
    })
}
