-- unban: lift one level's automatic ban and forget its bad recipients.
-- KEYS: 1 ban  2 bad-recipient log   Returns 1 if a ban was in force.
local had = redis.call('PTTL', KEYS[1]) > 0
redis.call('DEL', KEYS[1], KEYS[2])
if had then return 1 end
return 0
