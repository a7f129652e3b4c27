"""The Lua scripts that keep a Redis Stream source's manifests consistent.

Each runs atomically in Redis, so no other consumer acts between its checks and its
writes (docs/brokers.md, "A batch's life"). Keys: the stream, the index (a hash: entry id
-> the token of the manifest that holds it) and one manifest (a string key, the batch's
token and ids as JSON, with a TTL). Argument lists are chunked by 1,000 because Redis's
Lua cannot ``unpack`` arbitrarily many values.
"""

from __future__ import annotations

#: KEYS: stream, index, manifest. ARGV: group, consumer, token, body, ttl_ms,
#: manifest key prefix, ids... Refuses ({"taken", id, token}) when an id belongs to
#: another live manifest, and ({"gone", id}) when an id is no longer pending for this
#: consumer (claimed by another, or acknowledged); else writes the manifest and its
#: index entries and returns {"ok"}.
WRITE_MANIFEST = """
local n = #ARGV
for i = 7, n do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[2], id)
  if owner and owner ~= ARGV[3] and redis.call('EXISTS', ARGV[6] .. owner) == 1 then
    return {'taken', id, owner}
  end
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 0 then
    return {'gone', id}
  end
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
local chunk = {}
for i = 7, n do
  chunk[#chunk + 1] = ARGV[i]
  chunk[#chunk + 1] = ARGV[3]
  if #chunk >= 1000 then
    redis.call('HSET', KEYS[2], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then
  redis.call('HSET', KEYS[2], unpack(chunk))
end
return {'ok'}
"""

#: KEYS: stream, index, manifest (or "" for none). ARGV: group, ids... Acknowledges the
#: ids, forgets their index entries and removes the manifest, all at once; returns how
#: many entries were still pending (0 when another daemon acknowledged them first).
COMPLETE = """
local acked = 0
local chunk = {}
local function flush()
  if #chunk > 0 then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(chunk))
    redis.call('HDEL', KEYS[2], unpack(chunk))
    chunk = {}
  end
end
for i = 2, #ARGV do
  chunk[#chunk + 1] = ARGV[i]
  if #chunk >= 1000 then
    flush()
  end
end
flush()
if KEYS[3] ~= '' then
  redis.call('DEL', KEYS[3])
end
return acked
"""

#: KEYS: stream. ARGV: group, consumer, ids... Resets the idle time of the ids still
#: pending for this consumer (XCLAIM JUSTID to itself: not counted as a delivery), so
#: that a live daemon's in-flight entries are not claimed; returns how many it touched.
TOUCH = """
local touched = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    touched = touched + 1
  end
end
return touched
"""
