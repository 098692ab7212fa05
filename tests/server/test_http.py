"""A real uvicorn server driven by real HTTP and WebSocket clients: ComfyUI's script_examples flow, the native jobs
flow, cancel and interrupt, and the error shapes."""

from __future__ import annotations

import copy
import io
import json
import time
import uuid

import httpx
from PIL import Image
from websockets.sync.client import connect

BASIC = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 3, "cfg": 8, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad hands", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def follow(ws, prompt_id: str, timeout: float = 120) -> list[dict]:
    """ComfyUI's websockets_api_example loop: read until `executing` with node None for our prompt."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.recv(timeout=timeout)
        if isinstance(raw, bytes):
            seen.append({"type": "binary", "data": raw[:8]})
            continue
        msg = json.loads(raw)
        seen.append(msg)
        data = msg.get("data", {})
        if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return seen
    raise AssertionError(f"no end of prompt; got {[m['type'] for m in seen]}")


def test_comfyui_script_examples_flow(server):
    client_id = str(uuid.uuid4())
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        r = httpx.post(f"{server.url}/prompt", json={"prompt": BASIC, "client_id": client_id})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        assert r.json()["node_errors"] == {} and isinstance(r.json()["number"], int)
        messages = follow(ws, prompt_id)
    mine = [m for m in messages if m["type"] != "binary" and m["data"].get("prompt_id") == prompt_id]
    kinds = [m["type"] for m in mine]
    assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
    assert kinds[-2:] == ["execution_success", "executing"]
    executing = [m["data"]["node"] for m in mine if m["type"] == "executing"]
    assert executing[-1] is None and set(executing[:-1]) == set(BASIC)
    progress = [m["data"] for m in mine if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3] and {p["node"] for p in progress} == {"3"}
    assert kinds.index("executed") > kinds.index("progress")
    assert any(m["type"] == "binary" for m in messages)  # preview frames

    history = httpx.get(f"{server.url}/history/{prompt_id}").json()[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert history["prompt"][1] == prompt_id and history["prompt"][2] == BASIC
    image = history["outputs"]["9"]["images"][0]
    assert image["type"] == "output" and image["subfolder"] == ""
    view = httpx.get(f"{server.url}/view", params=image)
    assert view.status_code == 200
    png = Image.open(io.BytesIO(view.content))
    assert json.loads(png.text["prompt"]) == BASIC
    assert httpx.get(f"{server.url}/api/history/{prompt_id}").json() == {prompt_id: history}  # the /api twin


def test_a_rerun_is_cached_and_still_reports_the_image(server):
    client_id = str(uuid.uuid4())
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
        ws.recv(timeout=10)
        for _ in range(2):
            prompt_id = httpx.post(f"{server.url}/prompt", json={"prompt": BASIC, "client_id": client_id}).json()[
                "prompt_id"]
            messages = follow(ws, prompt_id)
    cached = next(m for m in messages if m["type"] == "execution_cached")["data"]["nodes"]
    assert set(cached) == set(BASIC)
    assert [m["data"]["node"] for m in messages if m["type"] == "executed"] == ["9"]


def test_native_jobs_flow_with_events(server):
    body = {"request": {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 3},
            "model": "tiny_sd1.safetensors", "client_id": "native"}
    r = httpx.post(f"{server.url}/api/v1/jobs", json=body, headers={"Idempotency-Key": "fox-1"})
    assert r.status_code == 201, r.text
    job = r.json()
    again = httpx.post(f"{server.url}/api/v1/jobs", json=body, headers={"Idempotency-Key": "fox-1"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    events = []
    with httpx.stream("GET", f"{server.url}/api/v1/jobs/{job['id']}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            if line == "event: end":
                break
    assert events[-1] == "end"
    done = httpx.get(f"{server.url}/api/v1/jobs/{job['id']}").json()
    assert done["state"] == "succeeded" and done["position"] is None and done["error"] is None
    image = next(iter(done["outputs"].values()))["images"][0]
    out = httpx.get(f"{server.url}/api/v1/outputs/{image['filename']}")
    assert out.status_code == 200 and Image.open(io.BytesIO(out.content)).size == (16, 16)  # the tiny VAE: 2x
    listed = httpx.get(f"{server.url}/api/v1/jobs", params={"client_id": "native"}).json()
    assert [j["id"] for j in listed] == [job["id"]]


def slow_prompt(steps: int = 400) -> dict:
    g = copy.deepcopy(BASIC)
    g["3"]["inputs"]["steps"] = steps
    g["3"]["inputs"]["seed"] = int(time.time() * 1000) % 100000  # never cached
    return g


def wait_state(server, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


def test_cancel_a_queued_job_and_interrupt_a_running_one(server):
    client_id = str(uuid.uuid4())
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
        ws.recv(timeout=10)
        running = httpx.post(f"{server.url}/prompt", json={"prompt": slow_prompt(), "client_id": client_id}).json()
        queued = httpx.post(f"{server.url}/prompt", json={"prompt": slow_prompt(401), "client_id": client_id}).json()
        wait_state(server, running["prompt_id"], {"running"})
        pending = httpx.get(f"{server.url}/queue").json()["queue_pending"]
        assert [p[1] for p in pending] == [queued["prompt_id"]]
        r = httpx.post(f"{server.url}/api/v1/jobs/{queued['prompt_id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert httpx.post(f"{server.url}/interrupt", json={"prompt_id": "someone-else"}).status_code == 200
        assert httpx.get(f"{server.url}/api/v1/jobs/{running['prompt_id']}").json()["state"] == "running"
        assert httpx.post(f"{server.url}/interrupt", json={"prompt_id": running["prompt_id"]}).status_code == 200
        messages = follow(ws, running["prompt_id"])
    assert "execution_interrupted" in [m["type"] for m in messages]
    assert wait_state(server, running["prompt_id"], {"cancelled"})["state"] == "cancelled"
    again = httpx.post(f"{server.url}/api/v1/jobs/{running['prompt_id']}/cancel")
    assert again.status_code == 409


def test_error_shapes(server):
    bad = copy.deepcopy(BASIC)
    bad["3"]["inputs"]["steps"] = 0
    r = httpx.post(f"{server.url}/prompt", json={"prompt": bad})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    assert body["node_errors"]["3"]["dependent_outputs"] == ["9"] and body["node_errors"]["3"]["class_type"] == "KSampler"
    r = httpx.post(f"{server.url}/prompt", json={"prompt": {"1": {"class_type": "EmptyLatentImage",
                                                                  "inputs": {"width": 64, "height": 64,
                                                                             "batch_size": 1}}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"
    assert httpx.post(f"{server.url}/prompt", json={"nothing": 1}).status_code == 400
    assert httpx.get(f"{server.url}/api/v1/jobs/nope").status_code == 404
    assert httpx.get(f"{server.url}/history/nope").json() == {}
    failing = copy.deepcopy(BASIC)
    failing["5"]["inputs"]["batch_size"] = 1
    failing["10"] = {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}
    r = httpx.post(f"{server.url}/prompt", json={"prompt": {**failing, "11": {
        "class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}}})
    assert r.status_code == 200 and "10" in r.json()["node_errors"]  # the valid output still runs


def test_a_monitor_sees_every_clients_jobs_and_other_clients_see_none(server):
    """Another client's socket gets none of the job's messages (nor its preview frames)."""
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId=watcher&monitor=1") as monitor, \
            connect(f"ws://127.0.0.1:{server.port}/ws?clientId=bystander") as bystander:
        monitor.recv(timeout=10)
        bystander.recv(timeout=10)
        g = copy.deepcopy(BASIC)
        g["3"]["inputs"]["seed"] = 77
        prompt_id = httpx.post(f"{server.url}/prompt", json={"prompt": g, "client_id": "someone"}).json()["prompt_id"]
        seen = follow(monitor, prompt_id)
        assert "execution_success" in [m["type"] for m in seen]
        others = []
        try:
            while True:
                raw = bystander.recv(timeout=0.5)
                others.append(raw if isinstance(raw, bytes) else json.loads(raw))
        except TimeoutError:
            pass
    # broadcast queue status only (and, on connect, what an earlier test left running), never this job's events
    assert not any(isinstance(m, bytes) or m.get("data", {}).get("prompt_id") == prompt_id for m in others)


def test_free_drops_cached_results_so_the_next_run_executes_again(server):
    client_id = str(uuid.uuid4())
    with connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
        ws.recv(timeout=10)
        prompt_id = httpx.post(f"{server.url}/prompt", json={"prompt": BASIC, "client_id": client_id}).json()["prompt_id"]
        follow(ws, prompt_id)
        assert httpx.post(f"{server.url}/free", json={"unload_models": True, "free_memory": True}).status_code == 200
        prompt_id = httpx.post(f"{server.url}/prompt", json={"prompt": BASIC, "client_id": client_id}).json()["prompt_id"]
        messages = follow(ws, prompt_id)
    cached = next(m for m in messages if m["type"] == "execution_cached")["data"]["nodes"]
    ran = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"] is not None}
    assert cached == [] and ran == set(BASIC)
