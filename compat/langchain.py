"""LangChain glue: ``ChatOpenAI`` in a parrot session, and runnables that return Variables.

LangChain needs nothing special to talk to the gateway; this module only
sets the headers and keeps values on the server:

- :func:`parrot_chat` returns a ``langchain_openai.ChatOpenAI`` whose
  ``default_headers`` put every call in ``session`` (optionally naming its
  output variable, async, with a criteria). A request whose prompt holds
  ``{{name}}`` placeholders is held by the gateway until they are ready.
  With ``output=`` the instance produces that one variable, so invoke it once.
- :func:`parrot_submit` is a runnable (prompt value, messages or text ->
  :class:`~compat.Variable`) that submits asynchronously under a fresh
  output name per call; ``.batch()`` fans out in one go.
- :func:`template_inputs` prepares prompt-template inputs: a ``Variable``
  becomes its ``{{placeholder}}``, text is escaped so it stays literal.
- :func:`parrot_get` is a runnable Variable -> value (the one wait).

Example (see examples/langchain_lcel.py)::

    with Session(base_url=url) as s:
        submit = parrot_submit(s, max_tokens=64)
        outline = (outline_prompt | submit).invoke({"topic": "radix trees"})
        chain = draft_prompt | parrot_chat(s, max_tokens=128) | StrOutputParser()
        print(chain.invoke(template_inputs({"outline": outline})))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_openai import ChatOpenAI

from . import _protocol as proto
from ._protocol import Criteria
from ._session import AsyncSession, Session
from ._template import escape
from ._variable import Variable

__all__ = ["parrot_chat", "parrot_get", "parrot_submit", "template_inputs", "to_openai_messages"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _model_of(session: Session | AsyncSession, model: str | None) -> str:
    if model:
        return model
    if isinstance(session, Session):
        return session.model()
    if session._model is None:
        raise ValueError("AsyncSession without default_model: pass model=")
    return session._model


def parrot_chat(
    session: Session | AsyncSession,
    *,
    output: str | None = None,
    async_: bool = False,
    criteria: Criteria | None = None,
    model: str | None = None,
    **chat_kwargs: Any,
) -> ChatOpenAI:
    """A ``ChatOpenAI`` talking to the session's gateway with its X-Parrot-* headers.

    ``async_=True`` (needs ``output``) answers at once with an empty message;
    read the value with ``session.get(output)``. Other keyword arguments
    (``max_tokens``, ``temperature``, ...) go to ``ChatOpenAI``.
    """
    headers = proto.headers(
        session.id, output=output, is_async=async_, criteria=criteria, timeout_s=session.timeout
    )
    client = session.client
    key = client.api_key if isinstance(client.api_key, str) else "EMPTY"
    chat_kwargs.setdefault("max_retries", 0 if output else 2)
    return ChatOpenAI(
        model=_model_of(session, model),
        base_url=str(client.base_url),
        api_key=key,  # type: ignore[arg-type]
        default_headers=headers,
        **chat_kwargs,
    )


def to_openai_messages(value: PromptValue | Sequence[BaseMessage] | str) -> list[dict[str, Any]]:
    """LangChain prompt output as OpenAI chat messages (text content)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = value.to_messages() if isinstance(value, PromptValue) else list(value)
    out: list[dict[str, Any]] = []
    for m in messages:
        role = _ROLES.get(m.type, m.type)
        out.append({"role": role, "content": m.content})
    return out


def parrot_submit(
    session: Session | AsyncSession,
    *,
    output: str | None = None,
    criteria: Criteria | None = None,
    max_tokens: int | None = None,
    model: str | None = None,
    **params: Any,
) -> Runnable[Any, Variable]:
    """A runnable that submits its input as an async request and returns the Variable.

    Each call gets a fresh output name (``output`` is used as the prefix). With
    an AsyncSession use ``ainvoke`` / ``abatch``.
    """
    prefix = output or "lc"

    def request(value: Any) -> dict[str, Any]:
        return dict(
            messages=to_openai_messages(value), output=session.new_name(prefix),
            criteria=criteria, max_tokens=max_tokens, model=model, **params,
        )

    if isinstance(session, AsyncSession):
        asession = session

        async def asubmit(value: Any) -> Variable:
            return await asession.submit(**request(value))

        return RunnableLambda(asubmit, name="parrot_submit")
    sync_session = session

    def submit(value: Any) -> Variable:
        return sync_session.submit(**request(value))

    return RunnableLambda(submit, name="parrot_submit")


def parrot_get(timeout: float | None = None) -> Runnable[Variable, str]:
    """A runnable that waits for a Variable and returns its value."""
    return RunnableLambda(lambda v: v.get(timeout=timeout), name="parrot_get")


def template_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Prompt-template inputs for a gateway prompt: Variables become ``{{name}}``,
    strings are escaped so a user's ``{{`` stays literal; lists of Variables are
    joined with newlines; other values pass through."""
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if isinstance(v, Variable):
            out[k] = v.placeholder
        elif isinstance(v, str):
            out[k] = escape(v)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Variable) for x in v):
            out[k] = "\n".join(x.placeholder for x in v)
        else:
            out[k] = v
    return out
