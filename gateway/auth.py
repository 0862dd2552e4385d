"""API keys → tenants. Keys are stored only as SHA-256 digests and never logged.

File format (JSON or YAML)::

    {"keys": {"<key>": {"tenant": "acme", "rpm": 600, "tpm": 100000,
                        "models": ["*"], "max_sessions": 100, "weight": 1.0}}}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from common.errors import PermissionDenied, Unauthorized

DEFAULT_TENANT = "default"


class KeySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    models: list[str] = Field(default_factory=lambda: ["*"])
    max_sessions: int | None = Field(None, ge=1)
    weight: float = Field(1.0, gt=0)


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: dict[str, KeySpec]


@dataclass(frozen=True)
class Principal:
    tenant: str
    spec: KeySpec | None = None

    @property
    def weight(self) -> float:
        return self.spec.weight if self.spec else 1.0

    def check_model(self, model: str | None) -> None:
        """403 unless the key may use ``model``; a restricted key must name its model
        (the gateway's default model may not be one it is allowed)."""
        if self.spec is None or "*" in self.spec.models:
            return
        if model is None:
            raise PermissionDenied(
                "this key is restricted to some models: name one in 'model'", param="model"
            )
        if model not in self.spec.models:
            raise PermissionDenied(f"this key may not use model '{model}'", param="model")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Authenticator:
    """Resolves the bearer token; open (single tenant) when no keys are configured."""

    keys: dict[bytes, KeySpec] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_file(cls, path: str | None) -> Authenticator:
        if not path:
            return cls()
        text = Path(path).read_text()
        raw: Any = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        parsed = KeysFile.model_validate(raw)
        return cls({_digest(k): spec for k, spec in parsed.keys.items()})

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.keys:
            return Principal(DEFAULT_TENANT)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        presented = _digest(authorization[7:].strip())
        found: KeySpec | None = None
        for digest, spec in self.keys.items():  # compare against all: constant time per key
            if hmac.compare_digest(digest, presented):
                found = spec
        if found is None:
            raise Unauthorized("invalid API key")
        return Principal(found.tenant, found)
