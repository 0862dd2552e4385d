"""Shared type aliases, kept in one tiny module (cf. starlette/types.py)."""

from __future__ import annotations

from typing import Any, Literal

JSON = dict[str, Any]
Criteria = Literal["latency", "throughput"]
Route = Literal["chat", "completion"]
VarStatus = Literal["pending", "ready", "failed"]
RequestStatus = Literal["waiting", "queued", "running", "done", "failed", "cancelled"]
EngineKind = Literal["sglang", "openai"]
