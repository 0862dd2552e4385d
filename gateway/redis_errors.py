"""Which Redis failures mean "the state store is unavailable for now", in one place.

A restart, a network partition, or a Redis Cluster failover (a master down, its
slots moving to a promoted replica: CLUSTERDOWN, TRYAGAIN, READONLY from a node
that was just demoted, no node known for a slot) all read the same to a
client: answer 503 and let it retry. ``UNAVAILABLE`` is what the session store
maps to ServiceUnavailable; ``ANY`` adds every other Redis error, for the
places that must never fail because of Redis (rate limits fail open, the
heartbeat and the notifier keep retrying).
"""

from __future__ import annotations

from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterError, TryAgainError, ReadOnlyError,
    RedisClusterException, ConnectionError,
)
ANY: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


def unavailable(exc: BaseException) -> bool:
    """One of ``UNAVAILABLE``, or redis-py tripping over a connection that a failover
    closed under it: during a cluster failover redis-py 8 raises AttributeError/TypeError
    from inside its connection code (its writer already None) instead of a
    ConnectionError (redis/redis-py#4287); that too means "retry later", not a bug here."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if isinstance(exc, (AttributeError, TypeError)):
        tb = exc.__traceback__
        last = None
        while tb is not None:
            last = tb.tb_frame.f_code.co_filename
            tb = tb.tb_next
        return last is not None and "/redis/" in last.replace("\\", "/")
    return False


def failure(exc: BaseException) -> bool:
    """Any Redis trouble (``ANY``), redis-py's crashes included (see `unavailable`)."""
    return isinstance(exc, ANY) or unavailable(exc)


__all__ = ["ANY", "UNAVAILABLE", "failure", "unavailable"]
