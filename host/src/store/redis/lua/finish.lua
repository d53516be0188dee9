-- Acks and removes a finished job.
-- KEYS[1] jobs.
-- ARGV: id, group.
-- Returns the number of entries removed (XDEL).
redis.pcall('XACK', KEYS[1], ARGV[2], ARGV[1])
return redis.call('XDEL', KEYS[1], ARGV[1])
