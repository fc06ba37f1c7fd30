-- node: a heartbeat's first step. Records the node's epoch and the networks it holds
-- leases in; says which networks to sweep when the epoch changed or when sessions
-- came without their address.
-- KEYS: 1 the node's epoch  2 the node's network registry
-- ARGV: 1 epoch  2 registry ttl ms  3 want all networks (0/1)  4.. network tags seen
-- Returns {0 same epoch | 1 first epoch seen | 2 epoch changed, {network tags}}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reg_ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - reg_ttl)
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', reg_ttl)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[2], now, ARGV[i])
end
if #ARGV >= 4 then redis.call('PEXPIRE', KEYS[2], reg_ttl) end
local state = 0
if not old then state = 1 elseif old ~= ARGV[1] then state = 2 end
local nets = {}
if state ~= 0 or ARGV[3] == '1' then
  nets = redis.call('ZRANGE', KEYS[2], 0, -1)
end
return {state, nets}
