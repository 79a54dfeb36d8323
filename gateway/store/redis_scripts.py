"""The Lua scripts the Redis store runs: each write that touches several keys, atomic on the server.

Every key a script touches is passed in KEYS (never built inside the script), so that on a
Cluster they all carry the gateway's hash tag and stay on one slot.
"""

# KEYS: state, epoch, audit, channel   ARGV: key, doc json (an object), expect rev or "", audit json or ""
PUT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  local rev = 0
  if cur then rev = tonumber(cjson.decode(cur)['rev']) or 0 end
  if rev ~= tonumber(ARGV[3]) then return {0, cur or ''} end
end
local epoch = redis.call('INCR', KEYS[2])
local body = string.sub(ARGV[2], 2)
local sep = ','
if body == '}' then sep = '' end
local stored = '{"rev":' .. epoch .. sep .. body
redis.call('HSET', KEYS[1], ARGV[1], stored)
if ARGV[4] ~= '' then
  local a = string.sub(ARGV[4], 2)
  local asep = ','
  if a == '}' then asep = '' end
  redis.call('RPUSH', KEYS[3], '{"epoch":' .. epoch .. ',"key":' .. cjson.encode(ARGV[1]) .. asep .. a)
end
redis.call('PUBLISH', KEYS[4], epoch .. '\\n' .. ARGV[1] .. '\\n' .. stored)
return {epoch, stored}
"""

# KEYS: coll hash, status index prefix   ARGV: id, doc json, expect json
UPDATE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0, ''} end
local doc = cjson.decode(cur)
for k, v in pairs(cjson.decode(ARGV[3])) do
  if doc[k] ~= v then return {0, cur} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local new = cjson.decode(ARGV[2])
if doc['status'] ~= new['status'] then
  local score = nil
  if type(doc['status']) == 'string' then
    score = redis.call('ZSCORE', KEYS[2] .. doc['status'], ARGV[1])
    redis.call('ZREM', KEYS[2] .. doc['status'], ARGV[1])
  end
  if type(new['status']) == 'string' then
    if not score then score = redis.call('TIME')[1] end
    redis.call('ZADD', KEYS[2] .. new['status'], score, ARGV[1])
  end
end
return {1, ''}
"""

# KEYS: coll hash, index zset, seq counter, status index prefix   ARGV: id, doc json
INSERT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0, redis.call('HGET', KEYS[1], ARGV[1])} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local status = cjson.decode(ARGV[2])['status']
if type(status) == 'string' then redis.call('ZADD', KEYS[4] .. status, seq, ARGV[1]) end
return {1, ''}
"""


# KEYS: coll hash, index zset, status index prefix   ARGV: id
DELETE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local status = cjson.decode(cur)['status']
if type(status) == 'string' then redis.call('ZREM', KEYS[3] .. status, ARGV[1]) end
return 1
"""
