"""Athena's own API under /api/v1: jobs first. A job is a workflow in any format (ComfyUI API or UI, Athena's) or a
`GenerateRequest` for users who don't want graphs. Unknown ids are 404s, never an empty object."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from athena.errors import AthenaError
from athena.graph.workflow import load as load_workflow
from athena.pipelines.generate import GenerateRequest
from athena.server.comfy import MODEL_FOLDERS, state, submit
from athena.server.security import RequestRefused, confined_path
from athena.server.state import ServerState
from athena.server.store import FINISHED, Job, JobStatus

router = APIRouter(prefix="/api/v1", tags=["jobs"])


class JobIn(BaseModel):
    """Either `workflow` (ComfyUI API or UI format, or Athena's) or `request` (+ `model`)."""

    workflow: dict[str, Any] | None = Field(None, description="a workflow in any supported format")
    request: dict[str, Any] | None = Field(None, description="a GenerateRequest: prompt, negative, width, height, "
                                                             "steps, sampler, scheduler, cfg, seed, batch, ...")
    model: str = Field("athena-tiny.safetensors", description="checkpoint name for `request` jobs")
    priority: int = Field(0, ge=-100, le=100, description="higher runs first")
    client_id: str | None = Field(None, max_length=200)
    idempotency_key: str | None = Field(None, max_length=200)


class JobOut(BaseModel):
    id: str
    number: int
    state: str
    position: int | None
    progress: dict[str, Any] | None
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    created: float
    started: float | None
    finished: float | None


def view(st: ServerState, job: Job) -> JobOut:
    return JobOut(id=job.id, number=job.number, state=job.status.value, position=st.store.position(job.id),
                  progress=st.worker.progress(job.id) if job.status == JobStatus.RUNNING else None,
                  outputs=job.outputs, error=job.error, created=job.created, started=job.started,
                  finished=job.finished)


def request_graph(req: GenerateRequest, model: str) -> dict[str, Any]:
    """A GenerateRequest as the equivalent API-format graph (txt2img, img2img from an input image, the latent hires
    fix), so both kinds of job run on the same engine."""
    if req.mask is not None or req.outpaint is not None:
        raise AthenaError("mask and outpaint requests are not offered over the jobs API yet; send a workflow "
                          "(LoadImage + VAEEncodeForInpaint) instead")
    width, height = req.width or 512, req.height or 512
    g: dict[str, Any] = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": model}},
        "clip": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["ckpt", 1],
                                                              "stop_at_clip_layer": req.clip_skip or -1}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": req.prompt, "clip": ["clip", 0]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": req.negative, "clip": ["clip", 0]}},
        "model": {"class_type": "RescaleCFG", "inputs": {"model": ["ckpt", 0], "multiplier": req.cfg_rescale}},
    }
    if req.init_image is not None:
        g["load"] = {"class_type": "LoadImage", "inputs": {"image": req.init_image}}
        g["latent"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["load", 0], "vae": ["ckpt", 2]}}
        if req.batch > 1:
            g["batch"] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["latent", 0],
                                                                         "amount": req.batch}}
    else:
        g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                                    "batch_size": req.batch}}
    source = ["batch", 0] if "batch" in g else ["latent", 0]
    sampler = {"seed": req.seed, "steps": req.steps, "cfg": req.cfg, "sampler_name": req.sampler,
               "scheduler": req.scheduler, "model": ["model", 0], "positive": ["pos", 0], "negative": ["neg", 0]}
    g["sample"] = {"class_type": "KSampler", "inputs": {**sampler, "latent_image": source,
                                                        "denoise": req.strength}}
    last = ["sample", 0]
    if req.hires is not None:
        if req.hires.upscale != "latent":
            raise AthenaError("the jobs API offers the latent hires fix; send a workflow for a pixel upscale")
        g["up"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": last, "upscale_method": "nearest-exact",
                                                               "scale_by": req.hires.scale}}
        g["hires"] = {"class_type": "KSampler", "inputs": {**sampler, "latent_image": ["up", 0],
                                                           "steps": req.hires.steps or req.steps,
                                                           "denoise": req.hires.strength}}
        last = ["hires", 0]
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": last, "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "athena"}}
    return g


@router.post("/jobs", status_code=201, response_model=JobOut, responses={
    200: {"description": "the job this idempotency key already made"}, 400: {"description": "invalid job"},
    429: {"description": "queue full or too many jobs from this client (see Retry-After)"}})
async def create_job(body: JobIn, request: Request,
                     idempotency_key: str | None = Header(None, max_length=200)) -> Response:
    st = state(request)
    try:
        if (body.workflow is None) == (body.request is None):
            raise AthenaError("send exactly one of `workflow` (a workflow in any format) or `request` "
                              "(a GenerateRequest)")
        if body.workflow is not None:
            prompt, extra = load_workflow(body.workflow, st.registry), {}
            if "nodes" in body.workflow:
                extra = {"extra_pnginfo": {"workflow": body.workflow}}
        else:
            prompt, extra = request_graph(GenerateRequest.from_dict(body.request or {}), body.model), {}
    except (AthenaError, TypeError, ValueError) as e:
        return JSONResponse({"error": {"type": "invalid_job", "message": str(e)}, "node_errors": {}}, 400)
    done = await submit(st, request, prompt, client_id=body.client_id, extra=extra, priority=body.priority,
                        idempotency_key=idempotency_key or body.idempotency_key)
    if done.refusal is not None:
        return done.refusal
    assert done.job is not None
    out = await asyncio.to_thread(view, st, done.job)
    return JSONResponse(out.model_dump(), status_code=201 if done.created else 200)


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "no such job"}})
async def get_job(job_id: str, request: Request) -> JobOut:
    st = state(request)
    job = await asyncio.to_thread(st.store.get, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return await asyncio.to_thread(view, st, job)


@router.get("/jobs", response_model=list[JobOut])
async def list_jobs(request: Request, state_: list[JobStatus] | None = Query(None, alias="state"),
                    client_id: str | None = None, limit: int = Query(50, ge=1, le=1000),
                    offset: int = Query(0, ge=0, le=2**63 - 1)) -> list[JobOut]:
    st = state(request)
    jobs = await asyncio.to_thread(lambda: st.store.list(status=state_, client_id=client_id, limit=limit,
                                                         offset=offset))
    return [await asyncio.to_thread(view, st, j) for j in jobs]


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses={404: {"description": "no such job"},
                                                                       409: {"description": "already finished"}})
async def cancel_job(job_id: str, request: Request) -> JobOut:
    st = state(request)
    job = await asyncio.to_thread(st.store.get, job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    if job.status in FINISHED:
        raise HTTPException(409, f"job {job_id!r} already {job.status.value}")
    if not await asyncio.to_thread(st.store.cancel, job_id):
        st.worker.interrupt(job_id)  # it is running: stop it at the next node or sampler step
    st.broadcast_status()
    for _ in range(100):  # report the state the cancel leads to, when it comes quickly
        job = await asyncio.to_thread(st.store.get, job_id)
        if job is not None and job.status in FINISHED:
            break
        await asyncio.sleep(0.05)
    assert job is not None
    return await asyncio.to_thread(view, st, job)


@router.get("/jobs/{job_id}/events", responses={404: {"description": "no such job"}})
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: the job's engine messages (ComfyUI's types) until it ends, then `end` with its state."""
    st = state(request)
    if await asyncio.to_thread(st.store.get, job_id) is None:
        raise HTTPException(404, f"no job {job_id!r}")
    sub = st.hub.subscribe(None, job_id=job_id)

    async def stream() -> AsyncIterator[bytes]:
        try:
            while True:
                job = await asyncio.to_thread(st.store.get, job_id)
                if job is None or job.status in FINISHED:
                    while not sub.queue.empty():
                        msg = sub.queue.get_nowait()
                        if isinstance(msg, dict):
                            yield f"event: {msg['type']}\ndata: {json.dumps(msg['data'])}\n\n".encode()
                    state_ = job.status.value if job else "deleted"
                    yield f"event: end\ndata: {json.dumps({'state': state_})}\n\n".encode()
                    return
                try:
                    msg = await asyncio.wait_for(sub.queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if isinstance(msg, dict):
                    yield f"event: {msg['type']}\ndata: {json.dumps(msg['data'])}\n\n".encode()
        finally:
            st.hub.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.get("/outputs/{path:path}", responses={403: {"description": "outside the output folder"}, 404: {}})
async def output_file(path: str, request: Request) -> Response:
    st = state(request)
    sub, _, name = path.rpartition("/")
    try:
        real = confined_path(st.folders.output, sub, name)
    except RequestRefused as e:
        return JSONResponse({"error": str(e)}, status_code=e.status)
    if not real.is_file():
        raise HTTPException(404, f"no output {path!r}")
    return FileResponse(real)


@router.get("/models")
async def models(request: Request) -> dict[str, list[str]]:
    st = state(request)
    return {folder: st.folders.model_names(folder) for folder in MODEL_FOLDERS}


@router.get("/nodes")
async def nodes(request: Request) -> dict[str, Any]:
    st = state(request)
    return await asyncio.to_thread(st.registry.object_info, st.runtime)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    st = state(request)
    counts = await asyncio.to_thread(st.store.counts)
    return {"status": "ok", "running": st.worker.running(), "jobs": {k.value: v for k, v in counts.items()}}
