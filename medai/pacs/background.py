"""The background thread the worker and the sender share: a named daemon loop that can be woken or stopped."""

from __future__ import annotations

import threading

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """Subclasses implement :meth:`_run` (loop ``while not self._stop.is_set()``, waiting on ``self._wake``)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """Do the next round now instead of at the end of the current wait."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to end after its current step and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
