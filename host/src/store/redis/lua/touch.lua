-- Resets a claimed job's idle time, when it is still this consumer's.
-- KEYS[1] jobs.
-- ARGV: id, consumer, group.
-- Returns 1 when the job is still this consumer's (idle reset), else 0.
local p = redis.call('XPENDING', KEYS[1], ARGV[3], ARGV[1], ARGV[1], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[3], ARGV[2], 0, ARGV[1], 'JUSTID')
return 1
