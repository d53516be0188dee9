-- Drops every hold of a holder on a name.
-- KEYS[1] shared, KEYS[2] exclusive (as in hold.lua).
-- ARGV: holder.
-- Returns 1.
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
