"""`CancelToken`: set from any thread, checked between graph nodes and at every sampler step."""

from __future__ import annotations

import threading

from athena.errors import Cancelled


class CancelToken:
    """Set from any thread; the sampling loop and the graph executor check it and stop with `Cancelled`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")
