"""Signed, short-lived links to one session's page: the API key never goes in a URL.

A token is ``<payload>.<mac>``, both base64url without padding: the payload is
``{"t": tenant, "s": session, "e": expiry}`` (compact JSON), the MAC is
HMAC-SHA256 over the payload bytes with the deployment's secret. It grants
read access to one session of one tenant until its expiry, nothing else.

The secret comes from the settings (``ui_secret``) or, when unset, is generated
once per deployment and shared through Redis (``SET NX``), so every replica
signs and checks with the same one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.errors import NotFound, ServiceUnavailable, Unauthorized

SECRET_KEY = "parrot:ui:link-secret"


class InvalidToken(Unauthorized):
    code = "invalid_view_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def sign(secret: bytes, tenant: str, session: str, expires_at: int) -> str:
    payload = orjson.dumps({"t": tenant, "s": session, "e": int(expires_at)})
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: bytes, token: str, session: str, now: float) -> str:
    """The tenant the token speaks for. InvalidToken (401) if it is forged, malformed
    or expired; NotFound (404) if it is genuine but names another session."""
    try:
        raw_payload, raw_mac = token.split(".")
        payload, mac = _unb64(raw_payload), _unb64(raw_mac)
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken("malformed view token") from exc
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise InvalidToken("invalid view token")
    try:
        claims = orjson.loads(payload)
        tenant, sid, expires_at = str(claims["t"]), str(claims["s"]), float(claims["e"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidToken("malformed view token") from exc
    if now >= expires_at:
        raise InvalidToken("the view link has expired: ask for a new one")
    if sid != session:
        raise NotFound(f"session '{session}' not found", code="session_not_found")
    return tenant


class LinkSecret:
    """The deployment's signing key: configured, or shared through Redis."""

    def __init__(self, redis: aioredis.Redis, configured: str | None = None) -> None:
        self._redis = redis
        self._secret: bytes | None = configured.encode() if configured else None

    async def get(self) -> bytes:
        if self._secret is not None:
            return self._secret
        try:
            await self._redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
            value = await self._redis.get(SECRET_KEY)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("state store unavailable") from exc
        if value is None:  # deleted between the two calls: try again next time
            raise ServiceUnavailable("view-link secret not available yet")
        self._secret = value if isinstance(value, bytes) else str(value).encode()
        return self._secret
