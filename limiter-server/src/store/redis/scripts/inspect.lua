-- inspect: one source's counters at both levels, counting nothing (Explain).
-- KEYS: 1 ban:address  2 ban:network  3 rate:address  4 rate:network  5 leases
--       6 index  7 bad:address  8 bad:network
-- ARGV: 1 rate window ms  2 bad-recipient window ms  3 address
-- Returns {connections a, n, sessions a, n, bad a, n, ban ms a, offence a, ban ms n, offence n}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ban(key)
  local left = redis.call('PTTL', key)
  if left > 0 then return left, tonumber(redis.call('GET', key)) or 1 end
  return 0, 0
end
local ba, oa = ban(KEYS[1])
local bn, on = ban(KEYS[2])
local since_rate = '(' .. (now - tonumber(ARGV[1]))
local since_bad = '(' .. (now - tonumber(ARGV[2]))
local ip = ARGV[3]
local sa = 0
for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[6], '[' .. ip .. '\031', '(' .. ip .. '\032')) do
  local exp = redis.call('ZSCORE', KEYS[5], m)
  if exp and tonumber(exp) > now then sa = sa + 1 end
end
return {
  redis.call('ZCOUNT', KEYS[3], since_rate, '+inf'),
  redis.call('ZCOUNT', KEYS[4], since_rate, '+inf'),
  sa,
  redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf'),
  redis.call('ZCOUNT', KEYS[7], since_bad, '+inf'),
  redis.call('ZCOUNT', KEYS[8], since_bad, '+inf'),
  ba, oa, bn, on,
}
