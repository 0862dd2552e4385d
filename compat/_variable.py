"""Variable: a future-like handle on a semantic variable that lives on the gateway.

Values stay server-side until asked for: passing a Variable to another call
sends only its ``{{name}}`` placeholder. Values are written once, so a
settled value is cached on the handle.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ._errors import ParrotError, VariableFailed, variable_failed
from ._protocol import VariableState

__all__ = ["Variable"]


class Owner(Protocol):
    """What a Variable needs of its session (Session or AsyncSession): its id, whether
    its methods are coroutines, and ``get``/``state`` by variable name."""

    id: str
    is_async: bool

    def get(self, name: str, wait: float | None = None, *, timeout: float | None = None) -> Any: ...
    def state(self, name: str, wait: float = 0.0) -> Any: ...


class Variable:
    """Variable ``name`` of ``session``; get its value with ``get()`` or ``await aget()``."""

    __slots__ = ("name", "session", "_state")

    def __init__(self, name: str, session: Owner) -> None:
        self.name = name
        self.session = session
        self._state: VariableState | None = None

    @property
    def placeholder(self) -> str:
        """``{{name}}``: the text that refers to this variable in a prompt of its session."""
        return "{{" + self.name + "}}"

    def _is_async(self) -> bool:
        return self.session.is_async

    def _settled(self) -> str:
        assert self._state is not None
        if self._state.status == "failed":
            raise variable_failed(self.name, self._state.error)
        return self._state.value or ""

    def _remember(self, value: str | None = None, exc: ParrotError | None = None) -> None:
        if value is not None:
            self._state = VariableState(self.name, "ready", value)
        elif isinstance(exc, VariableFailed) and exc.variable == self.name:
            self._state = VariableState(self.name, "failed", error=exc.error)

    def get(self, timeout: float | None = None) -> str:
        """Block until the value is ready (or ``timeout`` seconds pass) and return it.

        Raises VariableFailed (and the class of its code, e.g. UpstreamFailed)
        or VariableTimeout. On an AsyncSession use ``await aget()``.
        """
        if self._state is not None:
            return self._settled()
        if self._is_async():
            raise TypeError("this Variable belongs to an AsyncSession: use `await var.aget()`")
        try:
            value = self.session.get(self.name, timeout)  # type: ignore[union-attr]
        except ParrotError as exc:
            self._remember(exc=exc)
            raise
        self._remember(value)
        return value  # type: ignore[no-any-return]

    async def aget(self, timeout: float | None = None) -> str:
        """Await the value; works for both session kinds (a sync one runs in a thread)."""
        if self._state is not None:
            return self._settled()
        try:
            if self._is_async():
                value = await self.session.get(self.name, timeout)  # type: ignore[misc]
            else:
                value = await asyncio.to_thread(self.session.get, self.name, timeout)
        except ParrotError as exc:
            self._remember(exc=exc)
            raise
        self._remember(value)
        return value  # type: ignore[no-any-return]

    def status(self) -> str:
        """``pending``, ``ready`` or ``failed``, asked without waiting (sync sessions)."""
        if self._state is not None:
            return self._state.status
        if self._is_async():
            raise TypeError("this Variable belongs to an AsyncSession: use `await var.astatus()`")
        state: VariableState = self.session.state(self.name)  # type: ignore[assignment]
        self._keep(state)
        return state.status

    async def astatus(self) -> str:
        """``pending``, ``ready`` or ``failed``, asked without waiting."""
        if self._state is not None:
            return self._state.status
        if self._is_async():
            state: VariableState = await self.session.state(self.name)  # type: ignore[misc]
        else:
            state = await asyncio.to_thread(self.session.state, self.name)  # type: ignore[arg-type]
        self._keep(state)
        return state.status

    def ready(self) -> bool:
        """True once the variable is settled (ready or failed); never waits."""
        return self.status() != "pending"

    def _keep(self, state: VariableState) -> None:
        if state.status != "pending":
            self._state = state

    def __eq__(self, other: Any) -> bool:
        return (
            isinstance(other, Variable)
            and other.name == self.name
            and other.session.id == self.session.id
        )

    def __hash__(self) -> int:
        return hash((self.session.id, self.name))

    def __repr__(self) -> str:
        status = self._state.status if self._state else "unknown"
        return f"Variable({self.name!r}, session={self.session.id!r}, status={status!r})"
