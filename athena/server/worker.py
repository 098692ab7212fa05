"""The worker: takes jobs from the store one at a time and runs them with the workflow engine.

`Worker` is the interface the server talks to; `LocalWorker` runs in a thread of the server's process, with one
`Executor` (and so one result cache and one model cache) for its whole life, so re-queued graphs re-run only what
changed. A Ray worker (a later issue) implements the same interface.
"""

from __future__ import annotations

import gc
import io
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from athena.cancel import CancelToken
from athena.graph import events as ev
from athena.graph.execute import Executor, RunResult
from athena.server.hub import Hub, Message
from athena.server.store import Job, JobStatus, JobStore

log = logging.getLogger(__name__)


class Worker(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wake(self) -> None: ...  # a job was queued
    def interrupt(self, job_id: str | None = None) -> bool: ...  # the running job (if it is `job_id`)
    def running(self) -> str | None: ...
    def progress(self, job_id: str) -> dict[str, Any] | None: ...
    def free(self) -> None: ...  # drop cached results (and so the models only they held), between jobs


def comfy_message(event: Any) -> Message | None:
    """An engine event as ComfyUI's WebSocket message ({"type", "data"}, or a binary preview frame)."""
    now = int(time.time() * 1000)
    if isinstance(event, ev.ExecutionStart):
        return {"type": "execution_start", "data": {"prompt_id": event.prompt_id, "timestamp": now}}
    if isinstance(event, ev.ExecutionCached):
        return {"type": "execution_cached", "data": {"nodes": list(event.nodes), "prompt_id": event.prompt_id,
                                                     "timestamp": now}}
    if isinstance(event, ev.Executing):
        return {"type": "executing", "data": {"node": event.node, "display_node": event.display_node,
                                              "prompt_id": event.prompt_id}}
    if isinstance(event, ev.ProgressEvent):
        return {"type": "progress", "data": {"value": event.value, "max": event.max, "prompt_id": event.prompt_id,
                                             "node": event.node}}
    if isinstance(event, ev.Executed):
        return {"type": "executed", "data": {"node": event.node, "display_node": event.display_node,
                                             "output": event.output, "prompt_id": event.prompt_id}}
    if isinstance(event, ev.ExecutionSuccess):
        return {"type": "execution_success", "data": {"prompt_id": event.prompt_id, "timestamp": now}}
    if isinstance(event, ev.ExecutionError):
        return {"type": "execution_error", "data": {
            "prompt_id": event.prompt_id, "node_id": event.node_id, "node_type": event.node_type,
            "executed": list(event.executed), "exception_message": event.message,
            "exception_type": event.exception_type, "traceback": list(event.traceback),
            "current_inputs": event.current_inputs, "current_outputs": {}, "timestamp": now}}
    if isinstance(event, ev.ExecutionInterrupted):
        return {"type": "execution_interrupted", "data": {"prompt_id": event.prompt_id, "node_id": event.node_id,
                                                          "node_type": event.node_type,
                                                          "executed": list(event.executed), "timestamp": now}}
    return None


def preview_frame(image: Any) -> bytes:
    """ComfyUI's binary preview: event type 1 (PREVIEW_IMAGE), image type 1 (JPEG), then the JPEG bytes."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return struct.pack(">II", 1, 1) + buf.getvalue()


def output_files(outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The files a job wrote to the output folder, as 'subfolder/filename' (for deletion with the job)."""
    files = []
    for ui in outputs.values():
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and item.get("type") == "output" and "filename" in item:
                    sub = item.get("subfolder") or ""
                    files.append(f"{sub}/{item['filename']}" if sub else item["filename"])
    return files


class LocalWorker:
    """Runs queued jobs in a background thread of this process."""

    def __init__(self, store: JobStore, executor: Executor, hub: Hub, *, name: str = "local",
                 on_change: Callable[[], None] | None = None) -> None:
        self.store, self.executor, self.hub, self.name = store, executor, hub, name
        self.on_change = on_change or (lambda: None)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: tuple[str, CancelToken] | None = None
        self._progress: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"athena-worker-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Interrupt the running job (it is re-queued at the next start, not cancelled) and end the thread."""
        self._stop.set()
        self._wake.set()
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> str | None:
        with self._lock:
            return self._current[0] if self._current else None

    def interrupt(self, job_id: str | None = None) -> bool:
        with self._lock:
            if self._current is None or (job_id is not None and self._current[0] != job_id):
                return False
            self._current[1].cancel()
            return True

    def free(self) -> None:
        """Forget the result cache once the running job (if any) is done; models nobody else holds go with it."""
        self.executor.clear_cache()
        gc.collect()

    def progress(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._progress[job_id]) if job_id in self._progress else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim(self.name)
                if job is None:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self.run(job)
            except Exception:  # the store is unusable for now (locked, disk full): log, back off, carry on
                log.exception("worker %s: the job store failed; retrying in 5 s", self.name)
                self._stop.wait(5.0)

    def run(self, job: Job) -> None:
        token = CancelToken()
        with self._lock:
            self._current = (job.id, token)
            self._progress[job.id] = {"node": None, "value": 0, "max": 0, "nodes_done": 0}
        self.on_change()
        try:
            result = self.executor.run(job.prompt, prompt_id=job.id, sink=lambda e: self._event(job, e),
                                       cancel=token, extra=dict(job.extra),
                                       targets=job.extra.get("partial_execution_targets"))
            self._finish(job, result)
        except Exception as e:  # the engine itself failed: the job fails, the worker lives on
            self.store.finish(job.id, JobStatus.FAILED, error={"message": f"{type(e).__name__}: {e}",
                                                              "exception_type": type(e).__name__})
        finally:
            with self._lock:
                self._current = None
                self._progress.pop(job.id, None)
            self.on_change()
            self.hub.send({"type": "executing", "data": {"node": None, "prompt_id": job.id}},
                          client_id=job.client_id, job_id=job.id)

    def _event(self, job: Job, event: Any) -> None:
        if isinstance(event, (ev.Executing, ev.ProgressEvent)):
            with self._lock:
                p = self._progress.get(job.id)
                if p is not None:
                    p["node"] = event.node
                    if isinstance(event, ev.ProgressEvent):
                        p["value"], p["max"] = event.value, event.max
                    else:
                        p["nodes_done"] += 1
                        p["value"], p["max"] = 0, 0
        message = comfy_message(event)
        if message is not None:
            self.hub.send(message, client_id=job.client_id, job_id=job.id)
        if isinstance(event, ev.ProgressEvent) and event.preview is not None:
            self.hub.send(preview_frame(event.preview), client_id=job.client_id, job_id=job.id)

    def _finish(self, job: Job, result: RunResult) -> None:
        if result.status == "interrupted" and self._stop.is_set():
            return  # stop() interrupted it, not a user: it stays running in the store, and recover() re-queues it
        if result.status == "success":
            self.store.finish(job.id, JobStatus.SUCCEEDED, outputs=result.outputs,
                              files=output_files(result.outputs))
        elif result.status == "interrupted":
            self.store.finish(job.id, JobStatus.CANCELLED, outputs=result.outputs,
                              files=output_files(result.outputs), error={"message": "interrupted"})
        else:
            e = result.error
            error: dict[str, Any] = ({"node_id": e.node_id, "node_type": e.node_type, "message": e.message,
                                      "exception_type": e.exception_type, "traceback": list(e.traceback)}
                                     if e is not None else
                                     {"message": "; ".join(str(x) for x in result.errors) or "invalid prompt"})
            self.store.finish(job.id, JobStatus.FAILED, outputs=result.outputs, files=output_files(result.outputs),
                              error=error)
