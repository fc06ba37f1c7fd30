-- bans: the ban in force on an address or its network, if any (Lookup). Reads only.
-- KEYS: 1 ban:address  2 ban:network
-- Returns {level (0 none, 1 address, 2 network), ms left, offence}
for lvl = 1, 2 do
  local left = redis.call('PTTL', KEYS[lvl])
  if left > 0 then
    return {lvl, left, tonumber(redis.call('GET', KEYS[lvl])) or 1}
  end
end
return {0, 0, 0}
