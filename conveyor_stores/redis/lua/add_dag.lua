-- add_dag: a DAG's new jobs and their dependencies, all or nothing (StoreInterface.add_dag).
-- ARGV[3] = number of jobs; per job 13 fields: id, base, queue, name, data, opts, state,
-- priority, lifo, delay, keep_completed, keep_failed, group_id ('' = none). Then the number of
-- edges; per edge 7 fields: parent base, parent queue, parent id, child base, child queue,
-- child id, policy. Everything is checked before anything is written.
local F, E = 13, 7
local njobs = tonumber(ARGV[3])

-- After the edges: the number of deduplication entries; per entry 5 fields: index of
-- its job (from 0), deduplication id, ttl ('' = none), extend, replace ('1'/'0').
-- Returns per entry its holder's id and 1 if that is its job, written, else 0 (flat).
-- DEDUPLICATED NODE, decided first (reads only): a live holder stands in for its node,
-- which is left out; edges to the node take the holder as their child, and an edge that
-- then repeats an earlier one is dropped.
local nedges0 = tonumber(ARGV[4 + njobs * F])
local dedup_at = 4 + njobs * F + 1 + nedges0 * E
local ndedup = tonumber(ARGV[dedup_at] or '0')
local holders, gone, result = {}, {}, {}
for n = 0, ndedup - 1 do
  local d = dedup_at + 1 + n * 5
  local p = 4 + tonumber(ARGV[d]) * F
  local hid, hstate = dedup_live(ARGV[p + 1], ARGV[d + 1])
  if hid then
    holders[ARGV[p + 1] .. 'job:' .. ARGV[p]] = hid
    gone[tonumber(ARGV[d])] = { hid, hstate }
    result[#result + 1] = hid
    result[#result + 1] = 0
  else
    result[#result + 1] = ARGV[p]
    result[#result + 1] = 1
  end
end
local kept, kept_edges, pairs_seen, child_id = {}, {}, {}, {}
for k = 0, njobs - 1 do
  if not gone[k] then kept[#kept + 1] = k end
end
local any_held = next(holders) ~= nil
for k = 0, nedges0 - 1 do
  local p = 4 + njobs * F + 1 + k * E
  child_id[k] = ARGV[p + 5]
  local keep = true
  if any_held then
    child_id[k] = holders[ARGV[p + 3] .. 'job:' .. ARGV[p + 5]] or ARGV[p + 5]
    local pair = cjson.encode({ ARGV[p], ARGV[p + 2], ARGV[p + 3], child_id[k] })
    keep = not pairs_seen[pair]
    pairs_seen[pair] = true
  end
  if keep then kept_edges[#kept_edges + 1] = k end
end

local new = {}
for _, k in ipairs(kept) do
  local p = 4 + k * F
  local jk = ARGV[p + 1] .. 'job:' .. ARGV[p]
  if new[jk] then
    return redis.error_reply('CONVEYOR_DUPLICATE job id ' .. cjson.encode(ARGV[p]) ..
      ' appears twice for queue ' .. cjson.encode(ARGV[p + 2]) .. ' in one add')
  end
  if redis.call('EXISTS', jk) == 1 then
    return redis.error_reply('CONVEYOR_DUPLICATE job id ' .. cjson.encode(ARGV[p]) ..
      ' already exists in queue ' .. cjson.encode(ARGV[p + 2]))
  end
  new[jk] = true
end
local first_edge = 4 + njobs * F + 1
for _, k in ipairs(kept_edges) do
  local p = first_edge + k * E
  local ck = ARGV[p + 3] .. 'job:' .. child_id[k]
  if not new[ck] then
    local cs = redis.call('HGET', ck, 'state')
    if not cs then return not_found(cjson.encode({ ARGV[p + 4], child_id[k] })) end
    if cs == 'failed' then
      return bad_state('job ' .. cjson.encode(child_id[k]) .. ' of queue ' ..
        cjson.encode(ARGV[p + 4]) .. ' has failed: retry it before a new job depends on it')
    end
  end
end

local queues = {}
for _, k in ipairs(kept) do
  local p = 4 + k * F
  local id, base, queue, state = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 6]
  local jk = base .. 'job:' .. id
  local fields = { 'q', queue, 'name', ARGV[p + 3], 'data', ARGV[p + 4],
    'opts', ARGV[p + 5], 'state', state, 'pri', ARGV[p + 7], 'lifo', ARGV[p + 8],
    'delay', ARGV[p + 9], 'att', 0, 'stc', 0, 'cat', NOW_S,
    'dv', 1, 'pend', 0, 'dpro', 0, 'dfai', 0, 'dign', 0 }
  if ARGV[p + 10] ~= '' then fields[#fields + 1] = 'kc'; fields[#fields + 1] = ARGV[p + 10] end
  if ARGV[p + 11] ~= '' then fields[#fields + 1] = 'kf'; fields[#fields + 1] = ARGV[p + 11] end
  local g = nil
  if ARGV[p + 12] ~= '' then
    g = ARGV[p + 12]
    fields[#fields + 1] = 'grp'; fields[#fields + 1] = g
  end
  redis.call('HSET', jk, unpack(fields))
  redis.call('ZADD', base .. 'all', NOW_S, id)
  if not queues[queue] then
    queues[queue] = true
    redis.call('SADD', PB .. 'queues', queue)
  end
  emit(base, 'added', id, cjson.encode({ name = ARGV[p + 3] }))
  if state == 'waiting' then
    place_waiting(base, id, jk)
    emit(base, 'waiting', id)
    wake(base)
  elseif state == 'delayed' then
    local run_s = fmt(NOW + tonumber(ARGV[p + 9]))
    redis.call('HSET', jk, 'run', run_s)
    list_in(base, id, 'delayed', run_s, g)
    emit(base, 'delayed', id, '{"run_at":' .. run_s .. '}')
    wake(base)
  else
    list_in(base, id, 'waiting-children', nil, g)
    emit(base, 'waiting-children', id)
  end
end

-- The deduplication entries, in order: taken by their new job, or held by a live job.
for n = 0, ndedup - 1 do
  local d = dedup_at + 1 + n * 5
  local k = tonumber(ARGV[d])
  local p = 4 + k * F
  local held = gone[k]
  if held then
    dedup_hold(ARGV[p + 1], ARGV[d + 1], held[1], held[2], ARGV[d + 2], ARGV[d + 3],
      ARGV[d + 4], ARGV[p + 4], tonumber(ARGV[p + 9]), ARGV[p])
  else
    dedup_take(ARGV[p + 1], ARGV[d + 1], ARGV[p], ARGV[d + 2])
  end
end

-- Per edge: the child's parent link (its first parent, or a further one), then the
-- parent's dependency record (processed at once for a completed child).
for _, k in ipairs(kept_edges) do
  local p = first_edge + k * E
  local pbase, pq, pid = ARGV[p], ARGV[p + 1], ARGV[p + 2]
  local cbase, cq, cid, policy = ARGV[p + 3], ARGV[p + 4], child_id[k], ARGV[p + 6]
  local ck = cbase .. 'job:' .. cid
  local v = redis.call('HMGET', ck, 'pid', 'state', 'rv')
  if v[1] then
    redis.call('RPUSH', cbase .. 'plinks:' .. cid,
      cjson.encode({ b = pbase, q = pq, i = pid, p = policy }))
  else
    redis.call('HSET', ck, 'pid', pid, 'pq', pq, 'pb', pbase, 'pol', policy)
  end
  if v[2] == 'completed' then
    dep_put(pbase, pid, ck, { q = cq, i = cid, b = cbase, s = 'processed', v = v[3] })
  else
    dep_put(pbase, pid, ck, { q = cq, i = cid, b = cbase, s = 'pending' })
  end
end

-- RELEASE CHECK of the new jobs waiting for children, in the order given.
for _, k in ipairs(kept) do
  local p = 4 + k * F
  if ARGV[p + 6] == 'waiting-children' then release_check(ARGV[p + 1], ARGV[p]) end
end
return done(result)
