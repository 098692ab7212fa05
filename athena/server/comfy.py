"""ComfyUI's HTTP API, with its JSON shapes: /prompt, /queue, /history, /jobs, /view, /upload, /object_info,
/system_stats, /interrupt, /free, /embeddings, /models, /experiment/models, /features, and the WebSocket /ws.
`create_app` mounts this router both bare and under /api, as ComfyUI does."""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response

from athena.errors import AthenaError
from athena.graph.validate import comfy_node_errors
from athena.media.files import atomic
from athena.server.security import RequestRefused, confined_path, safe_upload_name, verify_image
from athena.server.state import ServerState
from athena.server.store import FINISHED, Job, JobStatus, QueueFull

router = APIRouter()
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "controlnet", "upscale_models", "diffusion_models",
                 "text_encoders", "clip", "unet", "clip_vision", "diffusers")
SQLITE_MAX_INT = 2**63 - 1


def state(request: Request | WebSocket) -> ServerState:
    st: ServerState = request.app.state.athena
    return st


def client_key(request: Request, client_id: str | None) -> str:
    return client_id or (request.client.host if request.client else "unknown")


# ---------------------------------------------------------------- queueing


@dataclass
class Submitted:
    job: Job | None = None
    created: bool = False  # False: an earlier job with the same idempotency key
    refusal: JSONResponse | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)  # errors of outputs that were dropped


async def submit(st: ServerState, request: Request, prompt: Any, *, client_id: str | None, extra: dict[str, Any],
                 targets: list[str] | None = None, priority: int = 0, front: bool = False,
                 idempotency_key: str | None = None, job_id: str | None = None) -> Submitted:
    """Validate and queue `prompt`, or say why not (a response with ComfyUI's error shape)."""
    wait = st.limiter.check(client_key(request, client_id))
    if wait is not None:
        return Submitted(refusal=JSONResponse({"error": {"type": "rate_limited", "message": f"too many jobs from this client; "
                                                                                 f"retry in {wait:.1f} s"}},
                                  status_code=429, headers={"Retry-After": str(max(1, round(wait)))}))
    if not isinstance(prompt, dict):
        return Submitted(refusal=JSONResponse({"error": {"type": "invalid_prompt", "message": "prompt must be an object of nodes "
                                                                                  "in ComfyUI's API format",
                                             "details": "", "extra_info": {}}, "node_errors": {}}, 400))
    checked = await asyncio.to_thread(st.check, prompt, targets)
    errors = comfy_node_errors(checked, prompt)
    if not checked.outputs:
        whole = [e for e in checked.errors if e.node_id is None]
        kind, message = ((whole[0].code, whole[0].message) if whole else
                         ("prompt_outputs_failed_validation", "Prompt outputs failed validation"))
        return Submitted(refusal=JSONResponse({"error": {"type": kind, "message": message, "details": "", "extra_info": {}},
                                   "node_errors": errors}, 400))
    extra = {**extra, "outputs_to_execute": checked.outputs}
    if targets:
        extra["partial_execution_targets"] = targets
    try:
        job, created = await asyncio.to_thread(lambda: st.store.submit(
            prompt, extra=extra, client_id=client_id, priority=priority, front=front, idempotency_key=idempotency_key,
            job_id=job_id))
    except QueueFull as e:
        return Submitted(refusal=JSONResponse({"error": {"type": "queue_full", "message": str(e)}}, status_code=429,
                                  headers={"Retry-After": str(max(1, round(e.retry_after)))}))
    st.worker.wake()
    st.broadcast_status()
    return Submitted(job, created, None, errors)


@router.post("/prompt")
async def post_prompt(request: Request) -> Response:
    st = state(request)
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return JSONResponse({"error": {"type": "invalid_json", "message": "the body is not JSON"}, "node_errors": {}},
                            400)
    if not isinstance(body, dict) or "prompt" not in body:
        return JSONResponse({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "",
                                       "extra_info": {}}, "node_errors": {}}, 400)
    extra: dict[str, Any] = body["extra_data"] if isinstance(body.get("extra_data"), dict) else {}
    done = await submit(st, request, body["prompt"], client_id=body.get("client_id"), extra=extra,
                        targets=body.get("partial_execution_targets"), front=bool(body.get("front")),
                        job_id=body.get("prompt_id"))
    if done.refusal is not None:
        return done.refusal
    assert done.job is not None
    return JSONResponse({"prompt_id": done.job.id, "number": done.job.number, "node_errors": done.node_errors})


@router.get("/prompt")
async def get_prompt(request: Request) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": await asyncio.to_thread(state(request).queue_remaining)}}


def queue_item(job: Job) -> list[Any]:
    extra = {k: v for k, v in job.extra.items() if k not in ("outputs_to_execute", "partial_execution_targets")}
    return [job.number, job.id, job.prompt, extra, job.extra.get("outputs_to_execute", [])]


@router.get("/queue")
async def get_queue(request: Request) -> dict[str, Any]:
    st = state(request)
    running = await asyncio.to_thread(lambda: st.store.list(status=[JobStatus.RUNNING], limit=None))
    pending = await asyncio.to_thread(st.store.queued)
    return {"queue_running": [queue_item(j) for j in running], "queue_pending": [queue_item(j) for j in pending]}


@router.post("/queue")
async def post_queue(request: Request) -> Response:
    st = state(request)
    body = await json_body(request)
    if body.get("clear"):
        await asyncio.to_thread(lambda: st.store.clear([JobStatus.QUEUED]))
    for job_id in body.get("delete", []) if isinstance(body.get("delete"), list) else []:
        await asyncio.to_thread(st.store.cancel, str(job_id))
    st.broadcast_status()
    return Response(status_code=200)


def history_item(job: Job) -> dict[str, Any]:
    ok = job.status == JobStatus.SUCCEEDED
    messages: list[Any] = [["execution_start", {"prompt_id": job.id, "timestamp": int((job.started or 0) * 1000)}]]
    end = int((job.finished or 0) * 1000)
    if ok:
        messages.append(["execution_success", {"prompt_id": job.id, "timestamp": end}])
    elif job.status == JobStatus.CANCELLED:
        messages.append(["execution_interrupted", {"prompt_id": job.id, "timestamp": end,
                                                   "node_id": (job.error or {}).get("node_id")}])
    else:
        err = job.error or {}
        messages.append(["execution_error", {"prompt_id": job.id, "timestamp": end, "node_id": err.get("node_id"),
                                             "node_type": err.get("node_type"),
                                             "exception_message": err.get("message", ""),
                                             "exception_type": err.get("exception_type", ""),
                                             "traceback": err.get("traceback", [])}])
    return {"prompt": queue_item(job), "outputs": job.outputs,
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": messages},
            "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                     for node in job.outputs}}


@router.get("/history")
async def get_history(request: Request, max_items: int | None = None, offset: int = 0) -> dict[str, Any]:
    st = state(request)
    # Clamped to SQLite's 64-bit integers: a huge value is "everything", not a 500 (a negative limit is no limit).
    limit = None if max_items is None else min(max_items, SQLITE_MAX_INT)
    start = min(max(offset, 0), SQLITE_MAX_INT)
    jobs = await asyncio.to_thread(lambda: st.store.list(status=FINISHED, limit=limit, offset=start))
    return {j.id: history_item(j) for j in reversed(jobs)}


@router.get("/history/{prompt_id}")
async def get_history_item(request: Request, prompt_id: str) -> dict[str, Any]:
    """ComfyUI's shape: {} while the job is not finished (or unknown; the native API tells them apart)."""
    job = await asyncio.to_thread(state(request).store.get, prompt_id)
    return {job.id: history_item(job)} if job is not None and job.status in FINISHED else {}


@router.post("/history")
async def post_history(request: Request) -> Response:
    st = state(request)
    body = await json_body(request)
    out = st.folders.output
    if body.get("clear"):
        await asyncio.to_thread(lambda: st.store.clear(FINISHED, out))
    for job_id in body.get("delete", []) if isinstance(body.get("delete"), list) else []:
        await asyncio.to_thread(st.store.delete, str(job_id), out)
    return Response(status_code=200)


# ComfyUI's jobs API (GET /api/jobs, /api/jobs/{id}): the frontend's queue and history panels read it.
JOB_STATUS = {JobStatus.QUEUED: "pending", JobStatus.RUNNING: "in_progress", JobStatus.SUCCEEDED: "completed",
              JobStatus.FAILED: "failed", JobStatus.CANCELLED: "cancelled"}
STATUS_OF_JOB = {v: k for k, v in JOB_STATUS.items()}
PREVIEWABLE = ("images", "video", "audio", "3d", "text")


def ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def job_item(job: Job, *, detail: bool = False) -> dict[str, Any]:
    """One job in the jobs API's shape: times in ms, output counts, the first saved image as the preview."""
    items = [(node, kind, item) for node, out in job.outputs.items() if isinstance(out, dict)
             for kind, listed in out.items() if kind != "animated" and isinstance(listed, list)
             for item in listed if isinstance(item, dict)]
    previews = [{**item, "nodeId": node, "mediaType": kind} for node, kind, item in items if kind in PREVIEWABLE]
    workflow = job.extra.get("extra_pnginfo", {}).get("workflow", {})
    entry: dict[str, Any] = {
        "id": job.id, "status": JOB_STATUS[job.status], "priority": job.number, "create_time": ms(job.created),
        "execution_start_time": ms(job.started), "execution_end_time": ms(job.finished),
        "outputs_count": len(items), "previewable_outputs_count": len(previews),
        "preview_output": next((p for p in previews if p.get("type") == "output"), previews[0] if previews else None),
        "workflow_id": workflow.get("id") if isinstance(workflow, dict) else None}
    if job.status == JobStatus.FAILED:
        err = job.error or {}
        entry["execution_error"] = {"prompt_id": job.id, "node_id": str(err.get("node_id") or ""),
                                    "node_type": str(err.get("node_type") or ""),
                                    "exception_message": str(err.get("message", "")),
                                    "exception_type": str(err.get("exception_type", "")),
                                    "traceback": list(err.get("traceback", []))}
    if detail:
        extra = {k: v for k, v in job.extra.items() if k not in ("outputs_to_execute", "partial_execution_targets")}
        entry["workflow"] = {"prompt": job.prompt, "extra_data": extra}
        entry["outputs"] = job.outputs
        if job.status in FINISHED:
            entry["execution_status"] = history_item(job)["status"]
    return entry


@router.get("/jobs")
async def list_jobs(request: Request, status: str = "", limit: int | None = Query(None, ge=0, le=2**31),
                    offset: int = Query(0, ge=0, le=2**62)) -> Response:
    names = [s for s in status.split(",") if s] or list(STATUS_OF_JOB)
    unknown = [s for s in names if s not in STATUS_OF_JOB]
    if unknown:
        return JSONResponse({"error": f"unknown status {unknown[0]!r}; one of {', '.join(STATUS_OF_JOB)}"}, 400)
    statuses = [STATUS_OF_JOB[s] for s in names]
    offset = min(max(offset, 0), SQLITE_MAX_INT)
    limit = None if limit is None or limit <= 0 else min(limit, SQLITE_MAX_INT)
    st = state(request)
    jobs = await asyncio.to_thread(lambda: st.store.list(status=statuses, limit=limit, offset=offset))
    counts = await asyncio.to_thread(st.store.counts)
    total = sum(counts.get(s, 0) for s in statuses)
    return JSONResponse({"jobs": [job_item(j) for j in jobs],
                         "pagination": {"offset": offset, "limit": limit if limit is not None else total,
                                        "total": total, "has_more": offset + len(jobs) < total}})


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Response:
    job = await asyncio.to_thread(state(request).store.get, job_id)
    if job is None:
        return JSONResponse({"error": f"no job {job_id!r}"}, status_code=404)
    return JSONResponse(job_item(job, detail=True))


@router.post("/interrupt")
async def post_interrupt(request: Request) -> Response:
    body = await json_body(request)
    prompt_id = body.get("prompt_id")
    state(request).worker.interrupt(str(prompt_id) if prompt_id else None)
    return Response(status_code=200)


@router.post("/free")
async def post_free(request: Request) -> Response:
    """ComfyUI's {unload_models, free_memory}: either drops the cached results, and with them every model that
    only the cache held (models are shared through weak references)."""
    body = await json_body(request)
    if body.get("unload_models") or body.get("free_memory"):
        await asyncio.to_thread(state(request).worker.free)
    return Response(status_code=200)


# ---------------------------------------------------------------- files


def folder_of(st: ServerState, kind: str) -> Path:
    roots = {"output": st.folders.output, "input": st.folders.input, "temp": st.folders.temp}
    if kind not in roots:
        raise RequestRefused(f"type {kind!r} is not output, input or temp", 400)
    return roots[kind]


@router.get("/view")
async def view(request: Request, filename: str, subfolder: str = "", type: str = "output",
               preview: str | None = None, channel: str | None = None) -> Response:
    st = state(request)
    try:
        path = confined_path(folder_of(st, type), subfolder, filename)
    except RequestRefused as e:
        return JSONResponse({"error": str(e)}, status_code=e.status)
    if not path.is_file():
        return JSONResponse({"error": f"{filename!r} not found"}, status_code=404)
    if preview or (channel and channel != "rgba"):
        return await asyncio.to_thread(converted, path, preview, channel)
    return FileResponse(path)


def converted(path: Path, preview: str | None, channel: str | None) -> Response:
    """`/view?preview=webp;90` (a smaller preview) and `channel=rgb|a` as ComfyUI serves them."""
    import io

    from PIL import Image

    img: Image.Image = Image.open(path)
    if channel == "rgb":
        img = img.convert("RGB")
    elif channel == "a":
        img = img.convert("RGBA").getchannel("A").convert("RGBA")
    fmt, quality = "png", 90
    if preview:
        head, _, q = preview.partition(";")
        fmt = head if head in ("webp", "jpeg") else "png"
        quality = int(q) if q.isdigit() else 90
    buf = io.BytesIO()
    (img.convert("RGB") if fmt == "jpeg" else img).save(buf, format=fmt.upper(), quality=quality)
    return Response(buf.getvalue(), media_type=f"image/{fmt}")


async def save_upload(request: Request) -> tuple[dict[str, Any], Path, Any] | JSONResponse:
    st = state(request)
    form = await request.form()
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        return JSONResponse({"error": "send the image as the multipart field 'image'"}, status_code=400)
    data = await upload.read()
    kind = str(form.get("type") or "input")
    subfolder = str(form.get("subfolder") or "")
    try:
        verify_image(data, max_bytes=st.config.max_upload_bytes, max_pixels=st.config.max_upload_pixels)
        name = safe_upload_name(str(getattr(upload, "filename", "") or "image.png"))
        root = folder_of(st, kind)
        target = confined_path(root, subfolder, name)
    except RequestRefused as e:
        return JSONResponse({"error": str(e)}, status_code=e.status)
    overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
    if target.exists() and not overwrite:
        stem, suffix, i = target.stem, target.suffix, 1
        while target.exists():
            target = target.with_name(f"{stem} ({i}){suffix}")
            i += 1
    return {"name": target.name, "subfolder": subfolder, "type": kind}, target, (data, form)


@router.post("/upload/image")
async def upload_image(request: Request) -> Response:
    saved = await save_upload(request)
    if isinstance(saved, JSONResponse):
        return saved
    info, target, (data, _form) = saved
    await asyncio.to_thread(atomic_write, target, data)
    return JSONResponse(info)


@router.post("/upload/mask")
async def upload_mask(request: Request) -> Response:
    """The mask editor's upload: the mask's alpha is applied to the original image (`original_ref`)."""
    saved = await save_upload(request)
    if isinstance(saved, JSONResponse):
        return saved
    info, target, (data, form) = saved
    st = state(request)
    malformed = JSONResponse({"error": "original_ref must name an existing image {filename, subfolder, type}"},
                             status_code=400)
    try:
        ref = json.loads(str(form.get("original_ref") or "{}"))
        if not isinstance(ref, dict) or not all(isinstance(ref.get(k, ""), str) for k in ("filename", "subfolder")):
            return malformed
        original = confined_path(folder_of(st, str(ref.get("type", "input"))), ref.get("subfolder", ""),
                                 ref["filename"])
    except RequestRefused as e:  # a path leaving its folder is a 403, not a malformed request
        return JSONResponse({"error": f"original_ref: {e}"}, status_code=e.status)
    except (KeyError, ValueError):
        return malformed
    if not original.is_file():
        return malformed
    try:
        await asyncio.to_thread(apply_mask, original, data, target)
    except (OSError, ValueError) as e:  # the original is not an image Pillow can read
        return JSONResponse({"error": f"original_ref {ref['filename']!r} is not a readable image: {e}"},
                            status_code=400)
    return JSONResponse(info)


def apply_mask(original: Path, mask_png: bytes, target: Path) -> None:
    import io

    from PIL import Image

    base = Image.open(original).convert("RGBA")
    alpha = Image.open(io.BytesIO(mask_png)).convert("RGBA").getchannel("A").resize(base.size)
    base.putalpha(alpha)
    buf = io.BytesIO()
    base.save(buf, format="PNG")
    atomic_write(target, buf.getvalue())


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------- information


@router.get("/object_info")
async def object_info(request: Request) -> dict[str, Any]:
    st = state(request)
    return await asyncio.to_thread(st.registry.object_info, st.runtime)


@router.get("/object_info/{node_class}")
async def object_info_one(request: Request, node_class: str) -> dict[str, Any]:
    st = state(request)
    if node_class not in st.registry:
        return {}
    return {node_class: st.registry[node_class].schema.info(st.runtime)}


@router.get("/system_stats")
async def system_stats(request: Request) -> dict[str, Any]:
    import os
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("athena")
    except PackageNotFoundError:
        __version__ = "dev"

    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    free = os.sysconf("SC_AVPHYS_PAGES") * size
    devices = [{"name": "cpu", "type": "cpu", "index": None, "vram_total": pages * size, "vram_free": free,
                "torch_vram_total": 0, "torch_vram_free": 0}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free_b, total_b = torch.cuda.mem_get_info(i)
            devices.append({"name": torch.cuda.get_device_name(i), "type": "cuda", "index": i, "vram_total": total_b,
                            "vram_free": free_b, "torch_vram_total": total_b, "torch_vram_free": free_b})
    return {"system": {"os": platform.system().lower(), "python_version": sys.version, "embedded_python": False,
                       "comfyui_version": f"athena-{__version__}", "pytorch_version": torch.__version__,
                       "argv": ["athena", "serve"], "ram_total": pages * size, "ram_free": free},
            "devices": devices}


@router.get("/embeddings")
async def embeddings(request: Request) -> list[str]:
    return [Path(n).stem for n in state(request).folders.model_names("embeddings")]


@router.get("/models")
async def model_folders(request: Request) -> list[str]:
    return list(MODEL_FOLDERS)


@router.get("/models/{folder}")
async def model_files(request: Request, folder: str) -> Response:
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    return JSONResponse(state(request).folders.model_names(folder))


@router.get("/experiment/models")
async def experiment_model_folders(request: Request) -> list[dict[str, Any]]:
    """The model browser's folder list: each folder type with the directories it is read from."""
    root = state(request).folders.models
    return [{"name": f, "folders": [str(root / f)]} for f in MODEL_FOLDERS]


@router.get("/experiment/models/{folder}")
async def experiment_model_files(request: Request, folder: str) -> Response:
    """The model browser's files in one folder: name (relative, '/'-separated), pathIndex, times and size."""
    if folder not in MODEL_FOLDERS:
        return JSONResponse({"error": f"unknown model folder {folder!r}"}, status_code=404)
    folders = state(request).folders
    root = folders.models / folder

    def files() -> list[dict[str, Any]]:
        out = []
        for name in folders.model_names(folder):
            path = root / name
            if path.is_file():
                info = path.stat()
                out.append({"name": name, "pathIndex": 0, "modified": info.st_mtime, "created": info.st_ctime,
                            "size": info.st_size})
        return out

    return JSONResponse(await asyncio.to_thread(files))


@router.get("/features")
async def features(request: Request) -> dict[str, Any]:
    return {"supports_preview_metadata": False, "max_upload_size": state(request).config.max_upload_bytes}


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


# ---------------------------------------------------------------- WebSocket


@router.websocket("/ws")
async def ws(websocket: WebSocket, clientId: str | None = None) -> None:  # noqa: N803 (ComfyUI's parameter name)
    st = state(websocket)
    await websocket.accept()
    st.sid_counter += 1
    sid = clientId or f"athena-{st.sid_counter}-{int(time.time())}"
    monitor = websocket.query_params.get("monitor") in ("1", "true")
    sub = st.hub.subscribe(sid, monitor=monitor)
    try:
        await websocket.send_json(st.status_message(sid))
        running = st.worker.running()
        if running is not None:  # a reconnecting client learns what runs now
            await websocket.send_json({"type": "executing", "data": {"node": None, "prompt_id": running}})
        receiver = asyncio.ensure_future(drain(websocket))
        while not receiver.done():
            getter = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            message = getter.result()
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_json(message)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        st.hub.unsubscribe(sub)


async def drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects; a feature_flags hello gets the server's."""
    try:
        while True:
            text = await websocket.receive_text()
            try:
                msg = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict) and msg.get("type") == "feature_flags":
                await websocket.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": False}})
    except (WebSocketDisconnect, RuntimeError):
        return


def refusal_response(e: AthenaError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=getattr(e, "status", 400))
