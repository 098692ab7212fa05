"""What the server holds while it runs: its settings, the job store, the worker, the event hub, the node library.
Built once by `create_app` and reached from routes through `request.app.state.athena` (no module globals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from athena.graph.node import Registry
from athena.graph.validate import Checked, check
from athena.nodes.runtime import Folders, Runtime
from athena.server.hub import Hub
from athena.server.security import RateLimiter
from athena.server.store import JobStatus, JobStore
from athena.server.worker import Worker


@dataclass(frozen=True)
class ServerConfig:
    models_dir: Path
    output_dir: Path
    input_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8188
    token: str | None = None
    insecure: bool = False
    allowed_origins: tuple[str, ...] = ()
    max_queued: int = 1000
    max_body_bytes: int = 50 << 20  # a workflow with an embedded image; uploads have their own limit
    max_upload_bytes: int = 50 << 20
    max_upload_pixels: int = 64 << 20  # decompression bombs: refused before decoding
    submit_rate: float = 20.0  # jobs per second per client, bursts of `submit_burst`
    submit_burst: int = 100
    keep_count: int | None = 10_000  # history retention
    keep_seconds: float | None = None
    cache_budget: int | None = None  # bytes of cached results; default half the RAM
    device: str = "cpu"
    dtype: str = "fp32"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "temp"

    @property
    def user_dir(self) -> Path:
        return self.data_dir / "user"


@dataclass
class ServerState:
    config: ServerConfig
    store: JobStore
    worker: Worker
    hub: Hub
    registry: Registry
    runtime: Runtime
    limiter: RateLimiter
    sid_counter: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folders(self) -> Folders:
        return self.runtime.folders

    def check(self, prompt: dict[str, Any], targets: list[str] | None = None) -> Checked:
        return check(prompt, self.registry, self.runtime, targets)

    def queue_remaining(self) -> int:
        counts = self.store.counts()
        return counts.get(JobStatus.QUEUED, 0) + counts.get(JobStatus.RUNNING, 0)

    def status_message(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    def broadcast_status(self) -> None:
        self.hub.send(self.status_message(), broadcast=True)

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        """Store calls from async routes, off the event loop."""
        return await asyncio.to_thread(fn, *args)
