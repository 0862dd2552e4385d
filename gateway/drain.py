"""Serving one gateway process (serve and its workers): uvicorn with SIGTERM/SIGINT meaning
'drain, then exit 0', and the garbage collector tuned for a long-lived event loop."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import uvicorn


def draining_server(config: Any, gateway: Any = None) -> Any:
    """uvicorn, with SIGTERM/SIGINT meaning 'drain, then exit 0'.

    First signal: readiness turns false (``/ready`` answers 503, so a load
    balancer stops sending, and peers stop relaying sessions' requests here) while
    the listener stays open and in-flight HTTP requests and background semantic
    requests run on; once they are done, or ``drain_timeout_s`` has passed,
    uvicorn's graceful shutdown closes the listener and the lifespan drains what
    is left. A second signal skips the
    wait. uvicorn re-raises a captured signal after its graceful shutdown, which
    would make the process die of SIGTERM; the SPEC wants a clean exit instead.
    """
    drain_log = logging.getLogger("parrot.cli")

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if gateway is None or self.drain_started is not None:
                super().handle_exit(sig, frame)
                return
            self.drain_started = time.monotonic()
            gateway.draining = True
            drain_log.warning("signal %d: draining (readiness false, up to %.0fs)", sig,
                              gateway.settings.drain_timeout_s)

        def _busy(self) -> int:
            return len(self.server_state.tasks) + len(getattr(gateway.sessions, "_tasks", ()))

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None and gateway.membership.url is not None:
                await gateway.membership.withdraw()  # peers stop relaying sessions here
            if self.drain_started is not None and not self.should_exit:
                left = gateway.settings.drain_timeout_s - (time.monotonic() - self.drain_started)
                if self._busy() == 0 or left <= 0:
                    self.config.timeout_graceful_shutdown = max(1, int(left + 0.999))
                    self.should_exit = True
            return bool(await super().on_tick(counter))

        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[no-untyped-def]
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    return DrainingServer(config)


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, the tokenizer's tables) out of the
    collector's reach, and collect the young generation less often: measured on the
    semantic path at 100 concurrent sessions, the collector's pauses (up to ~0.2 s for a
    full collection) were the event loop's longest stalls."""
    import gc

    from .completion import prompt_shape

    prompt_shape("chat", {"messages": [{"role": "user", "content": "warm up"}]}, 32)  # load it
    gc.collect()
    gc.freeze()
    gc.set_threshold(5000, 20, 20)
