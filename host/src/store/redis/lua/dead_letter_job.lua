-- Moves a job to the dead letters with a reason.
-- KEYS[1] jobs, KEYS[2] dead.
-- ARGV: id, reason, deliveries, now ms, group.
-- Returns 1 when moved, 0 when the job is not in the queue.
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return 0 end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
redis.call('XADD', KEYS[2], '*', 'kind', 'job', 'uuid', f['uuid'] or '',
  'replay', f['replay'] or '', 'payload', f['payload'] or '', 'reason', ARGV[2],
  'deliveries', ARGV[3], 'dead', ARGV[4])
redis.pcall('XACK', KEYS[1], ARGV[5], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
