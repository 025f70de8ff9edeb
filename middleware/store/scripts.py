"""The store's Lua scripts: each runs atomically on the server, in one round trip.

========  ==============================================================================
script    does
========  ==============================================================================
COMMIT    applies a :class:`~patgate.middleware.store.plan.Plan`: compare-and-set checks,
          uniqueness, the writes, SPUBLISH (or PUBLISH) of invalidations
          (stamped with their position and commit time), XADD of events
LOOKUP    digest → token record, owner's user record, org record (the cache-miss path),
          or the partition a forward names, or a tombstone; then the same for the
          previous pepper's digest during a pepper rotation
FORWARD   token id → record and last-used, or the partition a forward names
PAGES     newest-first rows of many zsets after their cursors (the org admin listing)
TOUCH     last-used entries, only for tokens that still exist
ROSTER    every token record of an org with the org's active-token version (its limits)
COUNT     windowed counters (failed authentications, credential reports); a counter that
          reaches its limit publishes a block to every process
REUSE     one audit event per token and minute for a dead secret presented again
========  ==============================================================================
"""

from __future__ import annotations

__all__ = [
    "COMMIT",
    "COUNT",
    "FORWARD",
    "LOOKUP",
    "PAGES",
    "PAGES_BATCH",
    "REUSE",
    "ROSTER",
    "TOUCH",
]

COMMIT = """
local plan = cmsgpack.unpack(ARGV[1])
for i, c in ipairs(plan.c or {}) do
  local cur = redis.call('HGET', c[1], c[2])
  if c[3] == '' then
    if cur then return {'stale', c[2]} end
  elseif cur ~= c[3] then
    return {'stale', c[2]}
  end
end
for _, u in ipairs(plan.u or {}) do
  if redis.call('SISMEMBER', u[1], u[2]) == 1 then return {'exists', u[2]} end
end
for _, w in ipairs(plan.hd or {}) do redis.call('HDEL', w[1], w[2]) end
for _, w in ipairs(plan.zr or {}) do redis.call('ZREM', w[1], w[2]) end
for _, w in ipairs(plan.sr or {}) do redis.call('SREM', w[1], w[2]) end
for _, w in ipairs(plan.hs or {}) do redis.call('HSET', w[1], w[2], w[3]) end
for _, w in ipairs(plan.za or {}) do redis.call('ZADD', w[1], w[2], w[3]) end
for _, w in ipairs(plan.sa or {}) do redis.call('SADD', w[1], w[2]) end
for _, w in ipairs(plan.sx or {}) do redis.call('SET', w[1], w[2], 'PX', w[3]) end
for _, w in ipairs(plan.ap or {}) do redis.call('APPEND', w[1], w[2]) end
for _, w in ipairs(plan.ea or {}) do redis.call('PEXPIREAT', w[1], w[2]) end
for _, w in ipairs(plan.sp or {}) do
  if redis.call('EXISTS', w[3]) == 0 then redis.call('SREM', w[1], w[2]) end
end
if plan.p then
  -- ARGV[4] is SPUBLISH (sharded pub/sub: the channel hashes to this partition's slot,
  -- so the message stays on its shard) or PUBLISH on a server without it.
  -- Stamp each message ' <position> <commit time>' (plan.py documents the format): the
  -- position INCRs plan.q once per message; the time is the server's, in microseconds,
  -- built as digits (tostring of a 16-digit number prints it in exponent form).
  local t = redis.call('TIME')
  local us = t[1] .. string.format('%06d', tonumber(t[2]))
  local pos = redis.call('INCRBY', plan.q, #plan.p) - #plan.p
  for i, m in ipairs(plan.p) do
    redis.call(ARGV[4], ARGV[3], m .. ' ' .. string.format('%d', pos + i) .. ' ' .. us)
  end
end
for _, e in ipairs(plan.e or {}) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', e)
end
return {'ok'}
"""

# The index value is the token id (earlier versions wrote "<id> <org> [<user>]": only the
# first word is read). The script takes the owner and the org from the record itself to
# fetch the owner's user record (``<org>/<user>``) and the org record — what the
# effective scopes are computed from (middleware.grants). Keeping them out of the index
# saves their bytes on every token (SPEC: <= 400 B per token).
#
# The record is a msgpack list (records.Token.encode): [id, name, kind code, owner id,
# org id, ...], or in the first layout [id, name, description, kind text, owner id, org
# id, ...]. Only those first six are read, by ``field`` below: strings (fixstr, str8,
# str16) and small integers — Lua's cmsgpack cannot read the bin-typed digest later in
# the record, and decoding all of it would cost more anyway. Still one round trip per
# cache miss. A value "> <p>" is a forward left by ``patgate migrate``
# (keys.Keys.index).
#
# Issue 12: an index miss reads the digest's tombstone (KEYS[5], keys.Keys.tombstone) in
# the same call, and during a pepper rotation the whole search repeats for the previous
# pepper's digest (ARGV[2], tombstone KEYS[6]) — only after the current one found nothing,
# and still one round trip. Every answer ends with 'c' (current digest) or 'p' (previous):
#   {record, user, org, c|p}   a token           {'>', partition, c|p}   a forward
#   {'t', tombstone, c|p}      a dead secret     false                   nothing
LOOKUP = """
local function field_reader(rec)
  local pos = 2
  local head = string.byte(rec, 1)
  if head == 0xdc then pos = 4 elseif head < 0x90 or head > 0x9f then return nil end
  return function()
    local b = string.byte(rec, pos)
    if not b then return nil end
    local n, at
    if b <= 0x7f then pos = pos + 1 return b end
    if b >= 0xa0 and b <= 0xbf then n, at = b - 0xa0, pos + 1
    elseif b == 0xd9 then n, at = string.byte(rec, pos + 1), pos + 2
    elseif b == 0xda then
      n, at = string.byte(rec, pos + 1) * 256 + string.byte(rec, pos + 2), pos + 3
    else return nil end
    pos = at + n
    return string.sub(rec, at, at + n - 1)
  end
end
local function find(digest, tomb, mark)
  local v = redis.call('HGET', KEYS[1], digest)
  if not v then
    local t = redis.call('GET', tomb)
    if t then return {'t', t, mark} end
    return nil
  end
  if string.sub(v, 1, 2) == '> ' then return {'>', string.sub(v, 3), mark} end
  local id = string.match(v, '^(%S+)')
  if not id then return false end
  local rec = redis.call('HGET', KEYS[2], id)
  if not rec then return false end
  local field = field_reader(rec)
  if not field then return false end
  field() field()
  local kind, user, org = field()
  if type(kind) == 'string' then
    kind = field()
    user, org = field(), field()
    if kind ~= 'user' then user = nil end
  else
    user, org = field(), field()
    if type(kind) ~= 'number' or kind >= 3 then user = nil end
  end
  if type(org) ~= 'string' then return false end
  local u = ''
  if type(user) == 'string' then u = redis.call('HGET', KEYS[3], org .. '/' .. user) or '' end
  return {rec, u, redis.call('HGET', KEYS[4], org) or '', mark}
end
local found = find(ARGV[1], KEYS[5], 'c')
if found ~= nil then return found end
if ARGV[2] then
  found = find(ARGV[2], KEYS[6], 'p')
  if found ~= nil then return found end
end
return false
"""

# A token by id in the partition its id names: {record, last-used, previous secret's
# last-used} or, for a migrated
# id, {'>', partition} from the forwards hash (keys.Keys.forwards); false if neither.
FORWARD = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec then
  local lu = redis.call('HMGET', KEYS[2], ARGV[1], ARGV[1] .. '~p')
  return {rec, lu[1] or '', lu[2] or ''}
end
local to = redis.call('HGET', KEYS[3], ARGV[1])
if to then return {'>', to} end
return false
"""

# Read-only: newest-first rows of many zsets (the merged org admin view), each after its
# own cursor score. Ties on the cursor's score come back whole, to be filtered by member
# in Python (Lua's string "<" follows the server's locale, not Redis's byte order).
PAGES = """
local n = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local s = ARGV[i + 1]
  if s == '' then
    out[i] = redis.call('ZREVRANGEBYSCORE', key, '+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, n)
  else
    out[i] = {
      redis.call('ZREVRANGEBYSCORE', key, s, s, 'WITHSCORES'),
      redis.call('ZREVRANGEBYSCORE', key, '(' .. s, '-inf', 'WITHSCORES', 'LIMIT', 0, n),
    }
  end
end
return out
"""
PAGES_BATCH = 1000

# Last-used writes only touch tokens that still exist: a flush racing a delete must not
# resurrect the deleted token's entry (SPEC, data plane: "never resurrects a deleted token").
# A field "<id>~p" is the last use of the token's previous secret (keys.PREVIOUS_SUFFIX).
TOUCH = """
local n = 0
for i = 1, #ARGV, 2 do
  local id = string.match(ARGV[i], '^([^~]+)')
  if id and redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# Windowed counters (middleware.limits): KEYS are counters of one partition, ARGV =
# limit, window ms, channel, publish command, then one (name, increment) pair per key.
# A counter's window starts with its first increment (PEXPIRE once); a counter that
# crosses the limit in this call publishes "b <name> <until ms>" so every process blocks
# the client at once (middleware.store.plan.parse_message). Returns {count, ms left} per key.
COUNT = """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local now
for i, key in ipairs(KEYS) do
  local name, delta = ARGV[3 + 2 * i], tonumber(ARGV[4 + 2 * i])
  local n = redis.call('INCRBY', key, delta)
  if n == delta then redis.call('PEXPIRE', key, window) end
  local left = redis.call('PTTL', key)
  if left < 0 then redis.call('PEXPIRE', key, window) left = window end
  if ARGV[3] ~= '' and n >= limit and n - delta < limit then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    redis.call(ARGV[4], ARGV[3], 'b ' .. name .. ' ' .. string.format('%d', now + left))
  end
  out[i] = {n, left}
end
return out
"""

# The reuse tripwire (middleware.tripwire): at most one event per token per minute, across
# every process — SET NX with a TTL decides, then the event joins the partition's stream.
REUSE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[2])
  return 1
end
return 0
"""

# Read-only, for the token limits (gateway.lifecycle.limits): KEYS = the partition's
# active-version hash, the org's owners set, the tokens hash; ARGV = org id, the owner
# zsets' key prefix (keys.Keys.owner_tokens). Returns {version or '', record...}: one
# consistent snapshot in one round trip, however many owners the org has. Whether each
# token is active is decided in Python (records.Token.status: revoked, or expired by the
# clock), since expiry is never stored as a state.
ROSTER = """
local out = {redis.call('HGET', KEYS[1], ARGV[1]) or ''}
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local ids = redis.call('ZRANGE', ARGV[2] .. owner, 0, -1)
  -- HMGET in chunks: unpack() of more than a few thousand values overflows Lua's stack.
  for from = 1, #ids, 1000 do
    local recs = redis.call('HMGET', KEYS[3], unpack(ids, from, math.min(from + 999, #ids)))
    for _, rec in ipairs(recs) do
      if rec then out[#out + 1] = rec end
    end
  end
end
return out
"""
