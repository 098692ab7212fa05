"""Event fan-out to WebSocket (and SSE) subscribers: per-client messages go to the client that queued the job,
`status` goes to everyone, and monitors see every job (an Athena addition). Thread-safe: the worker thread publishes,
the event loop delivers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any] | bytes  # a JSON message {"type", "data"} or a binary frame


@dataclass(eq=False)
class Subscriber:
    client_id: str | None
    monitor: bool = False  # receives every job's messages
    job_id: str | None = None  # only this job's messages (the native events stream)
    queue: asyncio.Queue[Message] = field(default_factory=lambda: asyncio.Queue(maxsize=1000))


class Hub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, client_id: str | None, *, monitor: bool = False, job_id: str | None = None) -> Subscriber:
        sub = Subscriber(client_id, monitor, job_id)
        with self._lock:
            self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self.subscribers.discard(sub)

    def send(self, message: Message, *, client_id: str | None = None, job_id: str | None = None,
             broadcast: bool = False) -> None:
        """Deliver from any thread: to everyone (`broadcast`), else to `client_id`'s sockets, monitors and the
        subscribers of `job_id`."""
        if self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self._deliver, message, client_id, job_id, broadcast)

    def _deliver(self, message: Message, client_id: str | None, job_id: str | None, broadcast: bool) -> None:
        with self._lock:
            targets = [s for s in self.subscribers
                       if (s.job_id is None and (broadcast or s.monitor or (client_id is not None
                                                                             and s.client_id == client_id)))
                       or (s.job_id is not None and s.job_id == job_id)]
        for sub in targets:
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:  # a stalled client loses messages, never the server's memory
                pass
