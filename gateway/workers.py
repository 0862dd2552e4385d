"""`serve --workers N`: N gateway processes behind one listening socket.

Python runs one request at a time per process, so one gateway process is
CPU-bound long before a machine is. The supervisor (this module, in the
``serve`` process) binds the port once and starts N workers that all accept on
that socket; the kernel spreads connections between them. Each worker is a
full gateway replica: it builds its own app and scheduler, and shares state
with the others exactly as separate replicas do, through Redis (sessions,
variables, limits; with replica membership, each holds 1/N of every engine). Each
also listens on a port of its own, which it advertises to its peers: a session's
requests that the kernel hands to another worker are relayed there
(gateway/forwarding.py).

The supervisor restarts a worker that dies (with a back-off), forwards
SIGTERM/SIGINT so every worker drains, and exits 0 once they are done. Workers
ask the kernel to kill them if the supervisor dies (``PR_SET_PDEATHSIG``), so
no orphan keeps serving.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

from .settings import Settings

log = logging.getLogger("parrot.workers")

_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send ``sig`` when the parent process exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings_json: str, sock: socket.socket, index: int, parent: int) -> None:
    """One worker process: a whole gateway serving on the shared socket."""
    die_with_parent()
    if os.getppid() != parent:  # the supervisor died before we got here
        return
    import uvicorn

    from . import logs
    from .app import create_app
    from .drain import draining_server, tune_gc

    settings = Settings.model_validate_json(settings_json)
    logs.configure(settings.log_level, settings.log_format)
    # Its own listener too, on a port of its own: where peers relay this worker's sessions
    # (the shared port would hand them to any worker).
    private = bind(settings.host, 0)
    app = create_app(settings, peer_url=settings.peer_url(private.getsockname()[1]))
    tune_gc()
    config = uvicorn.Config(
        app,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        timeout_keep_alive=int(settings.keep_alive_s),
        access_log=False,
        log_config=None,  # uvicorn's own lines go through our handler (text or JSON)
    )
    logging.getLogger("parrot.workers").info("worker %d (pid %d) serving", index, os.getpid())
    draining_server(config, app.state.gateway).run(sockets=[sock, private])


class Supervisor:
    """Starts, watches and stops the workers of one ``serve``."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.n = workers
        self.sock = bind(settings.host, settings.port)
        self.port = self.sock.getsockname()[1]
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess | None] = [None] * workers
        self._restarts = [0] * workers
        self._stopping = False

    def _start(self, i: int) -> None:
        settings = self.settings.model_copy(update={"port": self.port})
        p = self._ctx.Process(
            target=_worker, args=(settings.model_dump_json(), self.sock, i, os.getpid()),
            name=f"parrot-worker-{i}", daemon=False,
        )
        p.start()
        self._procs[i] = p

    def _on_signal(self, sig: int, frame: Any) -> None:
        if not self._stopping:
            log.warning("signal %d: draining %d workers", sig, self.n)
        self._stopping = True
        for p in self._procs:
            if p is not None and p.pid and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for i in range(self.n):
            self._start(i)
        log.warning("%d gateway workers on http://%s:%d", self.n, self.settings.host, self.port)
        try:
            while not self._stopping:
                time.sleep(0.2)
                for i, p in enumerate(self._procs):
                    if p is not None and not p.is_alive() and not self._stopping:
                        delay = RESTART_BACKOFF_S[min(self._restarts[i], len(RESTART_BACKOFF_S) - 1)]
                        log.error("worker %d exited with %s; restarting in %.1fs", i, p.exitcode, delay)
                        self._restarts[i] += 1
                        time.sleep(delay)
                        if not self._stopping:
                            self._start(i)
            deadline = time.monotonic() + self.settings.drain_timeout_s + 10
            for p in self._procs:
                if p is not None:
                    p.join(max(0.1, deadline - time.monotonic()))
                    if p.is_alive():
                        p.kill()
                        p.join(5)
        finally:
            self.sock.close()
        return 0


def run_workers(settings: Settings, workers: int) -> int:
    return Supervisor(settings, workers).run()
