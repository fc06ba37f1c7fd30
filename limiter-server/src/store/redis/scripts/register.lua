-- register: add networks to a node's registry (on Redis Cluster, where the connect
-- script cannot reach the node's key, and after a heartbeat renewed sessions there),
-- and cut it to the networks of the last registry TTL.
-- KEYS: 1 the node's network registry   ARGV: 1 registry ttl ms  2.. network tags
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reg_ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - reg_ttl)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], reg_ttl)
return #ARGV - 1
