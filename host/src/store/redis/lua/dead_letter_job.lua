-- Moves a job to the dead letters with a reason.
-- KEYS[1] jobs, KEYS[2] dead.
-- ARGV: id, reason, deliveries, now ms, group, kind ('job', or 'damaged' for an entry that is
-- not a job the host can read; its fields are kept as they were found).
-- Returns 1 when moved, 0 when the job is not in the queue.
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return 0 end
local kind = ARGV[6] or 'job'
if kind == 'damaged' then
  -- At most 64 of its fields are kept (unpack's stack is bounded); 'fields' says how many it had.
  local copy = {'kind', 'damaged', 'reason', ARGV[2], 'deliveries', ARGV[3], 'dead', ARGV[4],
    'entry', ARGV[1], 'fields', tostring(#entry[2] / 2)}
  for i = 1, math.min(#entry[2], 128), 2 do
    copy[#copy + 1] = 'raw:' .. tostring(entry[2][i])
    copy[#copy + 1] = entry[2][i + 1]
  end
  redis.call('XADD', KEYS[2], '*', unpack(copy))
else
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  redis.call('XADD', KEYS[2], '*', 'kind', 'job', 'uuid', f['uuid'] or '',
    'replay', f['replay'] or '', 'payload', f['payload'] or '', 'reason', ARGV[2],
    'deliveries', ARGV[3], 'dead', ARGV[4])
end
redis.pcall('XACK', KEYS[1], ARGV[5], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
