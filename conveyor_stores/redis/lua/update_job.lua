-- Small changes of one job. ARGV[3] op, ARGV[4] id, ARGV[5..] op arguments.
-- op: progress (text), data (text), log (line), priority (priority, lifo),
--     delay (run_at), promote, retry, remove.
local op, id = ARGV[3], ARGV[4]
local jk = QB .. 'job:' .. id
local state = redis.call('HGET', jk, 'state')
if not state then
  if op == 'remove' then return 0 end
  return not_found(id)
end
if op == 'progress' then
  redis.call('HSET', jk, 'prog', ARGV[5])
  emit(QB, 'progress', id, cjson.encode({ progress = ARGV[5] }))
elseif op == 'data' then
  redis.call('HSET', jk, 'data', ARGV[5])
elseif op == 'log' then
  return redis.call('RPUSH', QB .. 'logs:' .. id, ARGV[5])
elseif op == 'priority' then
  redis.call('HSET', jk, 'pri', ARGV[5], 'lifo', ARGV[6])
  if state == 'waiting' then
    unlist(QB, id, jk, 'waiting')
    place_waiting(QB, id, jk)
  end
elseif op == 'delay' then
  if state ~= 'delayed' then
    return bad_state('job ' .. cjson.encode(id) .. ' is ' .. state ..
      ", only a delayed job's delay can change")
  end
  redis.call('HSET', jk, 'run', ARGV[5])
  redis.call('ZADD', QB .. 'delayed', ARGV[5], id)
  wake(QB)
elseif op == 'promote' then
  if state ~= 'delayed' then
    return bad_state('job ' .. cjson.encode(id) .. ' is ' .. state ..
      ', only a delayed job can be promoted')
  end
  enter_waiting(QB, id, jk, 'delayed')
elseif op == 'retry' then
  if state ~= 'failed' then
    return bad_state('job ' .. cjson.encode(id) .. ' is ' .. state ..
      ', only a failed job can be retried')
  end
  retry_one(QB, id, jk, state)
elseif op == 'remove' then
  if state == 'active' then
    return bad_state('job ' .. cjson.encode(id) .. ' is active and cannot be removed')
  end
  remove_tree(QB, id)
end
return done(1)
