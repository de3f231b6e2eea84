-- add_children: add_jobs under the lock of the active parent. The arguments of add_jobs
-- come first (ARGV[3] = number of groups, ...), then the parent's id and the caller's
-- lock token; KEYS[1] is the parent's queue base. Every group's first job names that
-- parent (add_jobs' own body checks and writes them, ADD TO AN EXISTING PARENT).
local PID, TOKEN = ARGV[#ARGV - 1], ARGV[#ARGV]
local held = redis.call('HMGET', QB .. 'job:' .. PID, 'state', 'tok')
if held[1] ~= 'active' or held[2] ~= TOKEN then
  return redis.error_reply('CONVEYOR_LOCK_LOST job ' .. cjson.encode(PID) ..
    ' is not active with this lock token: only the worker running it can add children to it')
end

local function add_children()
@ADD_JOBS
end

return add_children()
