"""The identifier grammar of SPEC section 4, in one place.

Always matched whole (``fullmatch``): ``^...$`` with ``re.match`` would let a
trailing newline through.
"""

from __future__ import annotations

import re

SESSION_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def is_session_id(value: str) -> bool:
    return SESSION_ID.fullmatch(value) is not None


def is_variable_name(value: str) -> bool:
    return VARIABLE_NAME.fullmatch(value) is not None
