"""A simulated SGLang engine: one GPU running SGLang with RadixAttention, in software.

It speaks SGLang's HTTP subset with SGLang's field names; its timing comes
from a cost model whose constants are a named profile (see ``profiles``).
It is a stand-in for a GPU, labelled as such in every answer.
"""

from __future__ import annotations

__all__ = ["SimConfig", "create_sim_app", "main", "start_sim_thread", "PROFILES"]


def __getattr__(name: str):  # lazy: importing the pure parts must not pull in the server
    if name in ("SimConfig", "create_sim_app", "main", "start_sim_thread"):
        from . import server

        return getattr(server, name)
    if name == "PROFILES":
        from .profiles import PROFILES

        return PROFILES
    raise AttributeError(name)
