"""compat._errors: gateway error answers become the SDK's exception classes."""

from __future__ import annotations

import httpx2
import openai
import pytest

from compat import (
    BadRequest,
    DeadlineExceeded,
    DependencyCycle,
    EngineError,
    NotFound,
    ParrotError,
    PayloadTooLarge,
    RateLimited,
    SessionNotFound,
    UpstreamFailed,
    VariableConflict,
    VariableFailed,
    VariableNotFound,
)
from compat._errors import from_openai_error, from_status, variable_failed


def body(code: str | None, message: str = "m") -> dict[str, object]:
    return {"error": {"message": message, "type": "t", "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "dependency_cycle", DependencyCycle),
        (400, "invalid_placeholder", BadRequest),
        (404, "session_not_found", SessionNotFound),
        (404, "variable_not_found", VariableNotFound),
        (404, "model_not_found", NotFound),
        (409, "conflict", VariableConflict),
        (413, "payload_too_large", PayloadTooLarge),
        (424, "upstream_failed", UpstreamFailed),
        (429, "rate_limit_exceeded", RateLimited),
        (502, "engine_error", EngineError),
        (503, None, EngineError),
        (504, "deadline_exceeded", DeadlineExceeded),
        (504, "timeout", DeadlineExceeded),
        (500, "internal_error", ParrotError),
    ],
)
def test_from_status(status: int, code: str | None, cls: type[ParrotError]) -> None:
    exc = from_status(status, body(code, "why"))
    assert type(exc) is cls and exc.status == status and exc.code == code and str(exc) == "why"
    assert type(from_status(status, body(code)["error"])) is cls  # inner object works too


def test_from_openai_error_keeps_non_http_errors() -> None:
    req = httpx2.Request("POST", "http://h/v1/chat/completions")
    resp = httpx2.Response(409, request=req, json=body("conflict", "twice"))
    err = openai.ConflictError("twice", response=resp, body=body("conflict", "twice")["error"])
    assert isinstance(from_openai_error(err), VariableConflict)
    other = ValueError("x")
    assert from_openai_error(other) is other


@pytest.mark.parametrize(
    ("error", "classes"),
    [
        ("upstream_failed: input variable 'x' failed: boom", (UpstreamFailed,)),
        ("deadline_exceeded: input 'y' was not ready", (DeadlineExceeded, TimeoutError)),
        ("engine_error: engine answered 500", (EngineError,)),
        ("something odd", ()),
    ],
)
def test_failed_variable_is_also_its_code_class(error: str, classes: tuple[type, ...]) -> None:
    exc = variable_failed("v", error)
    assert isinstance(exc, VariableFailed) and exc.variable == "v" and exc.error == error
    for cls in classes:
        assert isinstance(exc, cls)
    if not classes:
        assert type(exc) is VariableFailed and exc.code is None
