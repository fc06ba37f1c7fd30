-- sweep: renew one node's live leases in one network and free those of its other
-- epochs. Leases taken without an epoch (callers that send none on Connect) are never
-- freed by an epoch change; they are renewed by session id or expire by their TTL.
-- KEYS: 1 leases  2 index
-- ARGV: 1 node  2 epoch  3 lease ttl ms  4.. sessions
-- Returns {renewed, freed}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, epoch, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local want = {}
for i = 4, #ARGV do want[ARGV[i]] = true end
local held = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local renewed, freed = 0, 0
for i = 1, #held, 2 do
  local m = held[i]
  local n, e, s = string.match(m, '^[^\031]*\031([^\031]*)\031([^\031]*)\031(.*)$')
  if n == node then
    if e ~= epoch and e ~= '' then
      redis.call('ZREM', KEYS[1], m)
      redis.call('ZREM', KEYS[2], m)
      freed = freed + 1
    elseif want[s] and tonumber(held[i + 1]) > now then
      redis.call('ZADD', KEYS[1], 'XX', now + ttl, m)
      renewed = renewed + 1
    end
  end
end
if renewed > 0 then
  for k = 1, 2 do
    if redis.call('PEXPIRETIME', KEYS[k]) < now + ttl then
      redis.call('PEXPIREAT', KEYS[k], now + ttl)
    end
  end
end
return {renewed, freed}
