-- register: add a network to a node's registry (on Redis Cluster, where the connect
-- script cannot reach the node's key).
-- KEYS: 1 the node's network registry   ARGV: 1 network tag  2 registry ttl ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
