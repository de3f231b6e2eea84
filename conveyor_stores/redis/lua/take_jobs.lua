-- take_jobs. ARGV[3] limit, ARGV[4] token, ARGV[5] lock_until, ARGV[6] rate max ('' none),
-- ARGV[7] rate duration. Returns {next_run_at, rate_limited_until, concurrency_limited,
-- job, job, ...} where each job is {id, field, value, ...}.
local limit = tonumber(ARGV[3])
local token, lock_until = ARGV[4], ARGV[5]

local due = redis.call('ZRANGEBYSCORE', QB .. 'delayed', '-inf', NOW_S)
for _, id in ipairs(due) do
  enter_waiting(QB, id, QB .. 'job:' .. id, 'delayed')
end

local function next_run()
  local first = redis.call('ZRANGE', QB .. 'delayed', 0, 0, 'WITHSCORES')
  return first[2] or false
end

if redis.call('HEXISTS', QB .. 'meta', 'paused') == 1 then
  redis.call('DEL', QB .. 'marker')
  return done({ next_run(), false, false })
end
if limit <= 0 then return done({ next_run(), false, false }) end

-- MANUAL RATE LIMIT: the queue's meta field 'lim': nothing is taken before it.
local lim = redis.call('HGET', QB .. 'meta', 'lim')
if lim and NOW < tonumber(lim) then return done({ next_run(), lim, false }) end

-- GLOBAL CONCURRENCY: the queue's meta field 'conc'; the script runs alone, so the
-- active count it reads is the one it leaves at most 'conc'.
local conc = tonumber(redis.call('HGET', QB .. 'meta', 'conc') or '')
if conc then
  local room = conc - redis.call('ZCARD', QB .. 'active')
  if room <= 0 then return done({ next_run(), false, 1 }) end
  if room < limit then limit = room end
end

local wstart, wcount
if ARGV[6] ~= '' then
  local most, duration = tonumber(ARGV[6]), tonumber(ARGV[7])
  local w = redis.call('HMGET', QB .. 'meta', 'rl_start', 'rl_count')
  wstart, wcount = tonumber(w[1] or ''), tonumber(w[2] or '')
  if not wstart or NOW >= wstart + duration then
    wstart, wcount = NOW, 0
  end
  local room = most - wcount
  if room <= 0 then
    return done({ next_run(), fmt(wstart + duration), false })
  end
  if room < limit then limit = room end
end

-- A job leaves waiting for active: its lock, its place in the active set (order), its
-- event, and its hash as the reply.
local out = { false, false, false }
local function activate(id, order)
  local jk = QB .. 'job:' .. id
  redis.call('HSET', jk, 'state', 'active', 'tok', token, 'lu', lock_until, 'pat', NOW_S)
  redis.call('ZADD', QB .. 'active', order, id)
  emit(QB, 'active', id)
  local job = redis.call('HGETALL', jk)
  job[#job + 1] = id
  out[#out + 1] = job
end

local taken = 0
if redis.call('EXISTS', QB .. 'gwait') == 0 then
  -- No waiting job has a group: a plain take of the queue's own waiting jobs.
  local popped = redis.call('ZPOPMIN', QB .. 'wait', limit)
  taken = #popped / 2
  if taken > 0 then
    -- Active jobs are listed in the order they started: one block of order numbers.
    local order = redis.call('INCRBY', PB .. 'seq', taken) - taken
    for k = 1, #popped, 2 do
      order = order + 1
      activate(string.sub(popped[k], 17), order)
    end
  end
  if redis.call('EXISTS', QB .. 'wait') == 0 then redis.call('DEL', QB .. 'marker') end
else
  -- TAKE BY LANES. Lanes are ordered by served number, then group id; the own lane
  -- counts as the empty id. A group held back by its limits leaves gready for gmax or
  -- glim (see GROUPS in common.lua) until its limit may let it go: a take steps over
  -- each held group once, not on every take.
  local meta = QB .. 'meta'
  local lv = redis.call('HMGET', meta, 'gconc', 'grmax', 'grdur', 'osrv', 'gsn')
  local gconc, grmax, grdur = tonumber(lv[1] or ''), tonumber(lv[2] or ''), tonumber(lv[3] or '')
  local osrv, gsn = tonumber(lv[4] or '0'), tonumber(lv[5] or '0')
  -- Groups whose full window has ended are ready again.
  for _, g in ipairs(redis.call('ZRANGEBYSCORE', QB .. 'glim', '-inf', NOW_S)) do
    redis.call('ZREM', QB .. 'glim', g)
    redis.call('ZADD', QB .. 'gready', redis.call('HGET', QB .. 'gsrv', g) or 0, g)
  end
  -- Lanes are read from gready a batch at a time: within a take only this take changes
  -- their order, and a lane it serves goes after all of them, so the next lane is the
  -- next of the batch until the batch runs out.
  local own = redis.call('ZCARD', QB .. 'wait')
  local windows = grmax or redis.call('EXISTS', QB .. 'gwin') == 1
  local batch, b = {}, 1
  local picked = {}
  local stuck = false
  while taken < limit do
    if b > #batch then
      batch, b = redis.call('ZRANGE', QB .. 'gready', 0, limit - taken - 1, 'WITHSCORES'), 1
    end
    local g, m = batch[b], nil
    if own > 0 and (not g or osrv <= tonumber(batch[b + 1])) then
      g = nil
      m = redis.call('ZPOPMIN', QB .. 'wait')[1]
      own = own - 1
    elseif g then
      b = b + 2
      local held = false
      if gconc then
        local active = tonumber(redis.call('HGET', QB .. 'gn:' .. g, 'active') or '0')
        if active >= gconc then
          held = true
          redis.call('ZREM', QB .. 'gready', g)
          redis.call('SADD', QB .. 'gmax', g)
        end
      end
      local gstart, gcount
      if not held and grmax then
        local w = redis.call('HGET', QB .. 'gwin', g)
        if w then
          local a, c = string.match(w, '^(%S+) (%S+)$')
          gstart, gcount = tonumber(a), tonumber(c)
        end
        if not gstart or NOW >= gstart + grdur then
          gstart, gcount = NOW, 0
        end
        if gcount >= grmax then
          held = true
          redis.call('ZREM', QB .. 'gready', g)
          redis.call('ZADD', QB .. 'glim', fmt(gstart + grdur), g)
        end
      end
      if not held then
        m = redis.call('ZPOPMIN', QB .. 'gw:' .. g)[1]
        redis.call('ZREM', QB .. 'gwait', m)
        group_move(QB, g, 'waiting', 'active')
        -- Served without a rate limit, a group keeps no window (as the reference engine).
        if gstart then
          redis.call('HSET', QB .. 'gwin', g, fmt(gstart) .. ' ' .. (gcount + 1))
        elseif windows then
          redis.call('HDEL', QB .. 'gwin', g)
        end
      end
    else
      stuck = true
      break
    end
    if m then
      -- The lane served goes last: a served number above every other of the queue.
      gsn = gsn + 1
      if g then
        redis.call('HSET', QB .. 'gsrv', g, gsn)
        if redis.call('EXISTS', QB .. 'gw:' .. g) == 1 then
          redis.call('ZADD', QB .. 'gready', gsn, g)
        else
          redis.call('ZREM', QB .. 'gready', g)
        end
      else
        osrv = gsn
      end
      taken = taken + 1
      picked[taken] = string.sub(m, 17)
    end
  end
  if taken > 0 then
    redis.call('HSET', meta, 'gsn', gsn, 'osrv', osrv)
    local order = redis.call('INCRBY', PB .. 'seq', taken) - taken
    for k = 1, taken do
      activate(picked[k], order + k)
    end
  end
  if taken == 0 then
    -- Every group still held back held this take back.
    if redis.call('EXISTS', QB .. 'gmax') == 1 then out[3] = 1 end
    local ends = redis.call('ZRANGE', QB .. 'glim', 0, 0, 'WITHSCORES')
    if ends[2] then out[2] = ends[2] end
  end
  if stuck or (redis.call('EXISTS', QB .. 'wait') == 0
      and redis.call('EXISTS', QB .. 'gready') == 0) then
    redis.call('DEL', QB .. 'marker')
  end
end
if taken > 0 and wstart then
  redis.call('HSET', QB .. 'meta', 'rl_start', fmt(wstart), 'rl_count', wcount + taken)
end
out[1] = next_run()
return done(out)
