"""Session state shared by every gateway replica through Redis.

- ``records.py``: the stored data (`Variable`, `RequestRecord`) and their JSON;
- ``plans.py``: the rules, as pure decisions over the stored state (``plan_*``);
- ``scripts.py``: the Lua fast path of registration (re-states `plan_register`)
  and the record save script;
- ``session_store.py``: the Redis I/O (`SessionStore`: key layout, atomic
  writes, reads, long-poll waits).
"""

from .plans import Plan, plan_fail, plan_put, plan_register, plan_result, settled
from .records import RequestRecord, Variable
from .session_store import SESSION_DELETED, SessionKeys, SessionStore

__all__ = [
    "SESSION_DELETED",
    "Plan",
    "RequestRecord",
    "SessionKeys",
    "SessionStore",
    "Variable",
    "plan_fail",
    "plan_put",
    "plan_register",
    "plan_result",
    "settled",
]
