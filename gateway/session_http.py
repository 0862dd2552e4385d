"""HTTP side of semantic-variable requests: the X-Parrot-* headers, how the answer goes
out (at once for async, held for sync, streamed), and client disconnects.

The run itself is `session_runner.SessionRunner`'s; this module only turns a
Starlette request into a `Submission` and the runner's results into responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from backends.base import Usage
from common.errors import BadRequest
from common.ids import is_session_id, is_variable_name
from common.serving import finished_before_disconnect
from common.types import JSON, Route

from .auth import Principal
from .responses import CLIENT_CLOSED, FastJSONResponse, primed, streaming
from .session_runner import OUTPUT_PARAM, Run, SessionRunner, Submission
from .store import RequestRecord

H_SESSION = "x-parrot-session"
H_OUTPUT = OUTPUT_PARAM
H_ASYNC = "x-parrot-async"
H_CRITERIA = "x-parrot-criteria"
H_TIMEOUT = "x-parrot-timeout"
MAX_TIMEOUT_S = 86400.0


@dataclass(frozen=True)
class SemanticHeaders:
    session: str
    output: str | None
    is_async: bool
    criteria: str
    timeout_s: float


def is_semantic(headers: Mapping[str, str]) -> bool:
    """Only requests naming a session get placeholders and the session graph."""
    return H_SESSION in headers


def parse_headers(headers: Mapping[str, str], default_timeout_s: float) -> SemanticHeaders:
    session = headers.get(H_SESSION, "")
    if not is_session_id(session):
        raise BadRequest(
            "X-Parrot-Session must match [A-Za-z0-9_.-]{1,128}", param=H_SESSION, code="invalid_header"
        )
    output = headers.get(H_OUTPUT)
    if output is not None and not is_variable_name(output):
        raise BadRequest(
            "X-Parrot-Output must be a variable name [A-Za-z_][A-Za-z0-9_]{0,63}",
            param=H_OUTPUT, code="invalid_header",
        )
    raw_async = headers.get(H_ASYNC, "0").strip().lower()
    if raw_async not in ("0", "1", "true", "false", "yes", "no", ""):
        raise BadRequest("X-Parrot-Async must be 1 or 0", param=H_ASYNC, code="invalid_header")
    is_async = raw_async in ("1", "true", "yes")
    if is_async and output is None:
        raise BadRequest(
            "X-Parrot-Async needs X-Parrot-Output: an async result must go to a variable",
            param=H_ASYNC, code="invalid_header",
        )
    criteria = headers.get(H_CRITERIA, "latency").strip().lower()
    if criteria not in ("latency", "throughput"):
        raise BadRequest(
            "X-Parrot-Criteria must be 'latency' or 'throughput'", param=H_CRITERIA,
            code="invalid_header",
        )
    timeout_s = default_timeout_s
    if H_TIMEOUT in headers:
        try:
            timeout_s = float(headers[H_TIMEOUT])
        except ValueError:
            timeout_s = -1.0
        if not (0 < timeout_s <= MAX_TIMEOUT_S):
            raise BadRequest(
                f"X-Parrot-Timeout must be seconds in (0, {MAX_TIMEOUT_S:.0f}]", param=H_TIMEOUT,
                code="invalid_header",
            )
    return SemanticHeaders(session, output, is_async, criteria, timeout_s)


def parrot_info(rec: RequestRecord, status: str) -> JSON:
    """The ``parrot`` member of an answer: where the result goes and how far it is."""
    return {"session": rec.session, "output": rec.output, "status": status, "request_id": rec.id}


def pending_body(run: Run) -> JSON:
    """The async answer: an OpenAI object with empty choice 0 and ``finish_reason`` null."""
    rec = run.rec
    if run.route == "chat":
        choice: JSON = {"index": 0, "message": {"role": "assistant", "content": ""},
                        "finish_reason": None, "logprobs": None}
        obj = "chat.completion"
        prefix = "chatcmpl-"
    else:
        choice = {"index": 0, "text": "", "finish_reason": None, "logprobs": None}
        obj = "text_completion"
        prefix = "cmpl-"
    return {
        "id": prefix + rec.id,
        "object": obj,
        "created": int(rec.created_at),
        "model": run.body.get("model") or "",
        "choices": [choice],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "parrot": parrot_info(rec, "pending"),
    }


async def handle(
    runner: SessionRunner, request: Request, route: Route, body: JSON, principal: Principal,
    *, on_usage: Callable[[Usage], Any] | None = None,
) -> Response:
    """Answer a chat/completion request that carries X-Parrot-Session."""
    h = parse_headers(request.headers, runner.settings.default_timeout_s)
    run = await runner.register(Submission(
        tenant=principal.tenant, session=h.session, route=route, body=body,
        request_id=request.state.request_id, output=h.output, criteria=h.criteria,
        timeout_s=h.timeout_s, weight=principal.weight, on_usage=on_usage,
    ))
    if h.is_async:
        runner.start(run, detached=True)
        return FastJSONResponse(pending_body(run))
    if body.get("stream"):
        return streaming(await primed(await runner.open_stream(run)))
    task = runner.start(run)
    # Shield: a disconnecting client must not kill work whose output others need.
    waiter = asyncio.shield(task)
    # Its outcome is read here or, after a disconnect, nowhere: mark it retrieved.
    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
    if not await finished_before_disconnect(request, waiter):
        await runner.cancel_unless_needed(run.rec, task)
        return Response(status_code=CLIENT_CLOSED)
    return FastJSONResponse({**waiter.result(), "parrot": parrot_info(run.rec, "ready")})
