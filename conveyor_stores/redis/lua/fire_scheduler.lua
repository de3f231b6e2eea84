-- fire_scheduler: the compare-and-set of one tick. The arguments of add_jobs come first
-- (ARGV[3] = number of groups, 0 or 1 here, ...), then the scheduler id, the tick the
-- caller read and the next tick ('' = none). Only if the stored next tick still equals
-- the one read are the tick's jobs written (add_jobs' own body, which checks every job
-- before it writes any) and the scheduler advanced; otherwise nothing changes.
local SID, EXPECTED, NEXT_S = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local sk = QB .. 'sched:' .. SID
local stored = redis.call('HGET', sk, 'next')
if not stored or stored == '' or tonumber(stored) ~= tonumber(EXPECTED) then
  return 0
end

local function add_tick()
@ADD_JOBS
end

local written = add_tick()
if type(written) == 'table' and written.err then return written end
redis.call('HSET', sk, 'next', NEXT_S)
if NEXT_S == '' then
  redis.call('ZREM', QB .. 'sched_next', SID)
else
  redis.call('ZADD', QB .. 'sched_next', NEXT_S, SID)
end
if tonumber(ARGV[3]) > 0 then redis.call('HINCRBY', sk, 'it', 1) end
return 1
