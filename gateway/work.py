"""Accepted work that outlives its replica: work entries, an index per replica, adoption.

A request with an output variable is *work*: once accepted (HTTP 200 for an async
request), its variable must end ready or failed even if the replica that took it
dies. The design is leases, not a hand-made queue:

- **Owner and liveness.** The registration script writes the request's work entry
  ``<owner>\\n<WorkItem JSON>`` into its session's ``work`` hash, in the same
  atomic step as its record (gateway/store/scripts.py ``REGISTER``); the settle
  script that writes its result or failure drops the entry in the same step.
  The owner's liveness is its membership lease (gateway/replicas.py).
- **Findable.** Each replica keeps a sorted set of the sessions it holds work in,
  ``<prefix>:{replica:<id>}:sessions`` (member: the session's hash tag, score:
  when added). The entry is added before the request is acknowledged, once per
  session while this replica holds work there, concurrently with the
  registration (one round trip for both).
- **Adoption.** When a lease expires, every live replica walks the dead one's
  index: for each session, it first indexes the session under itself, then
  claims (one script in the session's slot: every entry whose owner is the dead
  replica becomes its own) and runs what it claimed, then removes the session
  from the dead index. Two adopters split the entries between them; an adopter
  that dies midway left the sessions in both indexes, and whoever adopts it
  finishes the job. When the dead index is empty the dead replica is forgotten.
- **A re-run is safe**: outputs are written once (a second write is refused and
  ignored), and a result computed twice is the same prompt run twice.

Every key is single-slot (sessions use their own hash tag, an index its
replica's), so all of this works on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from common.errors import ParrotError
from common.types import JSON, Route

from .redis_errors import ANY as REDIS_ANY
from .store import RequestRecord, SessionStore
from .store.session_store import parse_tag, session_tag, store_errors

log = logging.getLogger("parrot.work")

_BATCH = 100
# KEYS[1] an index; ARGV: cutoff, members... Removes members added at or before cutoff
# (one added again since keeps its place).
_TRIM = """
local n = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True)
class WorkItem:
    """What another replica needs to run an accepted request again (the record holds
    the rest: session, inputs, output, criteria)."""

    route: Route
    body: JSON
    request_id: str
    deadline: float  # absolute epoch time
    weight: float = 1.0

    def entry(self, owner: str) -> bytes:
        return owner.encode() + b"\n" + orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes) -> WorkItem:
        d = orjson.loads(raw)
        return cls(route=d["route"], body=d["body"], request_id=d["request_id"],
                   deadline=float(d["deadline"]), weight=float(d.get("weight", 1.0)))


Adopt = Callable[[RequestRecord, WorkItem], None]


class WorkLedger:
    """This replica's index of sessions it holds work in, and adoption of dead replicas'.

    `adopt` is a `Membership.on_dead` listener; `run` is called for each adopted
    request (the session runner starts it).
    """

    def __init__(self, redis: Any, store: SessionStore, replica: str, *, prefix: str = "parrot",
                 run: Adopt | None = None, forget: Callable[[str], Any] | None = None) -> None:
        self._redis = redis
        self.store = store
        self.replica = replica
        self.prefix = prefix
        self.run = run
        self.forget = forget  # Membership.forget
        self._indexed: dict[str, float] = {}  # session tag -> when this replica added it
        self.adopted = 0  # requests taken over from dead replicas

    def index_key(self, replica: str) -> str:
        return f"{self.prefix}:{{replica:{replica}}}:sessions"

    @store_errors
    async def note(self, tenant: str, session: str) -> None:
        """Make sure this replica's index lists the session (a round trip only the first
        time: until `trim` finds the session idle)."""
        tag = session_tag(tenant, session)
        if tag in self._indexed:
            return
        now = time.time()
        self._indexed[tag] = now
        try:
            await self._redis.zadd(self.index_key(self.replica), {tag: now})
        except BaseException:
            self._indexed.pop(tag, None)
            raise

    async def reindex(self) -> None:
        """Our lease had lapsed: peers may have emptied our index; note sessions afresh."""
        self._indexed.clear()

    async def trim(self, busy: Iterable[tuple[str, str]], idle_s: float = 30.0) -> int:
        """Drop sessions where this replica has held no work for ``idle_s`` from its index."""
        keep = {session_tag(t, s) for t, s in busy}
        cutoff = time.time() - idle_s
        stale = [tag for tag, at in self._indexed.items() if at <= cutoff and tag not in keep]
        for tag in stale:
            del self._indexed[tag]
        removed = 0
        for i in range(0, len(stale), _BATCH):
            removed += int(await self._redis.eval(
                _TRIM, 1, self.index_key(self.replica), cutoff, *stale[i:i + _BATCH]))
        return removed

    async def own_sessions(self) -> list[tuple[str, str]]:
        """The sessions this replica's index lists."""
        raw = await self._redis.zrange(self.index_key(self.replica), 0, -1)
        return [parse_tag(t.decode() if isinstance(t, bytes) else t) for t in raw]

    async def reconcile(self, running: Collection[str]) -> int:
        """Run again what Redis says this replica owns but it runs nowhere: a result or
        failure acknowledged by a Redis master that died before replicating it, or lost
        with the last second of an AOF, leaves its work entry behind as still owned
        here. ``running``: the request ids this replica is responsible for now."""
        again = 0
        for tenant, session in await self.own_sessions():
            try:
                claimed = await self.store.claim_work(tenant, session, self.replica, self.replica)
            except ParrotError:
                continue
            for rec, raw in claimed:
                if rec.id not in running and self.run is not None:
                    again += 1
                    self.run(rec, WorkItem.from_json(raw))
        if again:
            log.warning("re-running %d request(s) whose outcome Redis lost", again)
        return again

    async def leave(self) -> None:
        """A clean exit with no work left: drop this replica's index."""
        with contextlib.suppress(*REDIS_ANY):
            await self._redis.delete(self.index_key(self.replica))

    async def adopt(self, dead: str) -> int:
        """Take over and run every request `dead` still owns; forget `dead` once its index
        is empty. Returns how many requests this replica took."""
        key = self.index_key(dead)
        taken = 0
        t0 = time.monotonic()
        while True:
            tags = [t.decode() if isinstance(t, bytes) else t
                    for t in await self._redis.zrange(key, 0, _BATCH - 1)]
            if not tags:
                break
            for tag in tags:
                tenant, session = parse_tag(tag)
                await self.note(tenant, session)
                try:
                    claimed = await self.store.claim_work(tenant, session, dead, self.replica)
                except ParrotError as exc:  # e.g. a stored session id no longer valid
                    log.warning("cannot adopt work of session %s: %s", tag, exc)
                    claimed = []
                for rec, raw in claimed:
                    item = WorkItem.from_json(raw)
                    taken += 1
                    if self.run is not None:
                        self.run(rec, item)
                await self._redis.zrem(key, tag)
            await asyncio.sleep(0)
        self.adopted += taken
        if self.forget is not None:
            await self.forget(dead)  # its index is empty (an empty set does not exist)
        if taken:
            log.warning("adopted %d request(s) of dead replica %s in %.0f ms", taken, dead,
                        (time.monotonic() - t0) * 1000)
        return taken


__all__ = ["WorkItem", "WorkLedger"]
