-- Gives a lease up when it is still this holder's at this epoch.
-- KEYS[1] lease.
-- ARGV: holder, epoch.
-- Returns 1 when released, else 0.
local lease = redis.call('HMGET', KEYS[1], 'holder', 'epoch')
if lease[1] ~= ARGV[1] or lease[2] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
