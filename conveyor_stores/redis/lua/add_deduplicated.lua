-- add_deduplicated: DEDUPLICATION of the store protocol. The arguments of add_jobs come
-- first (one group of one job), then the deduplication id, its ttl ('' = none), extend
-- and replace ('1'/'0'), the new job's id and delay (entries: see dedup_live).
-- Returns {job id, 1 if written else 0}.
local DID, TTL_S, EXT, REPL = ARGV[#ARGV - 5], ARGV[#ARGV - 4], ARGV[#ARGV - 3], ARGV[#ARGV - 2]
local NEW_ID, DELAY = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local live, state = dedup_live(QB, DID)
if live then
  dedup_hold(QB, DID, live, state, TTL_S, EXT, REPL, ARGV[9], DELAY, NEW_ID)
  return done({ live, 0 })
end

local function add_one()
@ADD_JOBS
end

local written = add_one()
if type(written) == 'table' and written.err then return written end
if written[1] == 1 then dedup_take(QB, DID, NEW_ID, TTL_S) end
return { NEW_ID, written[1] }
