"""CPU pinning: the harness on some CPUs, the services (engines, gateway, redis, smg)
on the others, so that on a small machine neither steals the other's time slices
and a slow client cannot be blamed on the system under test (or the reverse)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Affinity:
    """Which CPUs the harness and the services (engines, gateway, redis, smg) may use."""

    harness: tuple[int, ...] | None
    services: tuple[int, ...] | None
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"harness": list(self.harness or ()), "services": list(self.services or ()), "note": self.note}


def _cpus(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


def plan_affinity(spec: str, available: tuple[int, ...]) -> Affinity:
    """``spec``: ``auto`` (a quarter of the CPUs, at least one, for the harness, the rest
    for the services; nothing pinned on one CPU), ``off``, or ``HARNESS:SERVICES`` as
    CPU lists (``0:1``, ``0-1:2-15``). Pure."""
    cpus = tuple(sorted(available))
    if spec == "off":
        return Affinity(None, None, "not pinned (--pin off)")
    if spec == "auto":
        if len(cpus) < 2:
            return Affinity(None, None, f"not pinned: {len(cpus)} CPU")
        h = max(1, len(cpus) // 4)
        harness, services = cpus[:h], cpus[h:]
    else:
        left, sep, right = spec.partition(":")
        if not sep:
            raise ValueError(f"--pin {spec!r}: expected auto, off or HARNESS:SERVICES (e.g. 0:1)")
        harness, services = _cpus(left), _cpus(right)
        bad = sorted(set(harness + services) - set(cpus))
        if bad:
            raise ValueError(f"--pin {spec!r}: CPUs {bad} are not available (have {list(cpus)})")
    return Affinity(harness, services,
                    f"harness pinned to CPU {_fmt(harness)}, engines and systems under test to "
                    f"CPU {_fmt(services)}")


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
