"""Sessions: one application run on the gateway, over the OpenAI SDK's HTTP client.

Every call goes through the ``openai`` client (its base URL, API key, HTTP
client, retries), so a custom ``http_client`` sees all traffic. Chat requests
carry X-Parrot-* headers via ``extra_headers``; session endpoints use the
SDK's generic ``get``/``put``/``delete``. Writes (PUT, submissions) are not
retried: a retry after a lost answer would meet 409 for its own first write.

``with Session(...) as s`` makes ``s`` the current session of the context
(``contextvars``), used by :func:`compat.semantic_function`. Leaving the block
does not delete server state (it expires with the session TTL, and another
process may share the session id) unless ``close_on_exit=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any, Union

import openai

from . import _protocol as proto
from ._errors import SessionNotFound, VariableTimeout, from_openai_error, variable_failed
from ._protocol import Criteria, Messages, VariableState
from ._variable import Variable

__all__ = ["AsyncSession", "Session", "current_session"]

AnySession = Union["Session", "AsyncSession"]
_current: ContextVar[AnySession | None] = ContextVar("parrot_session", default=None)


def current_session() -> AnySession:
    """The session of the innermost ``with Session(...)`` / ``async with AsyncSession(...)``."""
    s = _current.get()
    if s is None:
        raise RuntimeError("no current session: use `with Session(...)` or pass session=")
    return s


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except openai.APIStatusError as exc:
        raise from_openai_error(exc) from exc


class _Base:
    """State and pure helpers shared by :class:`Session` and :class:`AsyncSession`."""

    is_async = False

    def __init__(
        self,
        session_id: str | None,
        default_model: str | None,
        timeout: float | None,
        close_on_exit: bool,
    ) -> None:
        self.id = proto.check_session_id(session_id) if session_id else proto.new_session_id()
        self.timeout = timeout
        self.close_on_exit = close_on_exit
        self._model = default_model
        self._counter = itertools.count(1)
        self._token: Token[AnySession | None] | None = None

    def new_name(self, prefix: str = "v") -> str:
        """A fresh variable name for this client, e.g. ``summarize_3``."""
        return f"{proto.name_prefix(prefix)}_{next(self._counter)}"

    def variable(self, name: str) -> Variable:
        """A handle on variable ``name`` of this session (no request is made)."""
        return Variable(proto.check_name(name), self)  # type: ignore[arg-type]

    def _headers(self, output: str | None, is_async: bool, criteria: str | None) -> dict[str, str]:
        return proto.headers(
            self.id, output=output, is_async=is_async, criteria=criteria, timeout_s=self.timeout
        )

    def _body(
        self, messages: Messages, model: str, max_tokens: int | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": proto.as_messages(messages), **params}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body

    @staticmethod
    def _settle(state: VariableState) -> str:
        if state.status == "failed":
            raise variable_failed(state.name, state.error)
        return state.value or ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


class Session(_Base):
    """A synchronous client for one application run (one ``X-Parrot-Session``).

    Pass an ``openai.OpenAI`` client, or ``base_url`` (e.g.
    ``http://127.0.0.1:8000/v1``) and ``api_key``. ``timeout`` is the session
    deadline sent as ``X-Parrot-Timeout`` (seconds; server default 600).
    """

    def __init__(
        self,
        client: openai.OpenAI | None = None,
        *,
        base_url: str | None = None,
        api_key: str = "EMPTY",
        session_id: str | None = None,
        default_model: str | None = None,
        timeout: float | None = None,
        close_on_exit: bool = False,
        http_client: Any = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(session_id, default_model, timeout, close_on_exit)
        if client is None:
            if base_url is None:
                raise ValueError("pass an openai.OpenAI client or base_url")
            kw: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
            client = openai.OpenAI(
                base_url=base_url, api_key=api_key, max_retries=max_retries, **kw
            )
        self.client = client

    # -- context -----------------------------------------------------------
    def __enter__(self) -> Session:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self.close_on_exit:
            self.close()

    # -- models --------------------------------------------------------------
    def model(self) -> str:
        """``default_model``, else the first model the gateway lists (asked once)."""
        if self._model is None:
            with _translated():
                models = self.client.models.list().data
            if not models:
                raise RuntimeError("the gateway lists no models; pass default_model=")
            self._model = models[0].id
        return self._model

    # -- variables -------------------------------------------------------------
    def set(self, name: str, value: str) -> Variable:
        """Write input variable ``name`` (once; a second write raises VariableConflict)."""
        if not isinstance(value, str):
            raise TypeError("variable values are strings")
        path = proto.variable_path(self.id, proto.check_name(name))
        with _translated():
            self.client.put(path, cast_to=object, body={"value": value}, options={"max_retries": 0})
        return Variable(name, self)

    def state(self, name: str, wait: float = 0.0) -> VariableState:
        """One GET of the variable's state, long-polling up to ``wait`` (≤ 60) seconds."""
        path = proto.variable_path(self.id, proto.check_name(name))
        options: dict[str, Any] = {
            "params": {"wait": f"{wait:g}"},
            "timeout": wait + proto.POLL_SLACK_S,
        }
        with _translated():
            data = self.client.get(path, cast_to=object, options=options)
        return VariableState.from_json(data)  # type: ignore[arg-type]

    def get(self, name: str, wait: float | None = None, *, timeout: float | None = None) -> str:
        """The value of ``name``, waiting until it is ready.

        ``wait`` (alias ``timeout``) bounds the wait in seconds; None waits until
        the gateway settles the variable. Raises :class:`VariableFailed` (also an
        ``UpstreamFailed`` / ``DeadlineExceeded`` by its code) or :class:`VariableTimeout`.
        """
        limit = timeout if wait is None else wait
        start = time.monotonic()
        while True:
            slice_s = proto.poll_slices(limit, time.monotonic() - start)
            state = self.state(name, wait=slice_s or 0.0)
            if state.status != "pending":
                return self._settle(state)
            if slice_s is None or proto.poll_slices(limit, time.monotonic() - start) is None:
                raise VariableTimeout(f"variable '{name}' still pending after {limit:g} s")

    # -- session -------------------------------------------------------------
    def graph(self) -> dict[str, Any]:
        """The session graph: requests, edges, critical path, prefix groups."""
        with _translated():
            graph = self.client.get(proto.session_path(self.id), cast_to=object)
        return graph  # type: ignore[return-value]

    def close(self) -> None:
        """DELETE the session: cancel pending work, drop its variables (idempotent)."""
        with contextlib.suppress(SessionNotFound), _translated():
            self.client.delete(proto.session_path(self.id), cast_to=object)

    # -- requests ------------------------------------------------------------
    def submit(
        self,
        messages: Messages,
        *,
        output: str | None = None,
        criteria: Criteria | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        **params: Any,
    ) -> Variable:
        """Submit a chat request that runs server-side once its ``{{inputs}}`` are ready.

        Answers at once (``X-Parrot-Async: 1``) with a :class:`Variable` for its
        output (``output`` or a fresh name). Message contents are sent as
        templates: use :func:`compat.escape` on user text containing ``{{``.
        """
        name = output or self.new_name("out")
        body = self._body(messages, model or self.model(), max_tokens, params)
        with _translated():
            self.client.with_options(max_retries=0).chat.completions.create(
                **body, extra_headers=self._headers(name, True, criteria)
            )
        return Variable(name, self)

    def chat(
        self,
        messages: Messages,
        *,
        output: str | None = None,
        criteria: Criteria | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        **params: Any,
    ) -> str:
        """A synchronous chat request in this session: placeholders are substituted
        server-side (held until their variables are ready); returns choice 0's text,
        also stored as variable ``output`` when given."""
        body = self._body(messages, model or self.model(), max_tokens, params)
        client = self.client.with_options(max_retries=0) if output else self.client
        with _translated():
            completion = client.chat.completions.create(
                **body, extra_headers=self._headers(output, False, criteria)
            )
        return proto.completion_text(completion)


class AsyncSession(_Base):
    """The asyncio twin of :class:`Session` (``openai.AsyncOpenAI``); methods are coroutines.

    ``async with AsyncSession(...) as s`` makes it current; calling a
    semantic function then returns an awaitable of its :class:`Variable`.
    """

    is_async = True

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        base_url: str | None = None,
        api_key: str = "EMPTY",
        session_id: str | None = None,
        default_model: str | None = None,
        timeout: float | None = None,
        close_on_exit: bool = False,
        http_client: Any = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(session_id, default_model, timeout, close_on_exit)
        if client is None:
            if base_url is None:
                raise ValueError("pass an openai.AsyncOpenAI client or base_url")
            kw: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
            client = openai.AsyncOpenAI(
                base_url=base_url, api_key=api_key, max_retries=max_retries, **kw
            )
        self.client = client
        self._model_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncSession:
        self._token = _current.set(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if self.close_on_exit:
            await self.close()

    async def model(self) -> str:
        """``default_model``, else the first model the gateway lists (asked once)."""
        async with self._model_lock:
            if self._model is None:
                with _translated():
                    page = await self.client.models.list()
                if not page.data:
                    raise RuntimeError("the gateway lists no models; pass default_model=")
                self._model = page.data[0].id
        return self._model

    async def set(self, name: str, value: str) -> Variable:
        """Write input variable ``name`` (once; a second write raises VariableConflict)."""
        if not isinstance(value, str):
            raise TypeError("variable values are strings")
        path = proto.variable_path(self.id, proto.check_name(name))
        with _translated():
            await self.client.put(
                path, cast_to=object, body={"value": value}, options={"max_retries": 0}
            )
        return Variable(name, self)

    async def state(self, name: str, wait: float = 0.0) -> VariableState:
        """One GET of the variable's state, long-polling up to ``wait`` (≤ 60) seconds."""
        path = proto.variable_path(self.id, proto.check_name(name))
        options: dict[str, Any] = {
            "params": {"wait": f"{wait:g}"},
            "timeout": wait + proto.POLL_SLACK_S,
        }
        with _translated():
            data = await self.client.get(path, cast_to=object, options=options)
        return VariableState.from_json(data)  # type: ignore[arg-type]

    async def get(
        self, name: str, wait: float | None = None, *, timeout: float | None = None
    ) -> str:
        """The value of ``name``; see :meth:`Session.get`."""
        limit = timeout if wait is None else wait
        start = time.monotonic()
        while True:
            slice_s = proto.poll_slices(limit, time.monotonic() - start)
            state = await self.state(name, wait=slice_s or 0.0)
            if state.status != "pending":
                return self._settle(state)
            if slice_s is None or proto.poll_slices(limit, time.monotonic() - start) is None:
                raise VariableTimeout(f"variable '{name}' still pending after {limit:g} s")

    async def graph(self) -> dict[str, Any]:
        """The session graph: requests, edges, critical path, prefix groups."""
        with _translated():
            graph = await self.client.get(proto.session_path(self.id), cast_to=object)
        return graph  # type: ignore[return-value]

    async def close(self) -> None:
        """DELETE the session: cancel pending work, drop its variables (idempotent)."""
        with contextlib.suppress(SessionNotFound), _translated():
            await self.client.delete(proto.session_path(self.id), cast_to=object)

    async def submit(
        self,
        messages: Messages,
        *,
        output: str | None = None,
        criteria: Criteria | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        **params: Any,
    ) -> Variable:
        """See :meth:`Session.submit`."""
        name = output or self.new_name("out")
        body = self._body(messages, model or await self.model(), max_tokens, params)
        with _translated():
            await self.client.with_options(max_retries=0).chat.completions.create(
                **body, extra_headers=self._headers(name, True, criteria)
            )
        return Variable(name, self)

    async def chat(
        self,
        messages: Messages,
        *,
        output: str | None = None,
        criteria: Criteria | None = None,
        max_tokens: int | None = None,
        model: str | None = None,
        **params: Any,
    ) -> str:
        """See :meth:`Session.chat`."""
        body = self._body(messages, model or await self.model(), max_tokens, params)
        client = self.client.with_options(max_retries=0) if output else self.client
        with _translated():
            completion = await client.chat.completions.create(
                **body, extra_headers=self._headers(output, False, criteria)
            )
        return proto.completion_text(completion)
