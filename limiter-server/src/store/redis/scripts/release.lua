-- release: free one lease (Disconnect). Freeing twice is harmless.
-- KEYS: 1 leases  2 index   ARGV: 1 lease member
local n = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
