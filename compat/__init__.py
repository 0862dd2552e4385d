"""parrot-gateway client SDK: sessions, semantic variables and ``@semantic_function``.

    from compat import Session, semantic_function

    @semantic_function(max_tokens=64)
    def summarize(doc):
        \"\"\"Summarize in one sentence: {{doc}}\"\"\"

    with Session(base_url="http://127.0.0.1:8000/v1") as s:
        a = summarize(doc="long text ...")   # a Variable, at once
        b = summarize(doc=a)                 # refers to a on the server
        print(b.get(timeout=60))             # only now does text reach the client

LangChain helpers live in :mod:`compat.langchain` (imported on demand).
"""

from ._errors import (
    AuthenticationError,
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
    VariableTimeout,
)
from ._function import SemanticFunction, semantic_function
from ._protocol import VariableState
from ._session import AsyncSession, Session, current_session
from ._template import TemplateError, escape
from ._variable import Variable

__all__ = [
    "AsyncSession",
    "AuthenticationError",
    "BadRequest",
    "DeadlineExceeded",
    "DependencyCycle",
    "EngineError",
    "NotFound",
    "ParrotError",
    "PayloadTooLarge",
    "RateLimited",
    "SemanticFunction",
    "Session",
    "SessionNotFound",
    "TemplateError",
    "UpstreamFailed",
    "Variable",
    "VariableConflict",
    "VariableFailed",
    "VariableNotFound",
    "VariableState",
    "VariableTimeout",
    "current_session",
    "escape",
    "semantic_function",
]
