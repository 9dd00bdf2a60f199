-- The sliding-window log of konsilium/tenancy/window.py as one Redis script (Redis >= 7.0), so an
-- acquire is one round trip and atomic across replicas. The semantics are window.py's, to the
-- letter (its docstring says why a log; tests/test_redis_limiter.py checks the two agree).
--
-- KEYS[1] request log, ZSET: member id, score admit time (ms)
-- KEYS[2] token log, ZSET: member "id:cost", score admit time (ms)
-- KEYS[3] leases, ZSET: member id, score expiry (ms)
-- KEYS[4] the token log's "sum:count", a string: without it every acquire would parse every
--         entry to add the costs up (O(n) per call, O(n^2) per period for a busy key). The count
--         lets a lost or stale sum (eviction, a hand edit) be noticed and recounted.
-- All four share a cluster hash tag, and each expires when the last thing in it would leave.
--
-- ARGV[1] op, ARGV[2] now in ms ('' = the server's TIME, one clock for every replica),
-- ARGV[3] period ms, then per op:
--   acquire  rpm, tpm, max_parallel (0 = not set), cost, id, lease ttl ms
--   release  id, reserved, actual (repeated: every request of this key that ended meanwhile)
--   renew    lease ttl ms, id...
-- acquire returns {admitted 0|1, refusal (0 none, 1 requests, 2 tokens, 3 parallel,
--   4 tokens_too_large), retry ms, limit, remaining, reset ms (requests), limit, remaining,
--   reset ms (tokens)}, -1 for none; release and renew return 1.

local req, tok, lease, sums = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, period = ARGV[1], tonumber(ARGV[3])
local now = tonumber(ARGV[2])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function cost_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

local function member_of(id, cost)
  return string.format('%s:%d', id, cost)
end

-- Score of the oldest (index 0) or newest (index -1) member, or nil when the set is empty.
local function score_at(key, index)
  local found = redis.call('ZRANGE', key, index, index, 'WITHSCORES')
  if #found == 0 then return nil end
  return tonumber(found[2])
end

-- Expire `key` when its newest entry leaves (`life` ms after its score).
local function expire_after_newest(key, life)
  local newest = score_at(key, -1)
  if newest then redis.call('PEXPIRE', key, math.max(1, newest + life - now)) end
end

local function save_sum(sum, count)
  if count == 0 then
    redis.call('DEL', sums)
    return
  end
  local ttl = redis.call('PTTL', tok)
  if ttl > 0 then
    redis.call('SET', sums, string.format('%d:%d', sum, count), 'PX', ttl)
  else
    redis.call('SET', sums, string.format('%d:%d', sum, count))
  end
end

-- Drop what has left the window and the dead leases; return the token log's sum and count.
local function trim()
  local horizon = now - period
  redis.call('ZREMRANGEBYSCORE', req, '-inf', horizon)
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  local gone = redis.call('ZRANGE', tok, '-inf', horizon, 'BYSCORE')
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', tok, '-inf', horizon) end
  local count = redis.call('ZCARD', tok)
  local stored = redis.call('GET', sums)
  local sum, n = 0, 0 -- no sum stored: right for an empty log, recounted otherwise
  if stored then
    local s, c = string.match(stored, '^(%-?%d+):(%d+)$')
    sum, n = tonumber(s) or 0, (tonumber(c) or -1) - #gone
    for _, member in ipairs(gone) do sum = sum - cost_of(member) end
  end
  if n ~= count then -- lost or out of step: recount
    sum = 0
    for _, member in ipairs(redis.call('ZRANGE', tok, 0, -1)) do sum = sum + cost_of(member) end
  end
  if n ~= count or #gone > 0 then save_sum(sum, count) end
  return sum, count
end

-- When, from now, enough of the oldest token entries have left to free `excess` tokens.
local function tokens_wait(excess)
  local freed, start, chunk = 0, 0, 64
  while true do
    local page = redis.call('ZRANGE', tok, start, start + chunk - 1, 'WITHSCORES')
    if #page == 0 then error('window.lua: the token log sum is out of step with its entries') end
    for i = 1, #page, 2 do
      freed = freed + cost_of(page[i])
      if freed >= excess then return tonumber(page[i + 1]) + period - now end
    end
    start = start + chunk
  end
end

-- The refusing limit that comes first and the max of the waits, or 0, -1 when all pass.
local function refusal(rpm, tpm, max_parallel, cost, sum)
  local code, wait = 0, -1
  local requests = redis.call('ZCARD', req)
  if rpm > 0 and requests >= rpm then
    local kth = redis.call('ZRANGE', req, requests - rpm, requests - rpm, 'WITHSCORES')
    code, wait = 1, tonumber(kth[2]) + period - now
  end
  if tpm > 0 and sum + cost > tpm then
    if code == 0 then code = 2 end
    wait = math.max(wait, tokens_wait(sum + cost - tpm))
  end
  if max_parallel > 0 and redis.call('ZCARD', lease) >= max_parallel then
    if code == 0 then code = 3 end
    wait = math.max(wait, score_at(lease, 0) - now)
  end
  return code, wait
end

local function admit(rpm, tpm, max_parallel, cost, id, ttl, sum, count)
  if rpm > 0 then
    redis.call('ZADD', req, now, id)
    expire_after_newest(req, period)
  end
  if tpm > 0 then
    redis.call('ZADD', tok, now, member_of(id, cost))
    expire_after_newest(tok, period)
    sum, count = sum + cost, count + 1
    save_sum(sum, count)
  end
  if max_parallel > 0 then
    redis.call('ZADD', lease, now + ttl, id)
    expire_after_newest(lease, 0)
  end
  return sum
end

local function reset_of(key)
  local oldest = score_at(key, 0)
  if oldest then return oldest + period - now end
  return 0
end

local function acquire()
  local rpm, tpm, max_parallel = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local cost, id, ttl = tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
  local sum, count = trim()
  local code, wait = 0, -1
  if tpm > 0 and cost > tpm then
    code = 4
  else
    code, wait = refusal(rpm, tpm, max_parallel, cost, sum)
    if code == 0 then sum = admit(rpm, tpm, max_parallel, cost, id, ttl, sum, count) end
  end
  local reply = {code == 0 and 1 or 0, code, wait, -1, -1, -1, -1, -1, -1}
  if rpm > 0 then
    reply[4], reply[5], reply[6] = rpm, math.max(0, rpm - redis.call('ZCARD', req)), reset_of(req)
  end
  if tpm > 0 then
    reply[7], reply[8], reply[9] = tpm, math.max(0, tpm - sum), reset_of(tok)
  end
  return reply
end

local function release()
  local sum, count = trim()
  local changed = false
  for i = 4, #ARGV, 3 do -- one or more requests of this key, in the order they ended
    local id, reserved, actual = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    redis.call('ZREM', lease, id)
    local held = member_of(id, reserved)
    local t = redis.call('ZSCORE', tok, held)
    if t then
      redis.call('ZREM', tok, held)
      redis.call('ZADD', tok, t, member_of(id, actual))
      sum, changed = sum - reserved + actual, true
    end
  end
  if changed then -- a ZREM of the last entry deleted the key: the ZADD made it again, without its expiry
    expire_after_newest(tok, period)
    save_sum(sum, count)
  end
  return 1
end

local function renew()
  local expiry = now + tonumber(ARGV[4])
  trim()
  for i = 5, #ARGV do redis.call('ZADD', lease, 'XX', expiry, ARGV[i]) end
  expire_after_newest(lease, 0)
  return 1
end

if op == 'acquire' then return acquire() end
if op == 'release' then return release() end
if op == 'renew' then return renew() end
return redis.error_reply('window.lua: unknown op ' .. tostring(op))
