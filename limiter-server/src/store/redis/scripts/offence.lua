-- offence: check bans; count one offence of a kind at both levels of one network,
-- banning a level that reaches its threshold. The address's log holds offences (each
-- event once); the network's holds the addresses that offended (each once, at its
-- latest offence), so that several addresses of one network ban it. Time is Redis time.
--
-- KEYS: 1 ban:address  2 ban:network  3 kind's log:address  4 kind's log:network
--       5 offences:address  6 offences:network
-- ARGV: 1 event id (a retried call counts once)  2 address  3 window ms
--       4 ban at address (0 off)  5 ban at network (0 off)  6 block for ms
--       7 escalation factor  8 max block ms  9 remember offences ms
-- Returns {ban level (0 none, 1 address, 2 network), ban ms left, new ban (0/1),
--          offence, count address, count network}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

for lvl = 1, 2 do
  local left = redis.call('PTTL', KEYS[lvl])
  if left > 0 then
    return {lvl, left, 0, tonumber(redis.call('GET', KEYS[lvl])) or 1, 0, 0}
  end
end
local window = tonumber(ARGV[3])
local at_a, at_n = tonumber(ARGV[4]), tonumber(ARGV[5])
-- Sliding log, trimmed to what the threshold needs.
local function count(key, member, once, cap)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if once then
    redis.call('ZADD', key, 'NX', now, member)
  else
    redis.call('ZADD', key, now, member)
  end
  local n = redis.call('ZCARD', key)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1)
    n = cap
  end
  redis.call('PEXPIRE', key, window)
  return n
end
local n_a, n_n = 0, 0
if at_a > 0 then n_a = count(KEYS[3], ARGV[1], true, at_a) end
if at_n > 0 then n_n = count(KEYS[4], ARGV[2], false, at_n) end

local function ban(lvl, ban_key, off_key, log_key)
  local off = redis.call('INCR', off_key)
  redis.call('PEXPIRE', off_key, tonumber(ARGV[9]))
  local len = tonumber(ARGV[6]) * tonumber(ARGV[7]) ^ (math.min(off, 65) - 1)
  len = math.floor(math.max(1, math.min(len, tonumber(ARGV[8]))))
  redis.call('SET', ban_key, off, 'PX', len)
  -- A fresh start once the ban is over.
  redis.call('DEL', log_key)
  return {lvl, len, 1, off, n_a, n_n}
end
-- The network first: its ban covers the address, and an address banned on its own
-- would otherwise keep the network from ever reaching its threshold.
if at_n > 0 and n_n >= at_n then
  return ban(2, KEYS[2], KEYS[6], KEYS[4])
end
if at_a > 0 and n_a >= at_a then
  return ban(1, KEYS[1], KEYS[5], KEYS[3])
end
return {0, 0, 0, 0, n_a, n_n}
