"""The load generator, and what it measures about itself.

A benchmark is only as honest as its client: an app started late or a step
sent late is charged to the system under test. So the drivers here keep no
per-request work that grows with concurrency (apps are built before the run,
the HTTP client is ``httpclient`` on uvloop), and every run records

* per app, its planned vs actual start (``AppResult.start_lag``) and per
  request, the delay from its inputs being ready to its being sent
  (``RequestTiming.send_lag_ms``, see ``systems``);
* the event loop's own lag (a 10 ms ticker's overshoot);
* CPU utilisation (fraction of one core, psutil) of the harness and of every
  service process (gateway, redis, smg, engines) over the run.

(``affinity`` pins the harness and the services to separate CPUs.)
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil

from .systems import AppResult, System
from .workloads import App, Arrival

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (it is in the ``bench`` extra)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a bench dependency
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ------------------------------------------------------------------ CPU and loop lag


class CpuMeter:
    """CPU time of named processes over an interval, as a fraction of one core. Each
    role is ``(pid, with_children)``: the harness is measured without its children
    (they are the services), a service with the processes it started."""

    def __init__(self, roles: dict[str, tuple[int, bool]]) -> None:
        self.roles = roles
        self._procs: dict[str, list[psutil.Process]] = {}
        self._t0: dict[str, float] = {}
        self._w0 = 0.0

    @staticmethod
    def _tree(pid: int, children: bool) -> list[psutil.Process]:
        try:
            p = psutil.Process(pid)
            return [p, *p.children(recursive=True)] if children else [p]
        except psutil.Error:
            return []

    @staticmethod
    def _cpu(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def start(self) -> None:
        self._procs = {role: self._tree(pid, ch) for role, (pid, ch) in self.roles.items()}
        self._t0 = {role: self._cpu(ps) for role, ps in self._procs.items()}
        self._w0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._w0, 1e-9)
        return {role: round((self._cpu(ps) - self._t0[role]) / wall, 4) for role, ps in self._procs.items()}


class LoopLag:
    """Overshoot of a 10 ms ticker: how late the event loop runs what is due; and the
    garbage collector's pauses. The cyclic collector is off during a run (a full
    collection paused the loop for 20-30 ms in runs of a few hundred apps); reference
    counting still frees almost everything, and the cycles go at the end."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.samples_ms: list[float] = []
        self.gc_pauses_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._gc_t0 = 0.0

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.samples_ms.append(max(0.0, (time.perf_counter() - t - self.interval_s) * 1000))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0:
            self.gc_pauses_ms.append((time.perf_counter() - self._gc_t0) * 1000)

    def start(self) -> None:
        gc.collect()
        gc.disable()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> list[float]:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.enable()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return self.samples_ms


# ------------------------------------------------------------------ drivers


async def run_open(system: System, arrivals: list[Arrival], time_scale: float,
                   on_done: Callable[[], None] | None = None) -> list[AppResult]:
    """Open loop: start each app at its arrival time (engine seconds x time-scale)."""
    t0 = time.time() + 0.02

    async def one(at_s: float, app: App) -> AppResult:
        when = t0 + at_s * time_scale
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        res = await system.run_app(app, scheduled=when)
        if on_done is not None:
            on_done()
        return res

    return list(await asyncio.gather(*(one(a.at_s, a.app) for a in arrivals)))


@dataclass
class ClosedLoop:
    """A closed-loop run: ``k`` apps kept in flight; throughput over the window after
    the first ``k`` completions (the warm-up) until the stop condition.

    ``cycles``: for each app completed in the window, the time since its slot's previous
    completion (think time + app latency). The throughput is ``k`` over their mean (the
    interactive response time law, X = N / (R + Z)), scaled by the share that succeeded.
    Counting completions over the window instead reads low when apps finish in waves
    (a first-come-first-served engine finishes a saturated batch's apps together): the
    window ends at the first completion after its minimum length, often the first of a
    wave, so it holds the whole gap before that wave but not the wave (map-reduce K=32:
    1.87-1.88 apps/s for the baseline in two runs, against 2.34-2.55 in the K search's
    probes; the baseline then held 2.06 apps/s open-loop at a 2.9 s mean)."""

    k: int
    results: list[AppResult] = field(default_factory=list)
    window: tuple[float, float] | None = None
    completed_in_window: int = 0
    cycles: list[float] = field(default_factory=list)

    @property
    def throughput_wall(self) -> float | None:
        if self.window is None or not self.cycles or sum(self.cycles) <= 0:
            return None
        return self.k * self.completed_in_window / sum(self.cycles)

    @property
    def throughput_counted(self) -> float | None:
        """Completions over the window (the older reading, kept for comparison)."""
        if self.window is None or self.window[1] <= self.window[0]:
            return None
        return self.completed_in_window / (self.window[1] - self.window[0])


async def run_closed(system: System, apps: Callable[[int], App], k: int, min_apps: int,
                     min_wall_s: float, max_wall_s: float,
                     on_done: Callable[[], None] | None = None, think_s: float = 0.0,
                     seed: int = 0) -> ClosedLoop:
    """Keep ``k`` apps running (a slot starts its next app when its app completes) until
    at least ``min_apps`` apps completed after the warm-up and ``min_wall_s`` passed in
    the window (or ``max_wall_s`` in all); then stop starting apps and let the ones in
    flight finish (they are kept in ``results`` but not counted).

    With ``think_s`` (wall seconds) each slot waits an exponential think time of that mean
    before each app, the first included. Without it the slots fall into lockstep: an
    engine that batches finishes many apps in one step, their slots restart together,
    and a burst of K x fan-out requests leaves the one client at once, the last of them
    sent ~100 ms late (measured: map-reduce at K=32, 400 sends in a burst). Real users
    do not restart in the same millisecond; the think time keeps the slots apart, and
    the K search still doubles K until the engines saturate."""
    out = ClosedLoop(k)
    t_begin = time.time()
    next_i = 0
    finished = 0
    stop = asyncio.Event()
    warm_end: float | None = None

    def take() -> App:
        nonlocal next_i
        app = apps(next_i)
        next_i += 1
        return app

    async def think(rng: random.Random, after: float) -> float:
        """Sleep the slot's think time; the app is scheduled for when it ends."""
        if think_s <= 0:
            return after
        at = after + rng.expovariate(1.0 / think_s)
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return at

    async def slot(i: int) -> None:
        nonlocal finished, warm_end
        rng = random.Random(seed * 1_000_003 + i)
        last_end = time.time()
        scheduled = await think(rng, last_end)
        while not stop.is_set():
            res = await system.run_app(take(), scheduled=scheduled)
            out.results.append(res)
            now = time.time()
            cycle, last_end = now - last_end, now
            if on_done is not None:
                on_done()
            if stop.is_set():
                break
            finished += 1
            if warm_end is None:
                if finished >= k:
                    warm_end = now
                elif now - t_begin >= max_wall_s:
                    stop.set()  # never warmed up: no window, no throughput
            else:
                out.cycles.append(cycle)
                if res.error is None:
                    out.completed_in_window += 1
                enough = out.completed_in_window >= min_apps and now - warm_end >= min_wall_s
                if enough or now - t_begin >= max_wall_s:
                    out.window = (warm_end, now)
                    stop.set()
                    break
            scheduled = await think(rng, now)

    await asyncio.gather(*(slot(i) for i in range(k)))
    return out


class AppPool:
    """App instances by index, built ahead with ``ensure`` (building one during a run
    would stall the event loop: its prompts are tokenized) and shared by every system's
    closed loop; an index past the pool is built on demand (and shows as lag)."""

    def __init__(self, make: Callable[[int], App]) -> None:
        self.make = make
        self.apps: list[App] = []

    def ensure(self, n: int) -> None:
        while len(self.apps) < n:
            self.apps.append(self.make(len(self.apps)))

    def __call__(self, i: int) -> App:
        self.ensure(i + 1)
        return self.apps[i]


MAX_POOL = 3000


def apps_needed(k: int, min_apps: int, min_engine_s: float, rate_guess: float | None) -> int:
    """How many apps a closed loop will likely start: 2K by the end of the warm-up (K
    completions), then one per completion in the window, and K spare; at most ``MAX_POOL``
    (beyond it apps are built during the run, which shows as lag)."""
    window = max(min_apps, math.ceil((rate_guess or 0.0) * min_engine_s))
    return min(MAX_POOL, 3 * k + window)
