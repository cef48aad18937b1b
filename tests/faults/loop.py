"""An asyncio event loop on a daemon thread, shared by the fault servers of one process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The fault servers' event loop (started on first use, lives as long as the process)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="fault-servers", daemon=True)
            thread.start()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run a coroutine on the fault servers' loop from test code and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result(timeout)
