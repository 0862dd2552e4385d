"""`parrot-gateway` command line: serve, sim, bench."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from typing import Any

from . import logs
from .drain import draining_server, tune_gc
from .settings import Settings


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded Redis and simulated engines by default)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--backend", action="append", help="engine base URL (repeatable)")
    p.add_argument("--backend-kind", choices=["sglang", "openai"])
    p.add_argument("--redis", help="Redis URL (default: start an embedded redis-server)")
    p.add_argument("--sim-engines", type=int, help="simulated engines when no --backend (default 2)")
    p.add_argument("--sim-time-scale", type=float, help="time scale of simulated engines")
    p.add_argument("--sim-profile", help="cost profile of simulated engines")
    p.add_argument("--api-keys", help="API keys file (JSON or YAML)")
    p.add_argument("--config", help="settings file (YAML, TOML or JSON)")
    p.add_argument("--log-level", help="log level (default info)")
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    p.add_argument("--workers", type=int, help="gateway processes on one port (default 1)")


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:

    import uvicorn

    from .app import create_app
    from .embedded import start_embedded

    flags = {k: v for k, v in vars(args).items() if k not in ("command",)}
    settings = Settings.load(flags)
    logs.configure(settings.log_level, settings.log_format)
    log = logging.getLogger("parrot.cli")
    if not settings.api_keys:
        if _is_loopback(settings.host):
            log.warning("no API keys configured: open access, bound to loopback %s only", settings.host)
        else:
            log.warning("no API keys configured and bound to %s: ANYONE who can reach it may use it",
                        settings.host)
    settings, embedded = start_embedded(settings)
    try:
        if settings.workers > 1:
            from .workers import run_workers

            return run_workers(settings, settings.workers)
        from .workers import bind

        sock = bind(settings.host, settings.port)  # bound first: port 0 gets its number here
        settings = settings.model_copy(update={"port": sock.getsockname()[1]})
        app = create_app(settings)
        tune_gc()
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
            timeout_keep_alive=int(settings.keep_alive_s),
            access_log=False,
            log_config=None,  # uvicorn's own lines go through our handler (text or JSON)
        )
        try:
            draining_server(config, app.state.gateway).run(sockets=[sock])
        finally:
            sock.close()
    finally:
        embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="parrot-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("sim", help="run one simulated SGLang engine", add_help=False)
    sub.add_parser("bench", help="run benchmarks", add_help=False)
    if argv and argv[0] == "sim":
        from backends.sim.cli import main as sim_main

        from .embedded import watch_parent

        watch_parent()  # started by `serve`: do not outlive it
        return sim_main(argv[1:])
    if argv and argv[0] == "bench":
        from benchmarks.cli import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
