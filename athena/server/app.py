"""`create_app(config)`: the FastAPI application, its worker and its safety layers.

Layers, outermost first: the body-size limit, the Host check (DNS rebinding, loopback binds only), the Origin check
(cross-site writes, ComfyUI's CVE-2024-10481 class), the token check (non-loopback binds), then the routes: Athena's
/api/v1, and ComfyUI's API both bare and under /api. On start-up the job store is opened, jobs a dead process left
running are re-queued (or failed after a second death), old history is pruned, and the worker starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from athena.checkpoints.load import dtype_of
from athena.errors import AthenaError
from athena.graph.cache import LastRun
from athena.graph.execute import Executor
from athena.nodes import registry
from athena.nodes.runtime import Folders, Runtime
from athena.server import comfy, native
from athena.server.frontend import add_frontend
from athena.server.hub import Hub
from athena.server.security import RateLimiter, RequestRefused, SecurityConfig, protect
from athena.server.state import ServerConfig, ServerState
from athena.server.store import JobStore
from athena.server.worker import LocalWorker


def create_app(config: ServerConfig) -> Any:
    """The ASGI application for `config` (the FastAPI app wrapped in the safety layers)."""
    security = SecurityConfig(config.host, config.token, config.insecure, config.allowed_origins,
                              max_body_bytes=config.max_body_bytes)  # refuses an open non-loopback bind
    for d in (config.output_dir, config.input_dir, config.data_dir, config.temp_dir, config.user_dir):
        d.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st = build_state(config)
        st.hub.attach(asyncio.get_running_loop())
        await asyncio.to_thread(st.store.recover)
        await asyncio.to_thread(st.store.prune, config.output_dir)
        app.state.athena = st
        st.worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(st.worker.stop)
            st.store.close()

    app = FastAPI(title="Athena", version="1", lifespan=lifespan,
                  description="Athena's jobs API (/api/v1) and ComfyUI's API (bare and under /api).")
    app.include_router(native.router)
    app.include_router(comfy.router)
    app.include_router(comfy.router, prefix="/api")
    add_frontend(app, config)

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(AthenaError)
    async def athena_error(request: Request, exc: AthenaError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    return protect(app, security)


def build_state(config: ServerConfig) -> ServerState:
    folders = Folders(config.models_dir, config.output_dir, config.input_dir, config.temp_dir)
    runtime = Runtime(folders, torch.device(config.device), dtype_of(config.dtype))
    store = JobStore(config.data_dir / "jobs.sqlite3", max_queued=config.max_queued, keep_count=config.keep_count,
                     keep_seconds=config.keep_seconds)
    hub = Hub()
    reg = registry()
    executor = Executor(reg, runtime, LastRun(config.cache_budget))
    holder: dict[str, ServerState] = {}
    worker = LocalWorker(store, executor, hub, on_change=lambda: holder["st"].broadcast_status())
    st = ServerState(config, store, worker, hub, reg, runtime, RateLimiter(config.submit_rate, config.submit_burst))
    holder["st"] = st
    return st
