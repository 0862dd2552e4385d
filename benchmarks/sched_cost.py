"""Micro-benchmark: CPU cost of one scheduling decision.

Steady state with a queue of N ready jobs and E engines of 8 slots each:
every step finishes one in-flight job, submits a new one (so the queue stays
at N) and calls ``schedule``. Reported: microseconds per dispatched job for
submit + schedule + prefill/finish events, and for ``schedule`` alone (best
of ``--repeat`` runs, since shared machines are noisy).
Prompts are 1,024 tokens, half of them behind one of 8 shared 512-token
system prompts; 30 % are throughput jobs, 10 % come in task groups of 8;
four tenants. Run: ``python -m benchmarks.sched_cost [--steps 2000]``.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from analysis.prefix import block_hashes
from gateway.policy import Dispatch, Job, SchedulerConfig, make_scheduler

PROMPT = 1024
SHARED = 512


def make_jobs(n: int, seed: int = 0) -> list[Job]:
    rng = random.Random(seed)
    systems = [list(range(1_000_000 * (k + 1), 1_000_000 * (k + 1) + SHARED)) for k in range(8)]
    jobs = []
    group, left = None, 0
    for i in range(n):
        uniq = list(range(10_000_000 + i * PROMPT, 10_000_000 + (i + 1) * PROMPT))
        if rng.random() < 0.5:
            tokens = systems[rng.randrange(8)] + uniq[: PROMPT - SHARED]
        else:
            tokens = uniq
        if left == 0 and rng.random() < 0.014:  # ~10 % of jobs in groups of 8
            group, left = f"g{i}", 8
        g = None
        if left:
            g, left = group, left - 1
        jobs.append(
            Job(
                id=f"j{i}",
                tenant=f"t{i % 4}",
                prompt_tokens=len(tokens),
                prefix_hashes=tuple(block_hashes(tokens, 32)),
                max_tokens=rng.choice([50, 200, 500]),
                latency_critical=rng.random() >= 0.3,
                group=g,
                weight=1.0 + (i % 4),
            )
        )
    return jobs


def run(policy: str, engines: int, queued: int, steps: int) -> tuple[float, float]:
    cfg = SchedulerConfig()
    s = make_scheduler(policy, cfg)  # type: ignore[arg-type]
    for e in range(engines):
        s.add_engine(f"e{e}", 8, 400_000, 0.0)
    jobs = make_jobs(queued + engines * 8 + steps + 64, seed=engines)
    feed = iter(jobs)
    now = 0.0
    for _ in range(queued + engines * 8):
        s.submit(next(feed), now)
    inflight: deque[tuple[str, int]] = deque()

    def settle(decisions: list) -> int:
        n = 0
        for d in decisions:
            if isinstance(d, Dispatch):
                s.on_prefill_done(d.job_id, now)
                inflight.append((d.job_id, d.expected_cached_tokens))
                n += 1
        return n

    settle(s.schedule(now))  # fill the engines
    dispatched = 0
    sched_time = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        now += 0.001
        if inflight:
            jid, cached = inflight.popleft()
            s.on_finish(jid, now, cached_tokens=cached)  # the engine confirms the estimate
        s.submit(next(feed), now)
        t1 = time.perf_counter()
        out = s.schedule(now)
        sched_time += time.perf_counter() - t1
        dispatched += settle(out)
    total = time.perf_counter() - t0
    dispatched = max(dispatched, 1)
    return total / dispatched * 1e6, sched_time / dispatched * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--engines", type=int, nargs="*", default=[1, 4, 16, 64])
    ap.add_argument("--queued", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (noise)")
    ap.add_argument("--policies", nargs="*", default=["parrot", "least_loaded", "round_robin"])
    args = ap.parse_args()
    head = f"{'policy':<13}{'engines':>8}{'queued':>8}{'us/decision':>13}{'us schedule()':>15}"
    print(head)
    print("-" * len(head))
    for policy in args.policies:
        for engines in args.engines:
            for queued in args.queued:
                runs = [run(policy, engines, queued, args.steps) for _ in range(args.repeat)]
                total, sched = min(runs)
                print(f"{policy:<13}{engines:>8}{queued:>8}{total:>13.1f}{sched:>15.1f}")


if __name__ == "__main__":
    main()
