"""The store's Lua scripts: each runs atomically on the server, in one round trip.

========  ==============================================================================
script    does
========  ==============================================================================
COMMIT    applies a :class:`~patgate.middleware.store.plan.Plan`: compare-and-set checks,
          uniqueness and limits, the writes, PUBLISH of invalidations (stamped with their
          position and commit time), XADD of events
LOOKUP    digest → token record, owner's user record, org record (the cache-miss path)
PAGES     newest-first rows of many zsets after their cursors (the org admin listing)
TOUCH     last-used entries, only for tokens that still exist
========  ==============================================================================
"""

from __future__ import annotations

__all__ = ["COMMIT", "LOOKUP", "PAGES", "PAGES_BATCH", "TOUCH"]

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
for _, l in ipairs(plan.l or {}) do
  if redis.call('ZCARD', l[1]) >= tonumber(l[2]) then return {'limit', l[1]} end
end
for _, w in ipairs(plan.hd or {}) do redis.call('HDEL', w[1], w[2]) end
for _, w in ipairs(plan.zr or {}) do redis.call('ZREM', w[1], w[2]) end
for _, w in ipairs(plan.sr or {}) do redis.call('SREM', w[1], w[2]) end
for _, w in ipairs(plan.hs or {}) do redis.call('HSET', w[1], w[2], w[3]) end
for _, w in ipairs(plan.za or {}) do redis.call('ZADD', w[1], w[2], w[3]) end
for _, w in ipairs(plan.sa or {}) do redis.call('SADD', w[1], w[2]) end
for _, w in ipairs(plan.sp or {}) do
  if redis.call('EXISTS', w[3]) == 0 then redis.call('SREM', w[1], w[2]) end
end
if plan.p then
  -- Stamp each message ' <position> <commit time>' (plan.py documents the format): the
  -- position INCRs plan.q once per message; the time is the server's, in microseconds,
  -- built as digits (tostring of a 16-digit number prints it in exponent form).
  local t = redis.call('TIME')
  local us = t[1] .. string.format('%06d', tonumber(t[2]))
  local pos = redis.call('INCRBY', plan.q, #plan.p) - #plan.p
  for i, m in ipairs(plan.p) do
    redis.call('PUBLISH', ARGV[3], m .. ' ' .. string.format('%d', pos + i) .. ' ' .. us)
  end
end
for _, e in ipairs(plan.e or {}) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', e)
end
return {'ok'}
"""

# The index value is "<token id> <org id>" or "<token id> <org id> <owning user id>", so
# the script can fetch the owner's user record (``<org>/<user>``) and the org record —
# what the effective scopes are computed from (middleware.grants) — without decoding the
# token in Lua. Still one round trip per cache miss.
LOOKUP = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local id, org, user = string.match(v, '^(%S+) (%S+) ?(%S*)$')
if not id then return false end
local rec = redis.call('HGET', KEYS[2], id)
if not rec then return false end
local u = ''
if user ~= '' then u = redis.call('HGET', KEYS[3], org .. '/' .. user) or '' end
return {rec, u, redis.call('HGET', KEYS[4], org) or ''}
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
TOUCH = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""
