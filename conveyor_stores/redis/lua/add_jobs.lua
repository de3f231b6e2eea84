-- add_jobs: validate every group first, then write; all or nothing.
-- ARGV[3] = number of groups; per group: job count, then per job 17 fields:
-- id, base, queue, name, data, opts, state, priority, lifo, delay, keep_completed,
-- keep_failed, group_id, parent_id, parent_queue, parent_base, parent_policy ('' = none).
-- A flow lists parents before children and every parent is in the child's group, so a
-- parent is new here: its dependency order and pending count are counted in Lua and
-- written once (with 'dv': its order set and counters are kept from the start). Only a
-- group's first job may name an existing parent (ADD TO AN EXISTING PARENT): it must be
-- waiting-children or active, and its record is added through dep_put.
local F = 17
local ngroups = tonumber(ARGV[3])
local groups = {}
local seen = {}
local pos = 4
local waiting = 0
for g = 1, ngroups do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local first = pos
  local skip = false
  for j = 1, n do
    local id, base = ARGV[pos], ARGV[pos + 1]
    local jk = base .. 'job:' .. id
    if seen[jk] then
      return redis.error_reply('CONVEYOR_DUPLICATE job id ' .. cjson.encode(id) ..
        ' appears twice for queue ' .. cjson.encode(ARGV[pos + 2]) .. ' in one add')
    end
    seen[jk] = true
    if redis.call('EXISTS', jk) == 1 then
      if j == 1 then
        skip = true
      else
        return redis.error_reply('CONVEYOR_DUPLICATE job id ' .. cjson.encode(id) ..
          ' already exists in queue ' .. cjson.encode(ARGV[pos + 2]))
      end
    end
    if ARGV[pos + 6] == 'waiting' then waiting = waiting + 1 end
    pos = pos + F
  end
  if not skip and ARGV[first + 13] ~= '' then
    local pid, pq = ARGV[first + 13], ARGV[first + 14]
    local pstate = redis.call('HGET', ARGV[first + 15] .. 'job:' .. pid, 'state')
    if not pstate then
      return redis.error_reply('CONVEYOR_NO_PARENT ' .. cjson.encode({ pq, pid }))
    end
    if pstate ~= 'waiting-children' and pstate ~= 'active' then
      return redis.error_reply('CONVEYOR_INVALID_STATE job ' .. cjson.encode(pid) ..
        ' in queue ' .. cjson.encode(pq) .. ' is ' .. pstate ..
        ': only a job that is waiting-children or active can take new children')
    end
  end
  groups[g] = { first, n, skip }
end

-- One block of order numbers for every job that enters waiting here.
local order = 0
if waiting > 0 then order = redis.call('INCRBY', PB .. 'seq', waiting) - waiting end

local written = {}
local queues = {}
local parents = {}
local parent_list = {}
-- Per parent: its order set's key, then (position, child key) pairs not yet written;
-- written a few hundred at a time.
local orders = {}
for g = 1, ngroups do
  local first, n, skip = groups[g][1], groups[g][2], groups[g][3]
  written[g] = skip and 0 or 1
  if not skip then
    for j = 0, n - 1 do
      local p = first + j * F
      local id, base, queue, state = ARGV[p], ARGV[p + 1], ARGV[p + 2], ARGV[p + 6]
      local jk = base .. 'job:' .. id
      local fields = { 'q', queue, 'name', ARGV[p + 3], 'data', ARGV[p + 4],
        'opts', ARGV[p + 5], 'state', state, 'pri', ARGV[p + 7], 'lifo', ARGV[p + 8],
        'delay', ARGV[p + 9], 'att', 0, 'stc', 0, 'cat', NOW_S }
      local nf = #fields
      if ARGV[p + 10] ~= '' then
        fields[nf + 1] = 'kc'; fields[nf + 2] = ARGV[p + 10]; nf = nf + 2
      end
      if ARGV[p + 11] ~= '' then
        fields[nf + 1] = 'kf'; fields[nf + 2] = ARGV[p + 11]; nf = nf + 2
      end
      local g = nil
      if ARGV[p + 12] ~= '' then
        g = ARGV[p + 12]
        fields[nf + 1] = 'grp'; fields[nf + 2] = g; nf = nf + 2
      end
      local member, run_s
      if state == 'waiting' then
        order = order + 1
        if ARGV[p + 8] == '1' then
          member = string.format('0%015d', 999999999999999 - order) .. id
        else
          member = string.format('1%015d', order) .. id
        end
        fields[nf + 1] = 'wm'; fields[nf + 2] = member; nf = nf + 2
      elseif state == 'delayed' then
        run_s = fmt(NOW + tonumber(ARGV[p + 9]))
        fields[nf + 1] = 'run'; fields[nf + 2] = run_s; nf = nf + 2
      end
      local pid = ARGV[p + 13]
      if pid ~= '' and j == 0 then
        fields[nf + 1] = 'pid'; fields[nf + 2] = pid
        fields[nf + 3] = 'pq'; fields[nf + 4] = ARGV[p + 14]
        fields[nf + 5] = 'pb'; fields[nf + 6] = ARGV[p + 15]
        nf = nf + 6
        if ARGV[p + 16] ~= '' then
          fields[nf + 1] = 'pol'; fields[nf + 2] = ARGV[p + 16]; nf = nf + 2
        end
        dep_put(ARGV[p + 15], pid, jk, { q = queue, i = id, b = base, s = 'pending' })
      elseif pid ~= '' then
        local pbase = ARGV[p + 15]
        fields[nf + 1] = 'pid'; fields[nf + 2] = pid
        fields[nf + 3] = 'pq'; fields[nf + 4] = ARGV[p + 14]
        fields[nf + 5] = 'pb'; fields[nf + 6] = pbase
        nf = nf + 6
        if ARGV[p + 16] ~= '' then
          fields[nf + 1] = 'pol'; fields[nf + 2] = ARGV[p + 16]; nf = nf + 2
        end
        local pkey = pbase .. 'job:' .. pid
        local count = parents[pkey]
        if not count then
          count = 0
          parent_list[#parent_list + 1] = pkey
        end
        count = count + 1
        parents[pkey] = count
        redis.call('HSET', pbase .. 'deps:' .. pid, jk,
          cjson.encode({ q = queue, i = id, b = base, s = 'pending', o = count }))
        local ord = orders[pkey]
        if not ord then
          ord = { pbase .. 'dord:' .. pid }
          orders[pkey] = ord
        end
        ord[#ord + 1] = count
        ord[#ord + 1] = jk
        if #ord > 1000 then
          redis.call('ZADD', unpack(ord))
          orders[pkey] = { ord[1] }
        end
      end
      redis.call('HSET', jk, unpack(fields))
      redis.call('ZADD', base .. 'all', NOW_S, id)
      if not queues[queue] then
        queues[queue] = true
        redis.call('SADD', PB .. 'queues', queue)
      end
      emit(base, 'added', id, cjson.encode({ name = ARGV[p + 3] }))
      if state == 'waiting' then
        wait_add(base, g, ARGV[p + 7], member)
        if g then group_count(base, g, state, 1) end
        emit(base, 'waiting', id)
        wake(base)
      elseif state == 'delayed' then
        list_in(base, id, 'delayed', run_s, g)
        emit(base, 'delayed', id, '{"run_at":' .. run_s .. '}')
        wake(base)
      else
        list_in(base, id, 'waiting-children', nil, g)
        emit(base, 'waiting-children', id)
      end
    end
  end
end
for _, pkey in ipairs(parent_list) do
  local ord = orders[pkey]
  if #ord > 1 then redis.call('ZADD', unpack(ord)) end
  redis.call('HSET', pkey, 'pend', parents[pkey], 'dseq', parents[pkey], 'dv', 1)
end
return done(written)
