"""What the store keeps: semantic variables and request records, and their JSON forms.

Plain dataclasses, no I/O. A variable is stored as a field of the session's
``vars`` hash (its name is the field), a record as a field of ``reqs``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import orjson

from common.types import JSON, VarStatus


@dataclass
class Variable:
    """One semantic variable of a session; written once (ready or failed)."""

    name: str
    status: VarStatus = "pending"
    value: str | None = None
    error: str | None = None
    producer: str | None = None  # id of the request whose output this is
    consumers: list[str] = field(default_factory=list)  # ids of requests reading it
    updated_at: float | None = None

    def to_public(self) -> JSON:
        return {"name": self.name, "status": self.status, "value": self.value, "error": self.error}

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        del d["name"]  # the hash field
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, name: str, data: bytes | str) -> Variable:
        d = orjson.loads(data)
        return cls(
            name=name,
            status=d["status"],
            value=d.get("value"),
            error=d.get("error"),
            producer=d.get("producer"),
            # the Lua fast path's cjson writes an empty list as {}
            consumers=list(d.get("consumers") or []),
            updated_at=d.get("updated_at"),
        )


@dataclass
class RequestRecord:
    """What the session graph shows about one request.

    ``criteria_effective`` and ``group`` are written when the request is handed
    to the scheduler: they are the objective and task group it actually ran
    with, not a later re-analysis of the graph.
    """

    id: str
    tenant: str
    session: str
    inputs: list[str]
    output: str | None
    criteria: str = "latency"
    status: str = "waiting"  # waiting|queued|running|done|failed|cancelled
    engine: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    created_at: float = 0.0
    ready_at: float | None = None  # all inputs ready
    queued_at: float | None = None  # handed to the dispatcher (analysed, measured)
    started_at: float | None = None  # sent to an engine
    first_token_at: float | None = None  # first generated token (streamed engine calls)
    finished_at: float | None = None
    error: str | None = None
    replica: str | None = None  # gateway replica that owns it
    max_tokens: int | None = None
    criteria_effective: str | None = None  # the objective the scheduler used
    group: str | None = None  # the task group (map stage) the scheduler used
    prefix_hashes: list[int] = field(default_factory=list)  # block hashes of the prompt

    @property
    def queued_ms(self) -> float | None:
        if self.started_at is None:
            return None
        since = self.ready_at if self.ready_at is not None else self.created_at
        return round(max(0.0, self.started_at - since) * 1000, 3)

    @property
    def run_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(max(0.0, self.finished_at - self.started_at) * 1000, 3)

    def to_public(self) -> JSON:
        return {
            "id": self.id,
            "inputs": list(self.inputs),
            "output": self.output,
            "status": self.status,
            "criteria": self.criteria,
            "engine": self.engine,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "queued_ms": self.queued_ms,
            "run_ms": self.run_ms,
            "error": self.error,
            "criteria_effective": self.criteria_effective,
            "group_effective": self.group,
        }

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively, ~20x faster than asdict + json:
        # records are written 2-3 times per request and read back per graph view.
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> RequestRecord:
        d = orjson.loads(data)
        return cls(**{k: v for k, v in d.items() if k in _RECORD_FIELDS})


_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RequestRecord))
