"""The store's Lua scripts and the meaning of their answers.

`REGISTER` is the one-round-trip registration: the same checks, in the same
order, and the same writes as `plans.plan_register` (it re-states that rule
for speed: no WATCH, no lock, one script). `register_outcome` turns its answer
into the errors `plans.py` defines. A property test over random histories
(tests/test_store_scripts.py) keeps the two equal.

cjson re-encodes the variables it touches: an empty list comes back as ``{}``
(`Variable.from_json` reads both) and numbers keep 14 significant digits, so an
``updated_at`` of an existing variable may lose precision below 0.1 ms.
"""

from __future__ import annotations

from typing import Any

from common.errors import ServiceUnavailable

from .plans import already_produced, already_settled, check_count, duplicate_request
from .records import RequestRecord

# KEYS: meta, vars, reqs.
# ARGV: rid, record JSON, output ('' for none), ttl, max variables, now, deadline ('' for
# none), validate ('1' when a cycle check is wanted), number of inputs, inputs (distinct).
# Answers: {'ok'}, {'validate'} (a cycle is possible: the caller must read the graph),
# {'dup'}, {'status', status}, {'producer', rid}, {'count', stored, new}.
REGISTER = """
local rid, out = ARGV[1], ARGV[3]
if redis.call('HEXISTS', KEYS[3], rid) == 1 then return {'dup'} end
local now = tonumber(ARGV[6])
local inputs = {}
for i = 1, tonumber(ARGV[9]) do inputs[i] = ARGV[9 + i] end
local fresh, vars = 0, {}
if out ~= '' then
  local raw = redis.call('HGET', KEYS[2], out)
  if raw then
    local v = cjson.decode(raw)
    if v.status ~= 'pending' then return {'status', v.status} end
    if v.producer ~= nil and v.producer ~= cjson.null then return {'producer', v.producer} end
    if type(v.consumers) ~= 'table' then v.consumers = {} end
    if ARGV[8] == '1' and #inputs > 0 and #v.consumers > 0 then return {'validate'} end
    v.producer = rid
    v.updated_at = now
    vars[out] = v
  else
    fresh = fresh + 1
    vars[out] = {status = 'pending', value = cjson.null, error = cjson.null, producer = rid,
                 consumers = {}, updated_at = now}
  end
end
for _, name in ipairs(inputs) do
  local v = vars[name]
  if v == nil then
    local raw = redis.call('HGET', KEYS[2], name)
    if raw then
      v = cjson.decode(raw)
      if type(v.consumers) ~= 'table' then v.consumers = {} end
    else
      fresh = fresh + 1
      v = {status = 'pending', value = cjson.null, error = cjson.null, producer = cjson.null,
           consumers = {}, updated_at = now}
    end
    vars[name] = v
  end
  local seen = false
  for _, c in ipairs(v.consumers) do if c == rid then seen = true end end
  if not seen then table.insert(v.consumers, rid) end
end
local count = redis.call('HLEN', KEYS[2])
if fresh > 0 and count + fresh > tonumber(ARGV[5]) then return {'count', count, fresh} end
redis.call('HSETNX', KEYS[1], 'created', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[1], 'deadline', ARGV[7]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
for name, v in pairs(vars) do redis.call('HSET', KEYS[2], name, cjson.encode(v)) end
redis.call('HSET', KEYS[3], rid, ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return {'ok'}
"""

# KEYS: meta, reqs. ARGV: rid, record JSON, ttl. Overwrites an existing record only.
SAVE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0
"""


def register_args(
    rec: RequestRecord, *, ttl_s: int, max_variables: int, now: float,
    deadline: float | None, validate: bool,
) -> list[Any]:
    """ARGV of `REGISTER` for `rec`."""
    inputs = list(dict.fromkeys(rec.inputs))
    return [
        rec.id, rec.to_json(), rec.output or "", ttl_s, max_variables, repr(now),
        "" if deadline is None else repr(deadline), "1" if validate else "", len(inputs), *inputs,
    ]


def _str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def register_outcome(answer: list[Any], rec: RequestRecord, max_variables: int) -> bool:
    """True when `REGISTER` wrote, False when the caller must validate the graph first;
    a refusal raises the error `plans.plan_register` raises for the same state."""
    kind = _str(answer[0])
    if kind == "ok":
        return True
    if kind == "validate":
        return False
    if kind == "dup":
        raise duplicate_request(rec.id)
    if kind == "status":
        raise already_settled(str(rec.output), _str(answer[1]))
    if kind == "producer":
        raise already_produced(str(rec.output), _str(answer[1]))
    if kind == "count":
        check_count(int(answer[1]), int(answer[2]), max_variables)
    raise ServiceUnavailable(f"unexpected registration answer {kind!r}")
