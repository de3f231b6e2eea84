-- Shared helpers. Each script gets the header (up to fmt) and only the helpers it uses,
-- so a call does not pay for defining the rest. Conventions:
--   KEYS[1]  the queue's key base, "<prefix>:{<tag>}:" (gives the script its slot)
--   KEYS[2]  the prefix's own key base, "<prefix>:" (order counter, queue set)
--   ARGV[1]  events stream cap (approximate MAXLEN)
--   ARGV[2]  now: POSIX seconds from the caller, also the event timestamp
-- Script-specific arguments start at ARGV[3]. Names, ids and data only ever arrive here
-- as arguments; key names are built from them at run time.
local QB = KEYS[1]
local PB = KEYS[2]
local MAXLEN = ARGV[1]
local NOW_S = ARGV[2]
local NOW = tonumber(NOW_S)

local SETS = {
  delayed = 'delayed', active = 'active', completed = 'completed',
  failed = 'failed', ['waiting-children'] = 'children',
}
local UNSTARTED = { waiting = true, delayed = true, ['waiting-children'] = true }

local function fmt(x) return string.format('%.17g', x) end

-- Events are added uncapped; done() trims each stream it touched once, at the end.
local STREAMS = {}
local function emit(base, etype, id, data)
  local key = base .. 'events'
  STREAMS[key] = true
  if id then
    redis.call('XADD', key, '*', 't', etype, 'j', id, 'd', data or '{}', 'ts', NOW_S)
  else
    redis.call('XADD', key, '*', 't', etype, 'd', data or '{}', 'ts', NOW_S)
  end
end

-- Wake-ups are counted per queue and pushed once, when the script ends (see done()).
local WAKES = {}
local WAKE_ORDER = {}
local function wake(base)
  local n = WAKES[base]
  if not n then
    WAKE_ORDER[#WAKE_ORDER + 1] = base
    n = 0
  end
  WAKES[base] = n + 1
end

-- Every script returns through done(): one marker per job that became takeable (at most
-- 16), so that as many idle workers wake; the list is capped so it cannot grow unread.
local function done(result)
  for _, base in ipairs(WAKE_ORDER) do
    local n = math.min(WAKES[base], 16)
    local marks = {}
    for i = 1, n do marks[i] = '1' end
    if redis.call('LPUSH', base .. 'marker', unpack(marks)) > 64 then
      redis.call('LTRIM', base .. 'marker', 0, 63)
    end
  end
  for key in pairs(STREAMS) do
    redis.call('XTRIM', key, 'MAXLEN', '~', MAXLEN)
  end
  return result
end

local function seq() return redis.call('INCR', PB .. 'seq') end

-- GROUPS. A job of a group keeps the group's id in its hash field 'grp'. Per group g:
--   <base>gw:<g>  its waiting jobs, scored as <base>wait (which holds only the waiting
--                 jobs without a group: the queue's own lane)
--   <base>gn:<g>  hash: how many of its jobs are in each state, and 'n' in all;
--                 deleted when the group has no job left
-- Per queue: <base>gwait every waiting job of a group (for listing and counting);
-- <base>groups the groups with a job; <base>gsrv group -> served number; <base>gwin
-- group -> its rate window ('<start> <count>'); in <base>meta: 'gsn' the last served
-- number given, 'osrv' the own lane's served number, 'gconc', 'grmax' and 'grdur' the
-- group limits. A group with a waiting job is in exactly one of: <base>gready (score =
-- served number), <base>gmax (held back by its concurrency, until one of its active
-- jobs leaves) or <base>glim (held back by its full rate window, score = its end).
local function group_count(base, g, state, d)
  local gk = base .. 'gn:' .. g
  redis.call('HINCRBY', gk, state, d)
  local n = redis.call('HINCRBY', gk, 'n', d)
  if n <= 0 then
    redis.call('DEL', gk)
    redis.call('SREM', base .. 'groups', g)
  elseif n == d then
    redis.call('SADD', base .. 'groups', g)
  end
  if d < 0 and state == 'active' and redis.call('SREM', base .. 'gmax', g) == 1 then
    redis.call('ZADD', base .. 'gready', redis.call('HGET', base .. 'gsrv', g) or 0, g)
  end
end

-- A job of group g moves from one state to another: the group's total is unchanged, so
-- it stays in 'groups'; a job leaving active may let a group held at its concurrency go.
local function group_move(base, g, from, to)
  local gk = base .. 'gn:' .. g
  redis.call('HINCRBY', gk, from, -1)
  redis.call('HINCRBY', gk, to, 1)
  if from == 'active' and redis.call('SREM', base .. 'gmax', g) == 1 then
    redis.call('ZADD', base .. 'gready', redis.call('HGET', base .. 'gsrv', g) or 0, g)
  end
end

-- Put a member into its lane: the own lane, or its group's (the group becomes ready).
local function wait_add(base, g, pri, m)
  if not g then
    redis.call('ZADD', base .. 'wait', pri, m)
    return
  end
  local gw = base .. 'gw:' .. g
  redis.call('ZADD', gw, pri, m)
  redis.call('ZADD', base .. 'gwait', pri, m)
  if redis.call('ZCARD', gw) == 1 then
    redis.call('ZADD', base .. 'gready', redis.call('HGET', base .. 'gsrv', g) or 0, g)
  end
end

-- Take a member out of its lane; a group left without waiting jobs is no longer ready.
local function wait_remove(base, g, m)
  if not g then
    redis.call('ZREM', base .. 'wait', m)
    return
  end
  local gw = base .. 'gw:' .. g
  redis.call('ZREM', gw, m)
  redis.call('ZREM', base .. 'gwait', m)
  if redis.call('EXISTS', gw) == 0 then
    redis.call('ZREM', base .. 'gready', g)
    redis.call('SREM', base .. 'gmax', g)
    redis.call('ZREM', base .. 'glim', g)
  end
end

-- Take a job out of the index of its current state (and its group's count of it);
-- returns the job's group, or nil.
local function unlist(base, id, jk, state)
  if state == 'waiting' then
    local v = redis.call('HMGET', jk, 'wm', 'grp')
    if v[1] then wait_remove(base, v[2], v[1]) end
    if v[2] then group_count(base, v[2], state, -1) end
    return v[2] or nil
  elseif state then
    local s = SETS[state]
    if s then redis.call('ZREM', base .. s, id) end
    local g = redis.call('HGET', jk, 'grp')
    if g then group_count(base, g, state, -1) end
    return g or nil
  end
  return nil
end

-- Put a job into a state's index (not waiting): delayed by run_at, others by entry order.
local function list_in(base, id, state, score, g)
  redis.call('ZADD', base .. SETS[state], score or seq(), id)
  if g then group_count(base, g, state, 1) end
end

-- A new place in waiting: priority, then the order key (fifo +n behind, lifo -n in front).
local function place_waiting(base, id, jk)
  local v = redis.call('HMGET', jk, 'pri', 'lifo', 'grp')
  local n = seq()
  local m
  if v[2] == '1' then
    m = string.format('0%015d', 999999999999999 - n) .. id
  else
    m = string.format('1%015d', n) .. id
  end
  wait_add(base, v[3] or nil, v[1] or 0, m)
  if v[3] then group_count(base, v[3], 'waiting', 1) end
  redis.call('HSET', jk, 'wm', m)
end

-- The ids of every waiting job of the queue, in waiting order (both kinds of lanes).
local function waiting_ids(base)
  local own = redis.call('ZRANGE', base .. 'wait', 0, -1, 'WITHSCORES')
  local grouped = redis.call('ZRANGE', base .. 'gwait', 0, -1, 'WITHSCORES')
  local out = {}
  local i, j = 1, 1
  while i <= #own or j <= #grouped do
    local pick_own = j > #grouped
    if i <= #own and j <= #grouped then
      local a, b = tonumber(own[i + 1]), tonumber(grouped[j + 1])
      -- order keys are unique digit strings: compared as text they order exactly
      pick_own = a < b or (a == b and string.sub(own[i], 1, 16) < string.sub(grouped[j], 1, 16))
    end
    if pick_own then
      out[#out + 1] = string.sub(own[i], 17)
      i = i + 2
    else
      out[#out + 1] = string.sub(grouped[j], 17)
      j = j + 2
    end
  end
  return out
end

local function enter_waiting(base, id, jk, old)
  unlist(base, id, jk, old)
  redis.call('HSET', jk, 'state', 'waiting')
  if old and old ~= 'active' then redis.call('HDEL', jk, 'run') end
  place_waiting(base, id, jk)
  emit(base, 'waiting', id)
  wake(base)
end

local function enter_delayed(base, id, jk, old, run_s)
  local g = unlist(base, id, jk, old)
  redis.call('HSET', jk, 'state', 'delayed', 'run', run_s)
  redis.call('HDEL', jk, 'wm')
  list_in(base, id, 'delayed', run_s, g)
  emit(base, 'delayed', id, '{"run_at":' .. run_s .. '}')
  -- A spurious wake-up, so idle workers learn the new earliest run_at.
  wake(base)
end

-- Move a job between two non-waiting states (no event). Like the reference engine, a
-- failed job keeps the run_at it had while delayed.
local function move_to(base, id, jk, old, state)
  local g = unlist(base, id, jk, old)
  redis.call('HSET', jk, 'state', state)
  if old == 'waiting' then redis.call('HDEL', jk, 'wm') end
  list_in(base, id, state, nil, g)
end

local function delete_job(base, id, jk, state)
  unlist(base, id, jk, state)
  redis.call('ZREM', base .. 'all', id)
  redis.call('DEL', jk, base .. 'logs:' .. id, base .. 'deps:' .. id, base .. 'dord:' .. id,
    base .. 'plinks:' .. id)
end

-- Finished jobs per minute: hash "<base>m:<kind>", field = the minute of NOW, and beside
-- it sorted set "<base>mm:<kind>" of the same minutes (score = member = minute). A minute
-- written for the first time drops the minutes more than METRICS_MINUTES before it.
local METRICS_MINUTES = @METRICS_MINUTES
local function count_finished(base, kind, n)
  local key = base .. 'm:' .. kind
  local minute = math.floor(NOW / 60)
  local field = string.format('%d', minute)
  if redis.call('HINCRBY', key, field, n) == n then
    local minutes = base .. 'mm:' .. kind
    redis.call('ZADD', minutes, minute, field)
    local oldest = '(' .. string.format('%d', minute - METRICS_MINUTES)
    local old = redis.call('ZRANGEBYSCORE', minutes, '-inf', oldest)
    for _, f in ipairs(old) do redis.call('HDEL', key, f) end
    redis.call('ZREMRANGEBYSCORE', minutes, '-inf', oldest)
  end
end

-- Dependency records: hash "<parent base>deps:<parent id>", field = the child's job key,
-- value = JSON {q, i, b (child key base), s (status), v, r, o (insertion order)}.
-- Beside it, for pages and counts that cost the page, not the flow: sorted set
-- "<parent base>dord:<parent id>" (member = the child's job key, score = o) and counters
-- on the parent's hash per status (DCOUNT), kept by dep_put and dep_delete, the only
-- writers of records after add_jobs. 'dv' marks a parent whose order and counters are
-- kept; a parent written before them gets both built once, on first use (dep_index).
local DCOUNT = { pending = 'pend', processed = 'dpro', failed = 'dfai', ignored = 'dign' }
local function dep_index(pbase, pid)
  local pjk = pbase .. 'job:' .. pid
  if redis.call('HEXISTS', pjk, 'dv') == 1 or redis.call('EXISTS', pjk) == 0 then return end
  local flat = redis.call('HGETALL', pbase .. 'deps:' .. pid)
  local n = { pending = 0, processed = 0, failed = 0, ignored = 0 }
  local ok = pbase .. 'dord:' .. pid
  redis.call('DEL', ok)
  for k = 1, #flat, 2 do
    local d = cjson.decode(flat[k + 1])
    n[d.s] = n[d.s] + 1
    redis.call('ZADD', ok, d.o, flat[k])
  end
  redis.call('HSET', pjk, 'dv', 1, 'pend', n.pending, 'dpro', n.processed,
    'dfai', n.failed, 'dign', n.ignored)
end

local function dep_get(pbase, pid, ck)
  local s = redis.call('HGET', pbase .. 'deps:' .. pid, ck)
  if s then return cjson.decode(s) end
  return nil
end

-- PARENT LINKS of a job: its first parent (fields pid, pq, pb, pol), then its further
-- links in the list "<base>plinks:<id>" (JSON {b, q, i, p}): {base, id, policy, queue}.
local function links(base, id, jk)
  local v = redis.call('HMGET', jk, 'pid', 'pb', 'pol', 'pq')
  if not v[1] then return {} end
  local out = { { v[2], v[1], v[3] or 'fail', v[4] } }
  for _, s in ipairs(redis.call('LRANGE', base .. 'plinks:' .. id, 0, -1)) do
    local l = cjson.decode(s)
    out[#out + 1] = { l.b, l.i, l.p, l.q }
  end
  return out
end

-- Whether a parent not in ``leaving`` (job keys) still needs the job: it exists, is not
-- finished and holds a pending dependency on it.
local function still_needed(base, id, jk, leaving)
  for _, l in ipairs(links(base, id, jk)) do
    local pjk = l[1] .. 'job:' .. l[2]
    if not (leaving and leaving[pjk]) then
      local ps = redis.call('HGET', pjk, 'state')
      if ps and ps ~= 'completed' and ps ~= 'failed' then
        local d = dep_get(l[1], l[2], jk)
        if d and d.s == 'pending' then return true end
      end
    end
  end
  return false
end

local function dep_put(pbase, pid, ck, d)
  dep_index(pbase, pid)
  local pjk = pbase .. 'job:' .. pid
  local dk = pbase .. 'deps:' .. pid
  local old = redis.call('HGET', dk, ck)
  if old then
    local od = cjson.decode(old)
    d.o = od.o
    if od.s ~= d.s then
      redis.call('HINCRBY', pjk, DCOUNT[od.s], -1)
      redis.call('HINCRBY', pjk, DCOUNT[d.s], 1)
    end
  else
    d.o = redis.call('HINCRBY', pjk, 'dseq', 1)
    redis.call('ZADD', pbase .. 'dord:' .. pid, d.o, ck)
    redis.call('HINCRBY', pjk, DCOUNT[d.s], 1)
  end
  redis.call('HSET', dk, ck, cjson.encode(d))
end

-- A parent's dependency records in insertion order: {child key, record} pairs.
local function deps_in_order(base, id)
  local flat = redis.call('HGETALL', base .. 'deps:' .. id)
  local out = {}
  for k = 1, #flat, 2 do out[#out + 1] = { flat[k], cjson.decode(flat[k + 1]) } end
  table.sort(out, function(x, y) return x[2].o < y[2].o end)
  return out
end

local function dep_delete(pbase, pid, ck)
  dep_index(pbase, pid)
  local dk = pbase .. 'deps:' .. pid
  local old = redis.call('HGET', dk, ck)
  if old then
    redis.call('HDEL', dk, ck)
    redis.call('ZREM', pbase .. 'dord:' .. pid, ck)
    redis.call('HINCRBY', pbase .. 'job:' .. pid, DCOUNT[cjson.decode(old).s], -1)
  end
end

-- RELEASE: a parent leaves waiting-children.
local function release(base, id, jk)
  local d = tonumber(redis.call('HGET', jk, 'delay') or '0') or 0
  if d > 0 then
    enter_delayed(base, id, jk, 'waiting-children', fmt(NOW + d))
  else
    enter_waiting(base, id, jk, 'waiting-children')
  end
end

local function release_check(base, id)
  local jk = base .. 'job:' .. id
  local v = redis.call('HMGET', jk, 'state', 'pend')
  if v[1] == 'waiting-children' and (tonumber(v[2] or '0') or 0) <= 0 then
    release(base, id, jk)
  end
end

-- RETENTION after a job finished, with the keep count the job had when it finished
-- (applied even if the job is gone by now, as the reference engine does); deleting never
-- touches the parent's dependency record.
local function retain(base, id, state, keep_s)
  if not keep_s then return end
  local keep = tonumber(keep_s)
  if keep == 0 then
    local jk = base .. 'job:' .. id
    local current = redis.call('HGET', jk, 'state')
    if current then delete_job(base, id, jk, current) end
    return
  end
  local sk = base .. SETS[state]
  local excess = redis.call('ZCARD', sk) - keep
  if excess > 0 then
    for _, old in ipairs(redis.call('ZRANGE', sk, 0, excess - 1)) do
      delete_job(base, old, base .. 'job:' .. old, state)
    end
  end
end

-- REMOVE: the job and its unfinished descendants that no parent outside the removal
-- still needs; its parents' pending dependencies on it resolve.
local function remove_tree(base, id)
  local jk = base .. 'job:' .. id
  local top = redis.call('HGET', jk, 'state')
  if not top then return 0 end
  local parents = links(base, id, jk)
  local doomed = { { base, id, jk, top } }
  local leaving = { [jk] = true }
  local walked = {}
  local stack = { { base, id } }
  while #stack > 0 do
    local node = table.remove(stack)
    for _, entry in ipairs(deps_in_order(node[1], node[2])) do
      local ck, d = entry[1], entry[2]
      local cs = not leaving[ck] and redis.call('HGET', ck, 'state')
      if cs then
        if cs == 'completed' or cs == 'failed' then
          -- a finished child stays, but may hold unfinished children of its own
          if not walked[ck] then
            walked[ck] = true
            stack[#stack + 1] = { d.b, d.i }
          end
        elseif not still_needed(d.b, d.i, ck, leaving) then
          -- a shared child is looked at again from each of its leaving parents
          leaving[ck] = true
          doomed[#doomed + 1] = { d.b, d.i, ck, cs }
          stack[#stack + 1] = { d.b, d.i }
        end
      end
    end
  end
  for _, n in ipairs(doomed) do
    delete_job(n[1], n[2], n[3], n[4])
    emit(n[1], 'removed', n[2])
  end
  for _, l in ipairs(parents) do
    local d = dep_get(l[1], l[2], jk)
    if d and d.s == 'pending' then
      dep_delete(l[1], l[2], jk)
      release_check(l[1], l[2])
    end
  end
  return #doomed
end

local apply_parent_policy

-- Step 1 of FINAL FAILURE; returns the job's keep_failed.
local function mark_failed(base, id, jk, reason)
  local v = redis.call('HMGET', jk, 'state', 'kf')
  move_to(base, id, jk, v[1], 'failed')
  count_finished(base, 'failed', 1)
  redis.call('HSET', jk, 'fr', reason, 'fat', NOW_S)
  redis.call('HDEL', jk, 'tok', 'lu', 'cx')
  emit(base, 'failed', id, cjson.encode({ reason = reason }))
  return v[2]
end

-- FINAL FAILURE of the protocol: a parent failed by the fail policy fails at once, its
-- own links are carried out after those of the jobs failed before it; RETENTION last.
local function final_failure(base, id, reason, apply_policy)
  local jk = base .. 'job:' .. id
  local failed = { { base, id, jk, reason, mark_failed(base, id, jk, reason) } }
  local index = 1
  while apply_policy and index <= #failed do
    local f = failed[index]
    index = index + 1
    for _, l in ipairs(links(f[1], f[2], f[3])) do
      local parent = apply_parent_policy(f[3], f[2], l[1], l[2], l[3], f[4])
      if parent then failed[#failed + 1] = parent end
    end
  end
  for i = #failed, 1, -1 do retain(failed[i][1], failed[i][2], 'failed', failed[i][5]) end
end

-- Fail, with "parent failed", every pending unstarted child of a parent, and theirs.
local function fail_unstarted_children(base, id)
  local doomed = {}
  local chosen = {}
  local stack = { { base, id } }
  while #stack > 0 do
    local node = table.remove(stack)
    for _, entry in ipairs(deps_in_order(node[1], node[2])) do
      local ck, d = entry[1], entry[2]
      if d.s == 'pending' then
        local cs = redis.call('HGET', ck, 'state')
        if cs and UNSTARTED[cs] then
          dep_put(node[1], node[2], ck,
            { q = d.q, i = d.i, b = d.b, s = 'failed', r = 'parent failed' })
          -- a shared child fails with the last of its parents that needed it
          if not chosen[ck] and not still_needed(d.b, d.i, ck, nil) then
            chosen[ck] = true
            doomed[#doomed + 1] = { d.b, d.i }
            stack[#stack + 1] = { d.b, d.i }
          end
        end
      end
    end
  end
  for _, n in ipairs(doomed) do final_failure(n[1], n[2], 'parent failed', false) end
end

-- One parent link's policy; returns the parent when the fail policy failed it.
apply_parent_policy = function(ck, cid, pbase, pid, policy, reason)
  local d = dep_get(pbase, pid, ck)
  local pjk = pbase .. 'job:' .. pid
  local pstate = redis.call('HGET', pjk, 'state')
  if not d or d.s ~= 'pending' or not pstate then return nil end
  policy = policy or 'fail'
  if policy == 'fail' then
    dep_put(pbase, pid, ck, { q = d.q, i = d.i, b = d.b, s = 'failed', r = reason })
    if UNSTARTED[pstate] or pstate == 'active' then
      fail_unstarted_children(pbase, pid)
      local why = 'child ' .. cid .. ' failed: ' .. reason
      return { pbase, pid, pjk, why, mark_failed(pbase, pid, pjk, why) }
    end
  elseif policy == 'ignore' then
    dep_put(pbase, pid, ck, { q = d.q, i = d.i, b = d.b, s = 'ignored', r = reason })
    release_check(pbase, pid)
  elseif policy == 'drop' then
    dep_delete(pbase, pid, ck)
    release_check(pbase, pid)
  elseif policy == 'continue' then
    dep_put(pbase, pid, ck, { q = d.q, i = d.i, b = d.b, s = 'failed', r = reason })
    if pstate == 'waiting-children' then release(pbase, pid, pjk) end
  else
    remove_tree(pbase, pid)
  end
  return nil
end

-- A finished job runs again from scratch; an unfinished parent waits for it again.
local function retry_one(base, id, jk, old)
  redis.call('HSET', jk, 'att', 0, 'stc', 0)
  redis.call('HDEL', jk, 'fr', 'st', 'rv', 'fat')
  enter_waiting(base, id, jk, old)
  for _, l in ipairs(links(base, id, jk)) do
    local pbase, pid = l[1], l[2]
    local pjk = pbase .. 'job:' .. pid
    local pstate = redis.call('HGET', pjk, 'state')
    if pstate and (UNSTARTED[pstate] or pstate == 'active') then
      local d = dep_get(pbase, pid, jk)
      if not d or d.s ~= 'pending' then
        local q = redis.call('HGET', jk, 'q')
        dep_put(pbase, pid, jk, { q = q, i = id, b = base, s = 'pending' })
      end
      if pstate == 'waiting' or pstate == 'delayed' then
        move_to(pbase, pid, pjk, pstate, 'waiting-children')
        redis.call('HDEL', pjk, 'run')
        emit(pbase, 'waiting-children', pid)
      end
    end
  end
end

-- DEDUPLICATION: a queue's entries live in the hash "<base>dedup": field = deduplication
-- id, value = {"j": job id, "x": expires_at or ""}. The job holding `did` while its
-- entry is live, and that job's state; nil when the id is free.
local function dedup_live(base, did)
  local raw = redis.call('HGET', base .. 'dedup', did)
  if not raw then return nil end
  local entry = cjson.decode(raw)
  local state = redis.call('HGET', base .. 'job:' .. entry.j, 'state')
  if not state then return nil end
  if entry.x == '' then
    if state == 'completed' or state == 'failed' then return nil end
  elseif NOW >= tonumber(entry.x) then
    return nil
  end
  return entry.j, state
end

-- DEDUPLICATION step 1 on the live job `id` (in `state`) holding `did`, for the job
-- `new_id` not written (its `data` and `delay`): replace, extend, event deduplicated.
local function dedup_hold(base, did, id, state, ttl_s, ext, repl, data, delay, new_id)
  if repl == '1' and state == 'delayed' then
    local jk = base .. 'job:' .. id
    redis.call('HSET', jk, 'data', data)
    enter_delayed(base, id, jk, 'delayed', fmt(NOW + delay))
  end
  if ext == '1' and ttl_s ~= '' then
    redis.call('HSET', base .. 'dedup', did,
      cjson.encode({ j = id, x = fmt(NOW + tonumber(ttl_s)) }))
  end
  emit(base, 'deduplicated', id,
    cjson.encode({ deduplication_id = did, deduplicated_job_id = new_id }))
end

-- The entry of `did` becomes the job `id`'s, for the ttl `ttl_s` ('' = none).
local function dedup_take(base, did, id, ttl_s)
  local x = ''
  if ttl_s ~= '' then x = fmt(NOW + tonumber(ttl_s)) end
  redis.call('HSET', base .. 'dedup', did, cjson.encode({ j = id, x = x }))
end

local function not_found(id) return redis.error_reply('CONVEYOR_NOT_FOUND ' .. id) end
local function bad_state(msg) return redis.error_reply('CONVEYOR_INVALID_STATE ' .. msg) end
