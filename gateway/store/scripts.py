"""The store's Lua scripts and the meaning of their answers.

`REGISTER` is the one-round-trip registration: the same checks, in the same
order, and the same writes as `plans.plan_register` (it re-states that rule
for speed: no WATCH, no lock, one script). `SETTLE` does the same for a
producer's result or failure (`plans.plan_result`, `plans.plan_fail`).
`register_outcome` and `settle_outcome` turn their answers into the errors
`plans.py` defines. A property test over random histories
(tests/test_store_scripts.py) keeps the scripts and the plans equal.

`CLAIM` and `OWNER` serve the work records of gateway/work.py: a work entry
is ``<owner replica>\n<JSON>`` in the session's ``work`` hash.

cjson re-encodes the variables it touches: an empty list comes back as ``{}``
(`Variable.from_json` reads both) and numbers keep 14 significant digits, so an
``updated_at`` of an existing variable may lose precision below 0.1 ms.
"""

from __future__ import annotations

from typing import Any

import orjson

from common.errors import ServiceUnavailable

from .plans import (
    Registered,
    already_produced,
    already_settled,
    check_count,
    duplicate_request,
    missing_variable,
    not_the_producer,
    output_of_request,
)
from .records import RequestRecord, Variable

# KEYS: meta, vars, reqs, work.
# ARGV: rid, record JSON, output ('' for none), ttl, max variables, now, deadline ('' for
# none), validate ('1' when a cycle check is wanted), work entry ('' for none), channel,
# graph event (its name "#" becomes the new graph version), number of inputs, inputs
# (distinct). The graph event is published when an input already has a pending producer,
# which may be queued somewhere: its task group may change.
# Answers: {'ok', created, deadline or '', graph version, then per input: name, status,
# value or '', error or '', producer or ''}, {'validate'} (a cycle is
# possible: the caller must read the graph), {'dup'}, {'status', status},
# {'producer', rid}, {'count', stored, new}.
REGISTER = """
local rid, out = ARGV[1], ARGV[3]
if redis.call('HEXISTS', KEYS[3], rid) == 1 then return {'dup'} end
local now = tonumber(ARGV[6])
local inputs = {}
for i = 1, tonumber(ARGV[12]) do inputs[i] = ARGV[12 + i] end
local fresh, vars, regroup = 0, {}, false
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
  if v.status == 'pending' and v.producer ~= nil and v.producer ~= cjson.null then
    regroup = true
  end
end
local count = redis.call('HLEN', KEYS[2])
if fresh > 0 and count + fresh > tonumber(ARGV[5]) then return {'count', count, fresh} end
redis.call('HSETNX', KEYS[1], 'created', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[1], 'deadline', ARGV[7]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
local graph = redis.call('HINCRBY', KEYS[1], 'graph', 1)
for name, v in pairs(vars) do redis.call('HSET', KEYS[2], name, cjson.encode(v)) end
redis.call('HSET', KEYS[3], rid, ARGV[2])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[4], rid, ARGV[9]) end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
if regroup then
  local event = string.gsub(ARGV[11], '"n": "#"', '"n": "' .. graph .. '"')
  redis.call('PUBLISH', ARGV[10], event)
end
local meta = redis.call('HMGET', KEYS[1], 'created', 'deadline')
local answer = {'ok', meta[1], meta[2] or '', graph}
for _, name in ipairs(inputs) do
  local v = vars[name]
  local function s(x) if x == nil or x == cjson.null then return '' end return x end
  for _, x in ipairs({name, v.status, s(v.value), s(v.error), s(v.producer)}) do
    answer[#answer + 1] = x
  end
end
return answer
"""

# KEYS: meta, vars, reqs, work. ARGV: variable name, 'ready' or 'failed', value or error,
# producer ('' for any), record id ('' for none), record JSON, ttl, now, channel, event.
# The same decisions and writes as `plans.plan_result` ('ready') and `plans.plan_fail`
# ('failed'); the record's work entry is dropped with it.
# Answers: {'ok', producer or '', consumers JSON} (written), {'settled'} (fail: nothing
# to fail, the record alone was written), {'noop'}, {'missing'}, {'status', status},
# {'producer'}.
SETTLE = """
local name, kind = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[2], name)
if not raw then
  if kind == 'ready' then return {'missing'} end
  return {'noop'}
end
local v = cjson.decode(raw)
local answer
if v.status ~= 'pending' then
  if kind == 'ready' then return {'status', v.status} end
  if ARGV[5] == '' then return {'noop'} end
  answer = {'settled'}
else
  local producer = v.producer
  if producer == cjson.null then producer = nil end
  if kind == 'ready' and ARGV[4] ~= '' and producer ~= ARGV[4] then return {'producer'} end
  if type(v.consumers) ~= 'table' then v.consumers = {} end
  v.status = kind
  if kind == 'ready' then v.value = ARGV[3] else v.error = ARGV[3] end
  v.updated_at = tonumber(ARGV[8])
  redis.call('HSET', KEYS[2], name, cjson.encode(v))
  local consumers = '[]'
  if #v.consumers > 0 then consumers = cjson.encode(v.consumers) end
  answer = {'ok', producer or '', consumers}
end
redis.call('HSETNX', KEYS[1], 'created', ARGV[8])
redis.call('HINCRBY', KEYS[1], 'version', 1)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
  redis.call('HDEL', KEYS[4], ARGV[5])
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
if answer[1] == 'ok' then redis.call('PUBLISH', ARGV[9], ARGV[10]) end
return answer
"""

# KEYS: meta, vars, reqs, work. ARGV: name, value, max variables, now, ttl, deadline ('' for
# none), channel, event. `plans.plan_put`: a user sets an input, only a pending variable
# without a producer. Answers: {'ok', consumers JSON}, {'status', status},
# {'producer', rid}, {'count', stored, new}.
PUT = """
local raw = redis.call('HGET', KEYS[2], ARGV[1])
local consumers = {}
if raw then
  local v = cjson.decode(raw)
  if v.status ~= 'pending' then return {'status', v.status} end
  if v.producer ~= nil and v.producer ~= cjson.null then return {'producer', v.producer} end
  if type(v.consumers) == 'table' then consumers = v.consumers end
else
  local count = redis.call('HLEN', KEYS[2])
  if count + 1 > tonumber(ARGV[3]) then return {'count', count, 1} end
end
local var = {status = 'ready', value = ARGV[2], error = cjson.null, producer = cjson.null,
             consumers = consumers, updated_at = tonumber(ARGV[4])}
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(var))
redis.call('HSETNX', KEYS[1], 'created', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSETNX', KEYS[1], 'deadline', ARGV[6]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[7], ARGV[8])
local out = '[]'
if #consumers > 0 then out = cjson.encode(consumers) end
return {'ok', out}
"""

# KEYS: meta, vars, reqs, work. ARGV: channel, event. Drops the session, wakes its waiters.
DELETE = """
local n = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"""

# KEYS: meta, reqs. ARGV: rid, record JSON, ttl. Overwrites an existing record only, and
# never a finished one with progress (a late progress save racing the final write).
SAVE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return 0 end
local s = cjson.decode(raw).status
if s == 'done' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: meta, reqs, work. ARGV: dead owner, new owner. Takes over every work entry of the
# session the dead owner holds; answers {rid, record JSON, work JSON, ...}.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local out = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local rid, entry = all[i], all[i + 1]
  local nl = string.find(entry, '\\n', 1, true)
  if nl and string.sub(entry, 1, nl - 1) == ARGV[1] then
    local rec = redis.call('HGET', KEYS[2], rid)
    if rec then
      redis.call('HSET', KEYS[3], rid, ARGV[2] .. string.sub(entry, nl))
      out[#out + 1] = rid
      out[#out + 1] = rec
      out[#out + 1] = string.sub(entry, nl + 1)
    else
      redis.call('HDEL', KEYS[3], rid)
    end
  end
end
return out
"""

# KEYS: work. ARGV: rid. The owner of a work entry ('' when there is none).
OWNER = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return '' end
local nl = string.find(entry, '\\n', 1, true)
if not nl then return '' end
return string.sub(entry, 1, nl - 1)
"""


def register_args(
    rec: RequestRecord, *, ttl_s: int, max_variables: int, now: float,
    deadline: float | None, validate: bool, work: bytes | None = None,
    channel: str = "", event: str = "",
) -> list[Any]:
    """ARGV of `REGISTER` for `rec`."""
    inputs = list(dict.fromkeys(rec.inputs))
    return [
        rec.id, rec.to_json(), rec.output or "", ttl_s, max_variables, repr(now),
        "" if deadline is None else repr(deadline), "1" if validate else "", work or b"",
        channel, event, len(inputs), *inputs,
    ]


def _str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def register_outcome(
    answer: list[Any], rec: RequestRecord, max_variables: int
) -> Registered | None:
    """What `REGISTER` wrote, or None when the caller must validate the graph first;
    a refusal raises the error `plans.plan_register` raises for the same state."""
    kind = _str(answer[0])
    if kind == "ok":
        deadline = _str(answer[2])
        inputs = {}
        for i in range(4, len(answer), 5):
            name, status, value, error, producer = (_str(x) for x in answer[i:i + 5])
            inputs[name] = Variable(name, status, value=value if status == "ready" else None,  # type: ignore[arg-type]
                                    error=error or None, producer=producer or None)
        return Registered(float(answer[1]), float(deadline) if deadline else None, int(answer[3]),
                          inputs)
    if kind == "validate":
        return None
    if kind == "dup":
        raise duplicate_request(rec.id)
    if kind == "status":
        raise already_settled(str(rec.output), _str(answer[1]))
    if kind == "producer":
        raise already_produced(str(rec.output), _str(answer[1]))
    if kind == "count":
        check_count(int(answer[1]), int(answer[2]), max_variables)
    raise ServiceUnavailable(f"unexpected registration answer {kind!r}")


def put_outcome(answer: list[Any], name: str, value: str, now: float,
                max_variables: int) -> Variable:
    """The variable `PUT` wrote; a refusal raises the error `plans.plan_put` raises."""
    kind = _str(answer[0])
    if kind == "ok":
        consumers = orjson.loads(answer[1])
        return Variable(name, "ready", value=value,
                        consumers=list(consumers) if isinstance(consumers, list) else [],
                        updated_at=now)
    if kind == "status":
        raise already_settled(name, _str(answer[1]))
    if kind == "producer":
        raise output_of_request(name, _str(answer[1]))
    if kind == "count":
        check_count(int(answer[1]), int(answer[2]), max_variables)
    raise ServiceUnavailable(f"unexpected put answer {kind!r}")


def settle_outcome(
    answer: list[Any], name: str, value: str, producer: str | None, now: float
) -> Variable | bool:
    """What `SETTLE` means: the settled variable ('ready'), True/False ('failed'); a
    refusal raises the error `plans.plan_result` raises for the same state."""
    kind = _str(answer[0])
    if kind == "ok":
        consumers = orjson.loads(answer[2])
        return Variable(name, "ready", value=value, producer=_str(answer[1]) or None,
                        consumers=list(consumers) if isinstance(consumers, list) else [],
                        updated_at=now)
    if kind in ("settled", "noop"):
        return False
    if kind == "missing":
        raise missing_variable(name)
    if kind == "status":
        raise already_settled(name, _str(answer[1]))
    if kind == "producer":
        raise not_the_producer(name, str(producer))
    raise ServiceUnavailable(f"unexpected settle answer {kind!r}")
