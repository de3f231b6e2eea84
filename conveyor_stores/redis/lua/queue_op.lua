-- Operations on a whole queue. ARGV[3] op, then op arguments.
-- op: pause (queue name), resume, promote_all, retry_all (state), drain (include_delayed 1/0),
--     clean (state, older_than, limit or ''), obliterate (force 1/0, queue name),
--     concurrency (n or ''), rate_limit (until).
local op = ARGV[3]
if op == 'pause' then
  redis.call('HSET', QB .. 'meta', 'paused', '1')
  redis.call('SADD', PB .. 'queues', ARGV[4])
  emit(QB, 'paused', nil)
  return 1
elseif op == 'concurrency' then
  -- GLOBAL CONCURRENCY of the queue ('' removes it); idle workers look again.
  if ARGV[4] == '' then
    redis.call('HDEL', QB .. 'meta', 'conc')
  else
    redis.call('HSET', QB .. 'meta', 'conc', ARGV[4])
  end
  wake(QB)
  return done(1)
elseif op == 'rate_limit' then
  -- MANUAL RATE LIMIT: a later time than the queue holds replaces it.
  local held = redis.call('HGET', QB .. 'meta', 'lim')
  if not held or tonumber(ARGV[4]) > tonumber(held) then
    redis.call('HSET', QB .. 'meta', 'lim', ARGV[4])
  end
  return 1
elseif op == 'resume' then
  redis.call('HDEL', QB .. 'meta', 'paused')
  emit(QB, 'resumed', nil)
  wake(QB)
  return done(1)
elseif op == 'promote_all' then
  local ids = redis.call('ZRANGE', QB .. 'delayed', 0, -1)
  for _, id in ipairs(ids) do enter_waiting(QB, id, QB .. 'job:' .. id, 'delayed') end
  return done(#ids)
elseif op == 'retry_all' then
  local state = ARGV[4]
  local ids = redis.call('ZREVRANGE', QB .. SETS[state], 0, -1)
  for _, id in ipairs(ids) do retry_one(QB, id, QB .. 'job:' .. id, state) end
  return done(#ids)
elseif op == 'drain' then
  -- Waiting jobs first, then the delayed ones as they are after that (a parent released
  -- by a removal may have entered delayed meanwhile), as the reference engine does.
  local removed = 0
  local function remove_all(ids)
    for _, id in ipairs(ids) do
      if redis.call('EXISTS', QB .. 'job:' .. id) == 1 then
        remove_tree(QB, id)
        removed = removed + 1
      end
    end
  end
  local waiting = {}
  for _, m in ipairs(redis.call('ZRANGE', QB .. 'wait', 0, -1)) do
    waiting[#waiting + 1] = string.sub(m, 17)
  end
  remove_all(waiting)
  if ARGV[4] == '1' then remove_all(redis.call('ZRANGE', QB .. 'delayed', 0, -1)) end
  emit(QB, 'drained', nil, '{"count":' .. removed .. '}')
  return done(removed)
elseif op == 'clean' then
  local state, older_than = ARGV[4], tonumber(ARGV[5])
  local limit = tonumber(ARGV[6])
  local candidates = {}
  if state == 'waiting' then
    for _, m in ipairs(redis.call('ZRANGE', QB .. 'wait', 0, -1)) do
      candidates[#candidates + 1] = string.sub(m, 17)
    end
  else
    candidates = redis.call('ZRANGE', QB .. SETS[state], 0, -1)
  end
  local stamp = (state == 'completed' or state == 'failed') and 'fat' or 'cat'
  local ids = {}
  for _, id in ipairs(candidates) do
    if limit and #ids >= limit then break end
    local t = tonumber(redis.call('HGET', QB .. 'job:' .. id, stamp) or '')
    if t and t <= older_than then ids[#ids + 1] = id end
  end
  local removed = {}
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', QB .. 'job:' .. id) == 1 then
      remove_tree(QB, id)
      removed[#removed + 1] = id
    end
  end
  if #removed > 0 then emit(QB, 'cleaned', nil, '{"count":' .. #removed .. '}') end
  return done(removed)
elseif op == 'obliterate' then
  if ARGV[4] ~= '1' and redis.call('ZCARD', QB .. 'active') > 0 then
    return bad_state('queue ' .. cjson.encode(ARGV[5]) ..
      ' has active jobs; pass force=True to obliterate it anyway')
  end
  local ids = {}
  for _, m in ipairs(redis.call('ZRANGE', QB .. 'wait', 0, -1)) do
    ids[#ids + 1] = string.sub(m, 17)
  end
  for _, s in ipairs({ 'delayed', 'active', 'completed', 'failed', 'children' }) do
    local list = redis.call('ZRANGE', QB .. s, 0, -1)
    if s == 'completed' or s == 'failed' then
      for k = #list, 1, -1 do ids[#ids + 1] = list[k] end
    else
      for _, id in ipairs(list) do ids[#ids + 1] = id end
    end
  end
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', QB .. 'job:' .. id) == 1 then remove_tree(QB, id) end
  end
  for _, sid in ipairs(redis.call('ZRANGE', QB .. 'scheds', 0, -1)) do
    redis.call('DEL', QB .. 'sched:' .. sid)
  end
  redis.call('DEL', QB .. 'scheds', QB .. 'sched_next', QB .. 'dedup')
  redis.call('DEL', QB .. 'meta', QB .. 'marker', QB .. 'm:completed', QB .. 'm:failed',
    QB .. 'mm:completed', QB .. 'mm:failed')
  redis.call('SREM', PB .. 'queues', ARGV[5])
  return done(1)
end
return redis.error_reply('unknown queue operation')
