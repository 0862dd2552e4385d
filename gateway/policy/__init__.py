"""The scheduling policy: pure code over plain data, no I/O and no clock reads.

Events come in (``submit``, ``on_prefill_done``, ``on_finish``, engine load and
health, each with ``now``), dispatch decisions go out (``schedule(now)``).
``gateway.dispatcher`` is the async side that feeds events and executes
decisions. ``make_scheduler`` picks a policy by name; all share ``Policy``.
"""

from __future__ import annotations

from typing import Literal

from .baselines import LeastLoadedPolicy, RoundRobinPolicy
from .scheduler import Scheduler
from .types import Dispatch, Job, Policy, SchedulerConfig

__all__ = [
    "Dispatch",
    "Job",
    "LeastLoadedPolicy",
    "Policy",
    "PolicyName",
    "RoundRobinPolicy",
    "Scheduler",
    "SchedulerConfig",
    "make_scheduler",
]

PolicyName = Literal["parrot", "round_robin", "least_loaded"]


def make_scheduler(name: PolicyName = "parrot", config: SchedulerConfig | None = None) -> Policy:
    """Build a policy by name; all share the ``Policy`` interface."""
    if name == "parrot":
        return Scheduler(config)
    if name == "round_robin":
        return RoundRobinPolicy(config)
    if name == "least_loaded":
        return LeastLoadedPolicy(config)
    raise ValueError(f"unknown policy {name!r}")
