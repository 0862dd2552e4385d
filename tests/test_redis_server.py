import redis

from gateway.redis_server import RedisServer


def test_embedded_redis_starts_and_stops() -> None:
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        server.restart()
        client = redis.Redis.from_url(server.url)
        assert client.ping()
    finally:
        server.cleanup()
    assert server.proc is None


def test_fixture_gives_clean_db(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
