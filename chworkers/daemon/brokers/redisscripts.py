"""The Lua scripts that keep a Redis Stream source's manifests consistent.

Each runs atomically in Redis, so no other consumer acts between its checks and its
writes (docs/brokers.md, "A batch's life"). Keys: the stream, the set of live manifests'
tokens, and one manifest (a string key, the batch's token and ids as JSON, with a TTL).
Ids travel as JSON (one argument: packing 100,000 arguments costs the client more than
the script), and are passed on in chunks of 1,000 because Redis's Lua cannot ``unpack``
arbitrarily many values.
"""

from __future__ import annotations

#: KEYS: stream, manifests (a set of the live manifests' tokens), manifest.
#: ARGV: group, consumer, token, body (JSON with the ids), ttl_ms, lowest id, highest id.
#: Refuses ({"gone", id}) when an id is no longer pending for this consumer (claimed by
#: another, or acknowledged): only the consumer that holds every entry of a batch may
#: write its manifest, and a claimer looks manifests up only after its claim, so no
#: entry is ever in two manifests. Else writes the manifest and returns {"ok"}.
WRITE_MANIFEST = """
local ids = cjson.decode(ARGV[4])['ids']
local n = #ids
local limit = n * 2 + 1000
local reply = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], ARGV[7], limit, ARGV[2])
local mine = {}
for _, entry in ipairs(reply) do
  mine[entry[1]] = true
end
for _, id in ipairs(ids) do
  if not mine[id] then
    if #reply < limit or #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) == 0 then
      return {'gone', id}
    end
  end
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[3])
return {'ok'}
"""

#: KEYS: stream, manifests, manifest. ARGV: group, token ("" for none: no manifest to
#: remove; the key is then the manifests' prefix, in the stream's slot), ids (JSON).
#: Acknowledges the ids and removes the manifest, all at once; returns how many entries
#: were still pending (0 when another daemon acknowledged them first).
COMPLETE = """
local acked = 0
local chunk = {}
for _, id in ipairs(cjson.decode(ARGV[3])) do
  chunk[#chunk + 1] = id
  if #chunk >= 1000 then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(chunk))
    chunk = {}
  end
end
if #chunk > 0 then
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(chunk))
end
if ARGV[2] ~= '' then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return acked
"""

#: KEYS: stream. ARGV: group, consumer, lowest id, highest id, the ids of one batch (JSON).
#: Resets the idle time of those ids still pending for this consumer (XCLAIM JUSTID to
#: itself: not counted as a delivery), so that a live daemon's in-flight entries are not
#: claimed; returns how many it touched. One XPENDING over the batch's range finds them
#: (an XPENDING per id cost Redis about 10 us per entry, every claim_idle / 4); ids it
#: could not see (the range held more of this consumer's entries than asked for: a batch
#: with claimed entries far apart) are looked up one by one.
TOUCH = """
local ids = cjson.decode(ARGV[5])
local want = {}
for _, id in ipairs(ids) do
  want[id] = true
end
local limit = #ids * 2 + 1000
local reply = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[4], limit, ARGV[2])
local mine = {}
for _, entry in ipairs(reply) do
  if want[entry[1]] then
    mine[#mine + 1] = entry[1]
    want[entry[1]] = nil
  end
end
if #reply >= limit then
  for _, id in ipairs(ids) do
    if want[id] and #redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2]) > 0 then
      mine[#mine + 1] = id
    end
  end
end
local touched = 0
for first = 1, #mine, 1000 do
  local chunk = {KEYS[1], ARGV[1], ARGV[2], 0}
  for i = first, math.min(#mine, first + 999) do
    chunk[#chunk + 1] = mine[i]
  end
  chunk[#chunk + 1] = 'JUSTID'
  touched = touched + #redis.call('XCLAIM', unpack(chunk))
end
return touched
"""
