-- release: free one lease at both levels (Disconnect). Freeing twice is harmless.
-- KEYS: 1 leases:address  2 leases:network   ARGV: 1 lease member
local a = redis.call('ZREM', KEYS[1], ARGV[1])
local n = redis.call('ZREM', KEYS[2], ARGV[1])
return a + n
