"""Client-side error tree; gateway answers are translated here and nowhere else.

    ParrotError                         (status, code, message)
    ├── BadRequest                      400
    │   └── DependencyCycle             400 dependency_cycle
    ├── AuthenticationError             401 / 403
    ├── NotFound                        404
    │   ├── SessionNotFound             404 session_not_found
    │   └── VariableNotFound            404 variable_not_found
    ├── VariableConflict                409 (a variable is written once)
    ├── PayloadTooLarge                 413
    ├── UpstreamFailed                  424 upstream_failed (an input variable failed)
    ├── RateLimited                     429
    ├── EngineError                     502 / 503
    ├── DeadlineExceeded                504 deadline_exceeded / timeout
    ├── VariableFailed                  a variable ended ``failed`` (raised by ``get``)
    └── VariableTimeout                 ``get(timeout=...)`` ran out while still pending

A failed variable raises a class that is both :class:`VariableFailed` and the
class of the code its error string starts with, so ``except UpstreamFailed``
and ``except VariableFailed`` both catch "upstream_failed: input 'x' failed".
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "DeadlineExceeded",
    "DependencyCycle",
    "EngineError",
    "NotFound",
    "ParrotError",
    "PayloadTooLarge",
    "RateLimited",
    "SessionNotFound",
    "UpstreamFailed",
    "VariableConflict",
    "VariableFailed",
    "VariableNotFound",
    "VariableTimeout",
    "from_openai_error",
    "from_status",
    "variable_failed",
]


class ParrotError(Exception):
    """Base of every error the SDK raises for a gateway answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param


class BadRequest(ParrotError):
    pass


class DependencyCycle(BadRequest):
    pass


class AuthenticationError(ParrotError):
    pass


class NotFound(ParrotError):
    pass


class SessionNotFound(NotFound):
    pass


class VariableNotFound(NotFound):
    pass


class VariableConflict(ParrotError):
    pass


class PayloadTooLarge(ParrotError):
    pass


class UpstreamFailed(ParrotError):
    pass


class RateLimited(ParrotError):
    pass


class EngineError(ParrotError):
    pass


class DeadlineExceeded(ParrotError, TimeoutError):
    pass


class VariableTimeout(ParrotError, TimeoutError):
    """The client stopped waiting; the variable is still pending on the server."""


class VariableFailed(ParrotError):
    """A variable ended ``failed``; ``variable`` names it, ``error`` is the gateway's
    error string and ``code`` its leading code (e.g. ``upstream_failed``)."""

    variable: str = ""
    error: str = ""


class _UpstreamVariableFailed(VariableFailed, UpstreamFailed):
    pass


class _DeadlineVariableFailed(VariableFailed, DeadlineExceeded):
    pass


class _EngineVariableFailed(VariableFailed, EngineError):
    pass


class _CycleVariableFailed(VariableFailed, DependencyCycle):
    pass


_BY_CODE: dict[str, type[ParrotError]] = {
    "dependency_cycle": DependencyCycle,
    "conflict": VariableConflict,
    "variable_conflict": VariableConflict,
    "session_not_found": SessionNotFound,
    "variable_not_found": VariableNotFound,
    "payload_too_large": PayloadTooLarge,
    "upstream_failed": UpstreamFailed,
    "rate_limit_exceeded": RateLimited,
    "engine_error": EngineError,
    "service_unavailable": EngineError,
    "deadline_exceeded": DeadlineExceeded,
    "timeout": DeadlineExceeded,
}

_BY_STATUS: dict[int, type[ParrotError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFound,
    409: VariableConflict,
    413: PayloadTooLarge,
    424: UpstreamFailed,
    429: RateLimited,
    502: EngineError,
    503: EngineError,
    504: DeadlineExceeded,
}

_FAILED_BY_CODE: dict[str, type[VariableFailed]] = {
    "upstream_failed": _UpstreamVariableFailed,
    "deadline_exceeded": _DeadlineVariableFailed,
    "timeout": _DeadlineVariableFailed,
    "engine_error": _EngineVariableFailed,
    "service_unavailable": _EngineVariableFailed,
    "dependency_cycle": _CycleVariableFailed,
}


def from_status(status: int, body: Any) -> ParrotError:
    """Translate an HTTP error answer (status and parsed JSON body) into a :class:`ParrotError`.

    ``body`` may be the whole ``{"error": {...}}`` document or its inner object.
    """
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = str(err.get("message") or body or f"HTTP {status}")
    cls = _BY_CODE.get(code or "")
    if cls is None or (cls is VariableConflict and status != 409):
        cls = _BY_STATUS.get(status, ParrotError)
    if cls is NotFound and code is None and "session" in message.lower():
        cls = SessionNotFound
    return cls(message, status=status, code=code, param=err.get("param"))


def from_openai_error(exc: Exception) -> Exception:
    """Translate an ``openai.APIStatusError``; other exceptions are returned unchanged."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return exc
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        body = {"message": getattr(exc, "message", str(exc))}
    return from_status(status, body)


def variable_failed(name: str, error: str | None) -> VariableFailed:
    """The exception for a variable whose state is ``failed`` with this ``error`` string."""
    text = error or "failed"
    code = text.split(":", 1)[0].strip() if ":" in text else ""
    cls = _FAILED_BY_CODE.get(code, VariableFailed)
    exc = cls(f"variable '{name}' failed: {text}", code=code or None)
    exc.variable = name
    exc.error = text
    return exc
