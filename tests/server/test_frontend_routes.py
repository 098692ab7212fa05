"""The routes the ComfyUI frontend calls beside the core API, with ComfyUI's shapes: the jobs API, the model browser,
/internal, global subgraphs, user data listings, the user stylesheet and the workflow templates."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server.test_http import BASIC


def finished(server, prompt_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/api/jobs/{prompt_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError("the job did not finish")


def test_jobs_api(server):
    workflow = {"id": "wf-1", "nodes": []}
    body = {"prompt": BASIC, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    r = httpx.post(f"{server.url}/api/prompt", json=body)
    prompt_id = r.json()["prompt_id"]
    job = finished(server, prompt_id)
    assert job["status"] == "completed" and job["workflow_id"] == "wf-1"
    assert job["workflow"]["prompt"] == BASIC and job["workflow"]["extra_data"]["extra_pnginfo"]["workflow"] == workflow
    assert job["outputs_count"] == job["previewable_outputs_count"] == 1
    assert job["preview_output"] == {**job["outputs"]["9"]["images"][0], "nodeId": "9", "mediaType": "images"}
    assert job["create_time"] <= job["execution_start_time"] <= job["execution_end_time"]
    assert job["execution_status"]["status_str"] == "success"

    page = httpx.get(f"{server.url}/api/jobs", params={"status": "completed,failed,cancelled", "limit": 1}).json()
    assert page["jobs"][0]["id"] == prompt_id and "outputs" not in page["jobs"][0]  # newest first, no detail
    assert page["pagination"]["limit"] == 1 and page["pagination"]["offset"] == 0
    assert page["pagination"]["has_more"] == (page["pagination"]["total"] > 1)
    queue = httpx.get(f"{server.url}/api/jobs", params={"status": "in_progress,pending"}).json()
    assert prompt_id not in [j["id"] for j in queue["jobs"]]
    assert httpx.get(f"{server.url}/api/jobs", params={"status": "done"}).status_code == 400
    assert httpx.get(f"{server.url}/api/jobs/nope").status_code == 404


def test_model_browser_and_internal_routes(server):
    folders = httpx.get(f"{server.url}/api/experiment/models").json()
    checkpoints = next(f for f in folders if f["name"] == "checkpoints")
    assert checkpoints["folders"][0].endswith("checkpoints")
    files = httpx.get(f"{server.url}/api/experiment/models/checkpoints").json()
    tiny = next(f for f in files if f["name"] == "tiny_sd1.safetensors")
    assert tiny["pathIndex"] == 0 and tiny["size"] > 0 and tiny["modified"] > 0
    assert httpx.get(f"{server.url}/api/experiment/models/nope").status_code == 404

    paths = httpx.get(f"{server.url}/internal/folder_paths").json()
    assert paths["checkpoints"] == checkpoints["folders"]
    assert isinstance(httpx.get(f"{server.url}/internal/files/output").json(), list)
    assert httpx.get(f"{server.url}/internal/files/models").status_code == 400
    assert httpx.get(f"{server.url}/internal/logs/raw").json()["entries"] == []
    assert httpx.get(f"{server.url}/api/global_subgraphs").json() == {}


def test_user_files_and_templates(server):
    assert httpx.get(f"{server.url}/api/userdata", params={"dir": "never-written"}).json() == []
    css = httpx.get(f"{server.url}/user.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(f"{server.url}/templates/..%2F..%2Fetc%2Fpasswd").status_code in (400, 403)
    pytest.importorskip("comfyui_workflow_templates_media_other", reason="the templates are in the test extra")
    assert httpx.get(f"{server.url}/templates/index.json").status_code == 200  # the json package
    default = httpx.get(f"{server.url}/templates/default.json")  # the classic SD1.5 one, from a media package
    assert default.status_code == 200 and any(n["type"] == "KSampler" for n in default.json()["nodes"])
    assert httpx.get(f"{server.url}/templates/nope.json").status_code == 404
