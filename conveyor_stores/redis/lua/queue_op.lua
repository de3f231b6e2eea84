-- Operations on a whole queue. ARGV[3] op, then op arguments.
-- op: pause (queue name), resume, promote_all, retry_all (state), drain (include_delayed 1/0),
--     clean (state, older_than, limit or ''), obliterate (force 1/0, queue name),
--     concurrency (n or ''), rate_limit (until), group_limits (concurrency, rate max,
--     rate duration; '' = none), group_counts.
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
elseif op == 'group_limits' then
  -- The group limits (GROUPS) in the queue's meta; idle workers look again.
  local meta = QB .. 'meta'
  if ARGV[4] == '' then
    redis.call('HDEL', meta, 'gconc')
  else
    redis.call('HSET', meta, 'gconc', ARGV[4])
  end
  if ARGV[5] == '' then
    redis.call('HDEL', meta, 'grmax', 'grdur')
  else
    redis.call('HSET', meta, 'grmax', ARGV[5], 'grdur', ARGV[6])
  end
  -- Groups held back by the old limits are looked at again by the next take.
  local held = redis.call('SMEMBERS', QB .. 'gmax')
  for _, g in ipairs(redis.call('ZRANGE', QB .. 'glim', 0, -1)) do held[#held + 1] = g end
  for _, g in ipairs(held) do
    redis.call('ZADD', QB .. 'gready', redis.call('HGET', QB .. 'gsrv', g) or 0, g)
  end
  redis.call('DEL', QB .. 'gmax', QB .. 'glim')
  wake(QB)
  return done(1)
elseif op == 'group_counts' then
  -- {group, {state, count, ...}, ...} for every group with a job.
  local out = {}
  for _, g in ipairs(redis.call('SMEMBERS', QB .. 'groups')) do
    out[#out + 1] = g
    out[#out + 1] = redis.call('HGETALL', QB .. 'gn:' .. g)
  end
  return out
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
  remove_all(waiting_ids(QB))
  if ARGV[4] == '1' then remove_all(redis.call('ZRANGE', QB .. 'delayed', 0, -1)) end
  emit(QB, 'drained', nil, '{"count":' .. removed .. '}')
  return done(removed)
elseif op == 'clean' then
  local state, older_than = ARGV[4], tonumber(ARGV[5])
  local limit = tonumber(ARGV[6])
  local candidates = {}
  if state == 'waiting' then
    candidates = waiting_ids(QB)
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
  local ids = waiting_ids(QB)
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
  -- GROUPS: lanes, counts, served numbers and windows (limits go with the meta).
  for _, g in ipairs(redis.call('SMEMBERS', QB .. 'groups')) do
    redis.call('DEL', QB .. 'gn:' .. g, QB .. 'gw:' .. g)
  end
  local lanes = redis.call('ZRANGE', QB .. 'gready', 0, -1)
  for _, g in ipairs(redis.call('ZRANGE', QB .. 'glim', 0, -1)) do lanes[#lanes + 1] = g end
  for _, g in ipairs(redis.call('SMEMBERS', QB .. 'gmax')) do lanes[#lanes + 1] = g end
  for _, g in ipairs(lanes) do redis.call('DEL', QB .. 'gw:' .. g) end
  redis.call('DEL', QB .. 'groups', QB .. 'gready', QB .. 'gmax', QB .. 'glim', QB .. 'gwait',
    QB .. 'gsrv', QB .. 'gwin')
  redis.call('DEL', QB .. 'meta', QB .. 'marker', QB .. 'm:completed', QB .. 'm:failed',
    QB .. 'mm:completed', QB .. 'mm:failed')
  redis.call('SREM', PB .. 'queues', ARGV[5])
  return done(1)
end
return redis.error_reply('unknown queue operation')
