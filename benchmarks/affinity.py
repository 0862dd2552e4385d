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
                "systems": list(self.systems or self.services or ()), "note": self.note}


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


class PinnedHarness:
    """Context manager: pin this process to the harness CPUs; restore on exit."""

    def __init__(self, affinity: Affinity) -> None:
        self.affinity = affinity
        self._saved: set[int] | None = None

    def __enter__(self) -> PinnedHarness:
        if self.affinity.harness and hasattr(os, "sched_setaffinity"):
            self._saved = os.sched_getaffinity(0)
            set_process_affinity(os.getpid(), self.affinity.harness)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            set_process_affinity(os.getpid(), tuple(self._saved))
