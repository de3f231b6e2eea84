-- Job schedulers of one queue. ARGV[3] op, then op arguments.
-- op: upsert (id, timing, template, next_run_at or ''), remove (id), list, due (count).
-- Keys: hash "<base>sched:<id>" (timing, tpl, next ('' once exhausted), it), the set of
-- ids "<base>scheds" (all scores 0: ordered by id) and "<base>sched_next" (id by
-- next_run_at, only while there is one).
local op = ARGV[3]

local function scheduler_rows(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', QB .. 'sched:' .. id, 'timing', 'tpl', 'next', 'it')
    out[#out + 1] = { id, v[1], v[2], v[3], v[4] }
  end
  return out
end

if op == 'upsert' then
  local id, timing, tpl, next_s = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local sk = QB .. 'sched:' .. id
  local old = redis.call('HGET', sk, 'timing')
  if old == timing then
    redis.call('HSET', sk, 'tpl', tpl)
    return 1
  end
  redis.call('HSET', sk, 'timing', timing, 'tpl', tpl, 'next', next_s)
  if not old then redis.call('HSET', sk, 'it', 0) end
  if next_s == '' then
    redis.call('ZREM', QB .. 'sched_next', id)
  else
    redis.call('ZADD', QB .. 'sched_next', next_s, id)
  end
  redis.call('ZADD', QB .. 'scheds', 0, id)
  return 1
elseif op == 'remove' then
  local id = ARGV[4]
  redis.call('ZREM', QB .. 'scheds', id)
  redis.call('ZREM', QB .. 'sched_next', id)
  return redis.call('DEL', QB .. 'sched:' .. id)
elseif op == 'list' then
  return scheduler_rows(redis.call('ZRANGE', QB .. 'scheds', 0, -1))
elseif op == 'due' then
  return scheduler_rows(redis.call('ZRANGE', QB .. 'sched_next', 0, tonumber(ARGV[4]) - 1))
end
return redis.error_reply('unknown scheduler operation')
