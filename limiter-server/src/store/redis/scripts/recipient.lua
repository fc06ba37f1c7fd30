-- recipient: check bans; count one rejected recipient at both levels of one network,
-- banning a level that goes past its block threshold. Time is Redis time.
--
-- KEYS: 1 ban:address  2 ban:network  3 bad:address  4 bad:network
--       5 offences:address  6 offences:network
-- ARGV: 1 event id (a retried call counts once)  2 rejected (0/1)  3 window ms
--       4 cap address  5 cap network  6 block after address  7 block after network
--       8 block for ms  9 escalation factor  10 max block ms  11 remember offences ms
-- Returns {ban level (0 none, 1 address, 2 network), ban ms left, new ban (0/1),
--          offence, bad count address, bad count network}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

for lvl = 1, 2 do
  local left = redis.call('PTTL', KEYS[lvl])
  if left > 0 then
    return {lvl, left, 0, tonumber(redis.call('GET', KEYS[lvl])) or 1, 0, 0}
  end
end
local event = ARGV[1]
local window = tonumber(ARGV[3])
if ARGV[2] ~= '1' then
  -- An accepted recipient: only read the counts, for the tarpit.
  local from = '(' .. (now - window)
  return {0, 0, 0, 0, redis.call('ZCOUNT', KEYS[3], from, '+inf'),
          redis.call('ZCOUNT', KEYS[4], from, '+inf')}
end
-- Sliding log of bad recipients, trimmed to what the thresholds need.
local function count(key, cap)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  redis.call('ZADD', key, 'NX', now, event)
  local n = redis.call('ZCARD', key)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1)
    n = cap
  end
  redis.call('PEXPIRE', key, window)
  return n
end
local bad_a = count(KEYS[3], tonumber(ARGV[4]))
local bad_n = count(KEYS[4], tonumber(ARGV[5]))

local function ban(lvl, ban_key, off_key, log_key)
  local off = redis.call('INCR', off_key)
  redis.call('PEXPIRE', off_key, tonumber(ARGV[11]))
  local len = tonumber(ARGV[8]) * tonumber(ARGV[9]) ^ (math.min(off, 65) - 1)
  len = math.floor(math.max(1, math.min(len, tonumber(ARGV[10]))))
  redis.call('SET', ban_key, off, 'PX', len)
  -- A fresh start once the ban is over.
  redis.call('DEL', log_key)
  return {lvl, len, 1, off, bad_a, bad_n}
end
local block_a, block_n = tonumber(ARGV[6]), tonumber(ARGV[7])
if block_a > 0 and bad_a > block_a then
  return ban(1, KEYS[1], KEYS[5], KEYS[3])
end
if block_n > 0 and bad_n > block_n then
  return ban(2, KEYS[2], KEYS[6], KEYS[4])
end
return {0, 0, 0, 0, bad_a, bad_n}
