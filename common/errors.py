"""The gateway's error tree, mapped to OpenAI-shaped JSON at exactly one edge.

    ParrotError                      (status, type, code)
    ├── BadRequest                   400 invalid_request_error
    │   └── DependencyCycle          400 dependency_cycle
    ├── Unauthorized                 401 authentication_error
    ├── PermissionDenied             403 permission_error
    ├── NotFound                     404 not_found_error
    ├── Conflict                     409 conflict
    ├── PayloadTooLarge              413 payload_too_large
    ├── RateLimited                  429 rate_limit_exceeded (Retry-After)
    ├── UpstreamFailed               424 upstream_failed (a producer variable failed)
    ├── EngineError                  502 engine_error
    ├── ServiceUnavailable           503 service_unavailable
    └── GatewayTimeout               504 timeout

`to_response()` in gateway/app.py is the only place these become HTTP.
"""

from __future__ import annotations

from typing import Any


class ParrotError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ParrotError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class DependencyCycle(BadRequest):
    code = "dependency_cycle"

    def __init__(self, cycle: list[str], **kw: Any) -> None:
        super().__init__("dependency cycle: " + " -> ".join(cycle), **kw)
        self.cycle = cycle


class Unauthorized(ParrotError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ParrotError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class NotFound(ParrotError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class Conflict(ParrotError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(ParrotError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(ParrotError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        headers = kw.pop("headers", None) or {}
        headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
        super().__init__(message, headers=headers, **kw)


class UpstreamFailed(ParrotError):
    status = 424
    type = "upstream_error"
    code = "upstream_failed"


class EngineError(ParrotError):
    status = 502
    type = "server_error"
    code = "engine_error"


class ServiceUnavailable(ParrotError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class GatewayTimeout(ParrotError):
    status = 504
    type = "server_error"
    code = "timeout"
