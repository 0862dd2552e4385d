"""``@semantic_function``: a prompt template that becomes one gateway request per call.

The docstring (or ``template=``) is the prompt; the function's parameters are
its ``{{placeholders}}``. A call submits an async request and returns a
:class:`Variable` at once. A ``str`` argument is inlined as literal text
(escaped, so user text can never open a placeholder); a ``Variable`` argument
becomes ``{{its name}}``, so its value never travels through the client; a
list of them is joined with newlines. The function body is never run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from ._protocol import Criteria, check_criteria, check_name
from ._session import AsyncSession, Session, current_session
from ._template import Ref, Template, TemplateError, Value, encode
from ._variable import Variable

__all__ = ["SemanticFunction", "semantic_function"]

RESERVED = ("session", "output", "criteria")
Arg = Union[str, int, float, Variable, Sequence[Union[str, Variable]]]


class SemanticFunction:
    """The callable that :func:`semantic_function` returns.

    ``f(**args)`` returns a Variable (inside ``with Session``) or an awaitable
    of one (inside ``async with AsyncSession``); ``await f.acall(**args)``
    always awaits. Call-time keywords: ``session=``, ``output=`` (variable
    name; default ``<function>_<n>``), ``criteria=``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        template: str,
        *,
        max_tokens: int | None,
        criteria: Criteria | None,
        model: str | None,
        system: str | None,
        temperature: float | None,
        params: Mapping[str, Any],
    ) -> None:
        functools.update_wrapper(self, fn)
        self.signature = inspect.signature(fn)
        try:
            self.template = Template(inspect.cleandoc(template))
        except TemplateError as exc:
            raise TemplateError(f"{fn.__qualname__}: {exc}") from None
        names = list(self.signature.parameters)
        for n in names:
            if n in RESERVED:
                raise TypeError(f"{fn.__qualname__}: parameter name {n!r} is reserved")
            kind = self.signature.parameters[n].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise TypeError(f"{fn.__qualname__}: *args/**kwargs cannot be placeholders")
        if set(names) != set(self.template.params):
            raise TypeError(
                f"{fn.__qualname__}: parameters {sorted(names)} must match the template's "
                f"placeholders {sorted(self.template.params)}"
            )
        self.max_tokens = max_tokens
        self.criteria = check_criteria(criteria)
        self.model = model
        self.system = system
        self.temperature = temperature
        self.params = dict(params)

    def messages(self, *args: Any, session_id: str, **kwargs: Any) -> list[dict[str, str]]:
        """The chat messages a call with these arguments sends (pure; for tests and debugging)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = {k: _value(k, v, session_id) for k, v in bound.arguments.items()}
        out: list[dict[str, str]] = []
        if self.system is not None:
            out.append({"role": "system", "content": encode([self.system])})
        out.append({"role": "user", "content": self.template.render(values)})
        return out

    def _request(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], sess: Session | AsyncSession
    ) -> dict[str, Any]:
        output = kwargs.pop("output", None)
        criteria = kwargs.pop("criteria", None)
        req: dict[str, Any] = dict(self.params)
        req["messages"] = self.messages(*args, session_id=sess.id, **kwargs)
        req["output"] = check_name(output) if output else sess.new_name(self.__name__)
        req["criteria"] = check_criteria(criteria) or self.criteria
        if self.max_tokens is not None:
            req["max_tokens"] = self.max_tokens
        if self.model is not None:
            req["model"] = self.model
        if self.temperature is not None:
            req["temperature"] = self.temperature
        return req

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sess = kwargs.pop("session", None) or current_session()
        req = self._request(args, kwargs, sess)
        return sess.submit(**req)  # a coroutine for an AsyncSession

    async def acall(self, *args: Any, **kwargs: Any) -> Variable:
        """Submit from async code; a sync session's submit runs in a worker thread."""
        sess = kwargs.pop("session", None) or current_session()
        req = self._request(args, kwargs, sess)
        if isinstance(sess, AsyncSession):
            return await sess.submit(**req)
        return await asyncio.to_thread(lambda: sess.submit(**req))

    def __repr__(self) -> str:
        return f"<semantic_function {self.__qualname__}{self.signature}>"


def _value(param: str, arg: Any, session_id: str) -> Value:
    if isinstance(arg, Variable):
        if arg.session.id != session_id:
            raise ValueError(
                f"{param}: Variable {arg.name!r} belongs to session {arg.session.id!r}, "
                f"not {session_id!r}"
            )
        return Ref(arg.name)
    if isinstance(arg, str):
        return arg
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return str(arg)
    if isinstance(arg, (list, tuple)):
        items = [_value(param, a, session_id) for a in arg]
        if any(not isinstance(i, (str, Ref)) for i in items):
            raise TypeError(f"{param}: nested sequences are not supported")
        return items  # type: ignore[return-value]
    raise TypeError(f"{param}: expected str, Variable or a list of them, got {type(arg).__name__}")


def semantic_function(
    template: str | Callable[..., Any] | None = None,
    *,
    max_tokens: int | None = None,
    criteria: Criteria | None = None,
    model: str | None = None,
    system: str | None = None,
    temperature: float | None = None,
    **params: Any,
) -> Any:
    """Turn a function whose docstring is a prompt template into a gateway call.

    Usable bare (``@semantic_function``) or with options. ``template`` overrides
    the docstring; ``system`` adds a (literal) system message; further keyword
    arguments (``stop``, ``top_p``, ...) go into every request body.
    """

    def wrap(fn: Callable[..., Any]) -> SemanticFunction:
        text = template if isinstance(template, str) else fn.__doc__
        if not text:
            raise TypeError(f"{fn.__qualname__}: needs a docstring or template=")
        return SemanticFunction(
            fn, text, max_tokens=max_tokens, criteria=criteria, model=model, system=system,
            temperature=temperature, params=params,
        )

    if callable(template):
        fn, template = template, None
        return wrap(fn)
    return wrap
