"""The store's rules as pure decisions: what a write may do, given the stored state.

Each ``plan_*`` function takes the current state (read under WATCH by
``session_store.py``, or held in memory by a test) and returns the `Plan` of
writes, or raises the refusal. No I/O and no clock reads (``now`` is passed).
The Lua fast path of registration (``scripts.py``) re-states `plan_register`
for speed; its answers are turned into the very errors defined here, and
tests/test_store_scripts.py checks the two agree over random histories.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.errors import Conflict, NotFound, PayloadTooLarge

from .records import RequestRecord, Variable

if TYPE_CHECKING:
    from gateway.notifier import EventKind


@dataclass
class Plan:
    """What one transaction writes; `result` is what the public method returns."""

    result: Any = None
    variables: list[Variable] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    events: list[tuple[str | None, EventKind]] = field(default_factory=list)
    deadline: float | None = None  # set on the session if it has none
    work: dict[str, bytes] = field(default_factory=dict)  # work entries to write (gateway/work.py)
    done: list[str] = field(default_factory=list)  # work entries to drop (their requests ended)
    reshaped: bool = False  # the graph changed (a registration): bump meta.graph

    @property
    def writes(self) -> bool:
        return bool(self.variables or self.requests)


@dataclass(frozen=True)
class Registered:
    """What a registration returns: the session's start (``meta.created``, shared by every
    replica: application age for the scheduler), its deadline, and the graph version
    after this registration (``meta.graph``: bumped by registrations only)."""

    created: float
    deadline: float | None
    graph: int
    # the inputs' states as registered (None: not read); informative, not compared
    inputs: dict[str, Variable] | None = field(default=None, compare=False)


# ------------------------------------------------------------------ refusals


def duplicate_request(rid: str) -> Conflict:
    return Conflict(f"request {rid} is already registered")


def already_settled(name: str, status: str) -> Conflict:
    return Conflict(f"variable {name!r} is already {status}", param=name)


def already_produced(name: str, producer: str) -> Conflict:
    return Conflict(f"variable {name!r} is already produced by request {producer}", param=name)


def output_of_request(name: str, producer: str) -> Conflict:
    return Conflict(f"variable {name!r} is the output of request {producer}", param=name)


def missing_variable(name: str) -> NotFound:
    return NotFound(f"variable {name!r} not found", param=name)


def not_the_producer(name: str, producer: str) -> Conflict:
    return Conflict(f"request {producer} does not produce variable {name!r}", param=name)


def check_size(name: str, value: str, max_value_bytes: int) -> None:
    size = len(value.encode())
    if size > max_value_bytes:
        raise PayloadTooLarge(
            f"value of variable {name!r} is {size} bytes; the limit is {max_value_bytes}",
            param=name,
        )


def check_count(var_count: int, new: int, max_variables: int) -> None:
    if new and var_count + new > max_variables:
        raise PayloadTooLarge(
            f"a session holds at most {max_variables} variables",
            code="too_many_variables",
        )


def _writable(name: str, var: Variable | None) -> None:
    """A variable accepts a first value only while pending."""
    if var is not None and var.status != "pending":
        raise already_settled(name, var.status)


# -------------------------------------------------------------- registration


def check_register(rec: RequestRecord, current: dict[str, Variable | None], id_taken: bool) -> None:
    """The refusals that need no more than the request's own variables, in the order the
    Lua script checks them: a taken id, then a settled or already produced output."""
    if id_taken:
        raise duplicate_request(rec.id)
    if rec.output is not None:
        var = current.get(rec.output)
        _writable(rec.output, var)
        if var is not None and var.producer is not None:
            raise already_produced(rec.output, var.producer)


def cycle_possible(rec: RequestRecord, current: dict[str, Variable | None]) -> bool:
    """A cycle needs an edge back into `rec`: its output already has consumers and it has
    inputs. Only then must the whole graph be read and validated."""
    out = current.get(rec.output) if rec.output else None
    return bool(rec.inputs) and out is not None and bool(out.consumers)


def plan_register(
    rec: RequestRecord,
    current: dict[str, Variable | None],
    var_count: int,
    max_variables: int,
    now: float,
    *,
    id_taken: bool = False,
) -> Plan:
    """Declare `rec.output` (pending, produced by rec) and its inputs (consumed by rec).

    `current` holds the stored state of the output and every input; `var_count`
    is how many variables the session holds.
    """
    check_register(rec, current, id_taken)
    check_count(var_count, sum(v is None for v in current.values()), max_variables)
    out: dict[str, Variable] = {}
    if rec.output is not None:
        base = current.get(rec.output) or Variable(rec.output)
        out[rec.output] = dataclasses.replace(
            base, producer=rec.id, consumers=list(base.consumers), updated_at=now
        )
    for name in dict.fromkeys(rec.inputs):
        prev = out.get(name) or current.get(name)
        var = (
            dataclasses.replace(prev, consumers=list(prev.consumers))
            if prev is not None
            else Variable(name, updated_at=now)
        )
        if rec.id not in var.consumers:
            var.consumers.append(rec.id)
        out[name] = var
    return Plan(variables=list(out.values()), requests=[rec], reshaped=True)


# --------------------------------------------------------------------- values


def plan_put(
    name: str, value: str, current: Variable | None, var_count: int, max_variables: int, now: float
) -> Plan:
    """A user sets an input: only a pending variable without a producer."""
    _writable(name, current)
    if current is not None and current.producer is not None:
        raise output_of_request(name, current.producer)
    check_count(var_count, current is None, max_variables)
    var = Variable(
        name,
        "ready",
        value=value,
        consumers=list(current.consumers) if current else [],
        updated_at=now,
    )
    return Plan(result=var, variables=[var], events=[(name, "ready")])


def plan_result(
    name: str, value: str, current: Variable | None, producer: str | None, now: float
) -> Plan:
    """The producer stores its output; the variable must exist (else the session went)."""
    if current is None:
        raise missing_variable(name)
    _writable(name, current)
    if producer is not None and current.producer != producer:
        raise not_the_producer(name, producer)
    var = dataclasses.replace(
        current, status="ready", value=value, consumers=list(current.consumers), updated_at=now
    )
    return Plan(result=var, variables=[var], events=[(name, "ready")])


def plan_fail(name: str, error: str, current: Variable | None, now: float) -> Plan:
    """Fail a pending variable; anything else is left alone (result False)."""
    if current is None or current.status != "pending":
        return Plan(result=False)
    var = dataclasses.replace(
        current, status="failed", error=error, consumers=list(current.consumers), updated_at=now
    )
    return Plan(result=True, variables=[var], events=[(name, "failed")])


def settled(states: dict[str, Variable]) -> bool:
    """A wait is over when every variable is ready or any has failed."""
    values = states.values()
    return all(v.status == "ready" for v in values) or any(v.status == "failed" for v in values)
