-- connect: admit a new session, or say why not. One atomic step over both levels of
-- one network (all keys share its hash tag). Time is Redis time.
--
-- Leases live at network level in two sorted sets with the same members,
-- "ip␟node␟epoch␟session": `leases` scored by expiry (to expire them), `index` all
-- scored 0 (to count one address's leases by lexical range).
--
-- KEYS: 1 ban:address  2 ban:network  3 rate:address  4 rate:network  5 leases
--       6 index  7 bad:address  8 bad:network
--       then, on one server only, as ARGV 11 and 12 say:
--       the node's network registry; the node's session index entry of this session
-- ARGV: 1 lease member  2 rate limit address  3 rate limit network  4 window ms
--       5 conn limit address  6 conn limit network  7 lease ttl ms  8 shadow (0/1)
--       9 address  10 bad window ms
--       11 write the registry (1: the limiter has not registered this network for the
--          node within the lease TTL)  12 write the session index (1: admitted
--          without an epoch)  13 network tag  14 registry ttl ms  15 index ttl ms
-- Returns {code, level, value, bad address, bad network, hold}:
--   code 0 admitted, 1 retry of an admitted session, 2 banned, 3 rate, 4 conn;
--   level 1 address, 2 network; value: ban ms left, or the count that refused;
--   the bad recipients of both levels in the bad window, read, not counted (a
--   tarpitted source's session is tarpitted from its first RCPT); for a ban or rate
--   refusal, the ms it holds whatever comes (the ban's time left; until the oldest
--   entry of the refusing log leaves the window: refusals are not logged), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local rate_a, rate_n = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local conn_a, conn_n = tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
local shadow = ARGV[8] == '1'
local ip = ARGV[9]
local bad_from = '(' .. (now - tonumber(ARGV[10]))
local function bad()
  return redis.call('ZCOUNT', KEYS[7], bad_from, '+inf'),
    redis.call('ZCOUNT', KEYS[8], bad_from, '+inf')
end

local lease_until = redis.call('ZSCORE', KEYS[5], member)
if lease_until and tonumber(lease_until) > now then
  local bad_a, bad_n = bad()
  return {1, 0, 0, bad_a, bad_n, 0}
end

-- Expired leases go where they could change the answer or pile up: a network with
-- a session limit sweeps only when a count reaches a limit (so its sets never hold
-- more than the limit); one without, or in shadow mode (which admits past limits),
-- on every Connect.
local swept = false
local function sweep()
  swept = true
  local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    for i = 1, #gone, 500 do
      redis.call('ZREM', KEYS[6], unpack(gone, i, math.min(i + 499, #gone)))
    end
  end
end
if conn_n == 0 or shadow then sweep() end

local code, level, value, hold = 0, 0, 0, 0
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  code, level, value, hold = 2, 1, left, left
else
  left = redis.call('PTTL', KEYS[2])
  if left > 0 then code, level, value, hold = 2, 2, left, left end
end

-- Sliding log of admitted connections: at most `limit` in ANY window. Entries older
-- than the window are not counted; the log is cut to its limit when it grows.
local since = '(' .. (now - window)
-- A refusal by rate holds until the oldest entry in the window leaves it.
local function held(key)
  local oldest = redis.call('ZRANGEBYSCORE', key, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return tonumber(oldest[2]) + window - now
end
if code == 0 and rate_a > 0 then
  local c = redis.call('ZCOUNT', KEYS[3], since, '+inf')
  if c >= rate_a then code, level, value, hold = 3, 1, c, held(KEYS[3]) end
end
if code == 0 and rate_n > 0 then
  local c = redis.call('ZCOUNT', KEYS[4], since, '+inf')
  if c >= rate_n then code, level, value, hold = 3, 2, c, held(KEYS[4]) end
end
-- Live sessions: a count at the limit may hold expired leases; swept, it is exact.
local function sessions(count, limit)
  local c = count()
  if c >= limit and not swept then
    sweep()
    c = count()
  end
  return c
end
if code == 0 and conn_a > 0 then
  local c = sessions(function()
    return redis.call('ZLEXCOUNT', KEYS[6], '[' .. ip .. '\031', '(' .. ip .. '\032')
  end, conn_a)
  if c >= conn_a then code, level, value = 4, 1, c end
end
if code == 0 and conn_n > 0 then
  local c = sessions(function() return redis.call('ZCARD', KEYS[5]) end, conn_n)
  if c >= conn_n then code, level, value = 4, 2, c end
end
if code ~= 0 and not shadow then
  return {code, level, value, 0, 0, hold}
end

-- Admit. Logs never hold more than their limit: the newest `limit` entries are all
-- that "fewer than limit in the window" needs.
local function log(key, limit)
  redis.call('ZADD', key, now, member)
  redis.call('ZREMRANGEBYRANK', key, 0, -limit - 1)
  redis.call('PEXPIRE', key, window)
end
if rate_a > 0 then log(KEYS[3], rate_a) end
if rate_n > 0 then log(KEYS[4], rate_n) end
-- The lease sets live as long as their longest lease; they always hold the same
-- members and are extended together, so one expiry tells both.
redis.call('ZADD', KEYS[5], now + ttl, member)
redis.call('ZADD', KEYS[6], 0, member)
if redis.call('PEXPIRETIME', KEYS[5]) < now + ttl then
  redis.call('PEXPIREAT', KEYS[5], now + ttl)
  redis.call('PEXPIREAT', KEYS[6], now + ttl)
end

-- On one server the node's registry (which lets a heartbeat with a new epoch find this
-- network again) is written here, atomically with the lease, and cut to the networks
-- of the last registry TTL; and so is the session index (which lets a heartbeat that
-- names a session without its address find it).
local k = 9
if ARGV[11] == '1' then
  local reg_ttl = tonumber(ARGV[14])
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now - reg_ttl)
  redis.call('ZADD', KEYS[k], now, ARGV[13])
  redis.call('PEXPIRE', KEYS[k], reg_ttl)
  k = k + 1
end
if ARGV[12] == '1' then
  redis.call('SET', KEYS[k], ARGV[13] .. '\031' .. ip, 'PX', tonumber(ARGV[15]))
end
local bad_a, bad_n = bad()
return {code, level, value, bad_a, bad_n, 0}
