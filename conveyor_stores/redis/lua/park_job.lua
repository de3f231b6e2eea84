-- park_job: PARK of an active job (wait_for_children). ARGV[3] = id, ARGV[4] = token.
-- Returns 1 parked, 0 no pending child (nothing changes), -1 not active with that token.
local id, token = ARGV[3], ARGV[4]
local jk = QB .. 'job:' .. id
local v = redis.call('HMGET', jk, 'state', 'tok', 'cx')
if v[1] ~= 'active' or v[2] ~= token then return -1 end
-- A job with a CANCEL REQUEST goes through FINAL FAILURE instead (reported as parked).
if v[3] then
  final_failure(QB, id, v[3], true)
  return done(1)
end
dep_index(QB, id)
if (tonumber(redis.call('HGET', jk, 'pend') or '0') or 0) <= 0 then return 0 end
-- No attempt is counted; the delay is spent, so its release enters waiting.
move_to(QB, id, jk, 'active', 'waiting-children')
redis.call('HDEL', jk, 'tok', 'lu', 'run')
redis.call('HSET', jk, 'delay', 0)
emit(QB, 'waiting-children', id)
return done(1)
