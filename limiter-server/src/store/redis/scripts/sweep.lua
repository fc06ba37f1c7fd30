-- sweep: renew one node's live leases in one network and free those of its other
-- epochs, at both levels.
-- KEYS: 1 leases:network
-- ARGV: 1 node  2 epoch  3 lease ttl ms  4 key prefix of leases:address  5.. sessions
-- Returns {renewed, freed}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, epoch, ttl, base = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
local function extend(key, at)
  if redis.call('PEXPIRETIME', key) < at then redis.call('PEXPIREAT', key, at) end
end
local prefix = node .. '\031'
local held = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local renewed, freed = 0, 0
for i = 1, #held, 2 do
  local m = held[i]
  if string.sub(m, 1, #prefix) == prefix then
    local e, s, ip = string.match(m, '^[^\031]*\031([^\031]*)\031([^\031]*)\031(.*)$')
    if e ~= epoch then
      redis.call('ZREM', KEYS[1], m)
      redis.call('ZREM', base .. ip, m)
      freed = freed + 1
    elseif want[s] and tonumber(held[i + 1]) > now then
      redis.call('ZADD', KEYS[1], 'XX', now + ttl, m)
      redis.call('ZADD', base .. ip, 'XX', now + ttl, m)
      extend(base .. ip, now + ttl)
      renewed = renewed + 1
    end
  end
end
if renewed > 0 then extend(KEYS[1], now + ttl) end
return {renewed, freed}
