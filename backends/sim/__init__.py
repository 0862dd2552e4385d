"""A simulated SGLang engine: one GPU running SGLang with RadixAttention, in software.

It speaks SGLang's HTTP subset with SGLang's field names; its timing comes
from a cost model whose constants are a named profile (see ``profiles``).
It is a stand-in for a GPU, labelled as such in every answer.

Modules, bottom up: ``radix``, ``cost_model``/``profiles``, ``engine`` (the pure
scheduler state machine), ``runner`` (drives it in scaled wall time), ``textgen``
(what a request says), ``protocol`` (request parsing), ``shapes`` (response
shaping), ``service`` (jobs, events, aborts), ``metrics`` (load, info, Prometheus),
``app`` (Starlette routes, loopback thread), ``cli`` (``parrot-gateway sim``);
``calibrate`` fits a profile to GPU measurements.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES", "SimConfig", "SimThread", "create_sim_app", "main", "start_sim_thread"]

_HOME = {"SimConfig": "config", "create_sim_app": "app", "SimThread": "app",
         "start_sim_thread": "app", "main": "cli", "PROFILES": "profiles"}


def __getattr__(name: str) -> Any:  # lazy: importing the pure parts must not pull in the server
    if name not in _HOME:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
