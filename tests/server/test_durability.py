"""Durability: queue 20 jobs, `kill -9` the server mid-job three times, restart it on the same data directory each
time; every job ends exactly once, its outputs are complete files on disk, and history survives the restarts.

The kills are aimed: the first two hit the same job (its second run after the restart), which the store must then
fail as "stopped twice"; the third hits a different job, which must simply re-run. Which job each kill hit is read
from the store's own file while the server is dead, so a kill that lands a moment late is still accounted for.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

from athena.server.store import DB_FILENAME, JobStatus, JobStore
from tests.server.conftest import Server, make_server
from tests.server.test_http import BASIC

JOBS = 20
STEPS = 20  # ~0.6 s a job with one CPU thread: long enough that a kill lands in the sampler, not between jobs
FINISHED = {"succeeded", "failed", "cancelled"}


def prompt(seed: int) -> dict:
    g = copy.deepcopy(BASIC)
    g["3"]["inputs"].update(seed=seed, steps=STEPS)  # distinct seeds: nothing is served from the cache
    g["5"]["inputs"].update(width=32, height=32)
    return g


def jobs(srv: Server) -> dict[str, dict]:
    listed = httpx.get(f"{srv.url}/api/v1/jobs", params={"limit": 1000}, timeout=30).json()
    ids = [j["id"] for j in listed]
    assert len(ids) == len(set(ids)), f"a job is listed twice: {Counter(ids).most_common(3)}"
    return {j["id"]: j for j in listed}


def wait_mid_job(srv: Server, job_id: str | None = None, *, not_id: str | None = None, timeout: float = 120) -> str:
    """Poll until a job (`job_id`, or any job but `not_id`) is in the sampler with steps still to go; its id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in httpx.get(f"{srv.url}/api/v1/jobs", params={"state": "running"}, timeout=30).json():
            p = job["progress"] or {}
            if (job_id in (None, job["id"]) and job["id"] != not_id and p.get("node") == "3"
                    and 1 <= p.get("value", 0) <= p.get("max", 0) - 5):
                return str(job["id"])
        time.sleep(0.01)
    raise AssertionError(f"no job reached the middle of its sampler in {timeout} s; log: {srv.root / 'server.log'}")


def wait_all_finished(srv: Server, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        state = jobs(srv)
        if all(j["state"] in FINISHED for j in state.values()):
            return state
        assert time.monotonic() < deadline, f"jobs still unfinished: {Counter(j['state'] for j in state.values())}"
        time.sleep(0.1)


def running_in_store(data_dir: Path) -> list[str]:
    """The jobs the dead server left running (read from its file; nothing else has it open)."""
    with JobStore(data_dir / DB_FILENAME) as store:
        return [j.id for j in store.list(status=[JobStatus.RUNNING], limit=None)]


def history(srv: Server) -> dict[str, dict]:
    return httpx.get(f"{srv.url}/history", timeout=30).json()


def complete_png(path: Path) -> Image.Image:
    data = path.read_bytes()
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path.name} is truncated ({len(data)} bytes, no IEND chunk)"
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every IDAT chunk: fails on a partial write
    return image


def test_kill_9_three_times_every_job_ends_exactly_once(tmp_path, models, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 shared cores: torch's spinning thread pool slows jobs 10-50x
    srv = make_server(tmp_path, models).start()
    data_dir = tmp_path / "data"
    try:
        ids = []
        for i in range(JOBS):
            r = httpx.post(f"{srv.url}/prompt", json={"prompt": prompt(1000 + i), "client_id": "durability"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["prompt_id"])
        seeds = {job_id: 1000 + i for i, job_id in enumerate(ids)}

        killed: list[str] = []
        before: dict[str, dict] = {}  # history entries seen before each kill: they must never change
        for n in range(3):
            # kills 1 and 2: the first job, in its first run and again in its re-run; kill 3: any other job
            target = killed[0] if n == 1 else None
            wait_mid_job(srv, target, not_id=killed[0] if n == 2 else None)
            before |= history(srv)
            srv.kill()
            left = running_in_store(data_dir)
            assert len(left) == 1, f"kill {n + 1}: expected one job left running, the store has {left}"
            killed += left
            srv.start()
        assert killed[0] == killed[1] != killed[2], f"the kills hit {killed}; expected A, A, B"

        state = wait_all_finished(srv, timeout=180)
        assert set(state) == set(ids)
        assert httpx.get(f"{srv.url}/queue").json() == {"queue_running": [], "queue_pending": []}

        twice = killed[0]
        assert state[twice]["state"] == "failed"
        error = state[twice]["error"]
        assert error["reason"] == "server_stopped" and error["attempts"] == 2 and "twice" in error["message"]
        assert {j for j in ids if state[j]["state"] != "succeeded"} == {twice}

        hist = history(srv)
        assert set(hist) == set(ids)
        assert hist[twice]["status"]["status_str"] == "error" and hist[twice]["outputs"] == {}
        for job_id, entry in before.items():
            assert hist[job_id] == entry, f"history of {job_id} changed across a kill and restart"

        referenced: list[str] = []
        for job_id in ids:
            if job_id == twice:
                continue
            images = hist[job_id]["outputs"]["9"]["images"]
            assert len(images) == 1 and hist[job_id]["status"]["completed"] is True
            path = srv.output / images[0]["subfolder"] / images[0]["filename"]
            assert not path.name.endswith((".part", ".tmp")), f"history points at a temporary file {path.name}"
            png = complete_png(path)
            assert json.loads(png.text["prompt"])["3"]["inputs"]["seed"] == seeds[job_id]  # this job's own file
            referenced.append(images[0]["filename"])
        assert len(referenced) == len(set(referenced)), "two jobs claim the same output file"
        on_disk = sorted(p.name for p in srv.output.rglob("*") if p.is_file())
        # the kills land in the sampler, before SaveImage, so a killed run leaves no file behind (no orphan, no .part)
        assert on_disk == sorted(referenced)

        srv.stop()  # a clean restart changes nothing either
        srv.start()
        assert history(srv) == hist
        assert {j: s["state"] for j, s in jobs(srv).items()} == {j: s["state"] for j, s in state.items()}
    finally:
        srv.stop()

    with JobStore(data_dir / DB_FILENAME) as store:  # each job ran once, re-ran once per kill, the failed one never 3x
        attempts = {j.id: j.attempts for j in store.list(limit=None)}
    assert attempts == {j: 2 if j == twice else 1 + killed.count(j) for j in ids}


def test_a_clean_stop_mid_job_requeues_the_job(tmp_path, models, monkeypatch):
    """SIGTERM (Ctrl-C, a service restart) interrupts the running job to stop promptly, but must not end it: it runs
    again at the next start, as after a kill -9, instead of showing as cancelled by nobody."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    srv = make_server(tmp_path, models).start()
    try:
        ids = [httpx.post(f"{srv.url}/prompt", json={"prompt": prompt(2000 + i)}).json()["prompt_id"]
               for i in range(2)]
        running = wait_mid_job(srv)
        srv.stop()
        with JobStore(tmp_path / "data" / DB_FILENAME) as store:
            assert store.get(running).status == JobStatus.RUNNING  # left for recover(), not finished
        srv.start()
        state = wait_all_finished(srv, timeout=60)
        assert {j: s["state"] for j, s in state.items()} == dict.fromkeys(ids, "succeeded")
        complete_png(srv.output / history(srv)[running]["outputs"]["9"]["images"][0]["filename"])
    finally:
        srv.stop()
