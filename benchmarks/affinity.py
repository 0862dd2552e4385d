"""CPU pinning: the harness, the simulated engines and the systems under test (gateway,
its redis, smg, haproxy) on CPUs of their own where the machine has them, so that on a
small machine a slow client cannot be blamed on the system under test (or the reverse),
and a CPU-hungry proxy cannot slow the engines: they stand in for GPUs, which a proxy's
CPU use never slows. On 2-3 CPUs the systems share the harness's CPU (the engines keep
theirs): a system that takes the harness's time shows as harness lag and is marked not
comparable, instead of silently slowing the engines it is measured on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Affinity:
    """Which CPUs the harness, the engines (``services``) and the systems under test may use."""

    harness: tuple[int, ...] | None
    services: tuple[int, ...] | None
    note: str
    systems: tuple[int, ...] | None = None  # None: with the engines

    def to_json(self) -> dict[str, Any]:
        return {"harness": list(self.harness or ()), "services": list(self.services or ()),
                "systems": list(self.systems or self.services or ()), "note": self.note,
                "harness_realtime": _realtime()}


def _realtime() -> bool:
    """Whether this thread runs at a real-time priority (``PinnedHarness``)."""
    try:
        return os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == os.SCHED_FIFO
    except (OSError, AttributeError):
        return False


def _cpus(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


def plan_affinity(spec: str, available: tuple[int, ...]) -> Affinity:
    """``spec``: ``auto``, ``off``, ``HARNESS:SERVICES`` (engines and systems together) or
    ``HARNESS:ENGINES:SYSTEMS`` as CPU lists (``0:1``, ``0:1:0``, ``0-1:4-15:2-3``).
    ``auto``: nothing pinned on one CPU; on 2-3 CPUs the harness and the systems on the
    first, the engines on the rest; from 4 a quarter each for the harness and the
    systems, the rest for the engines. Pure."""
    cpus = tuple(sorted(available))
    if spec == "off":
        return Affinity(None, None, "not pinned (--pin off)")
    if spec == "auto":
        if len(cpus) < 2:
            return Affinity(None, None, f"not pinned: {len(cpus)} CPU")
        q = max(1, len(cpus) // 4)
        if len(cpus) < 4:
            harness, engines, systems = cpus[:1], cpus[1:], cpus[:1]
        else:
            harness, systems, engines = cpus[:q], cpus[q:2 * q], cpus[2 * q:]
    else:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--pin {spec!r}: expected auto, off, HARNESS:SERVICES or "
                             "HARNESS:ENGINES:SYSTEMS (e.g. 0:1 or 0:1:0)")
        harness, engines = _cpus(parts[0]), _cpus(parts[1])
        systems = _cpus(parts[2]) if len(parts) == 3 else engines
        bad = sorted(set(harness + engines + systems) - set(cpus))
        if bad:
            raise ValueError(f"--pin {spec!r}: CPUs {bad} are not available (have {list(cpus)})")
    if systems == engines:
        note = f"harness pinned to CPU {_fmt(harness)}, engines and systems under test to CPU {_fmt(engines)}"
    else:
        note = (f"harness pinned to CPU {_fmt(harness)}, simulated engines to CPU {_fmt(engines)}, "
                f"systems under test (gateway, redis, smg, haproxy) to CPU {_fmt(systems)}")
    return Affinity(harness, engines, note, systems)


def _fmt(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def set_process_affinity(pid: int, cpus: tuple[int, ...]) -> None:
    """Pin every thread of ``pid`` (threads keep their own mask on Linux)."""
    try:
        threads = [t.id for t in psutil.Process(pid).threads()]
    except psutil.Error:
        return
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


HARNESS_RT_PRIORITY = 1


class PinnedHarness:
    """Context manager: pin this process to the harness CPUs, and run its event loop's
    thread ahead of the systems under test that share those CPUs (``SCHED_FIFO`` at the
    lowest real-time priority, where allowed: root); restore both on exit.

    Why the priority: with the harness and a proxy on one CPU, the kernel's tick switched
    to the proxy in the middle of a burst of sends (it had slept, so it was owed time),
    and the last maps of an app left 4-9 ms late: the proxy's CPU was charged to its own
    client's lag. Ahead of it, the harness (a few % of the CPU) sends a burst in one go
    and the proxy spends its time delaying only its own answers."""

    def __init__(self, affinity: Affinity) -> None:
        self.affinity = affinity
        self._saved: set[int] | None = None
        self._policy: tuple[int, int] | None = None
        self.realtime = False

    def __enter__(self) -> PinnedHarness:
        if self.affinity.harness and hasattr(os, "sched_setaffinity"):
            self._saved = os.sched_getaffinity(0)
            set_process_affinity(os.getpid(), self.affinity.harness)
            try:
                self._policy = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)
                # Processes it starts from here on do not inherit the priority.
                os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                                      os.sched_param(HARNESS_RT_PRIORITY))
                self.realtime = True
            except (OSError, AttributeError):
                self._policy = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._policy is not None:
            try:
                os.sched_setscheduler(0, self._policy[0], os.sched_param(self._policy[1]))
            except OSError:
                pass
        if self._saved is not None:
            set_process_affinity(os.getpid(), tuple(self._saved))
