-- release_many: free the leases of many ended sessions (the agent's batched
-- Disconnects), in one network or, on one server, several. Freeing twice is harmless.
-- KEYS: for each network, 1 leases  2 index
-- ARGV: for each network, how many members follow, then those lease members
-- Returns how many leases were held.
local freed, a = 0, 1
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + n, 500 do
    local last = math.min(i + 499, a + n)
    freed = freed + redis.call('ZREM', KEYS[k], unpack(ARGV, i, last))
    redis.call('ZREM', KEYS[k + 1], unpack(ARGV, i, last))
  end
  a = a + n + 1
end
return freed
