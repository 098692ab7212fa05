"""Load: 50 concurrent clients submit 200 tiny jobs through ComfyUI's POST /prompt; every job is accepted once,
runs once and succeeds, and the server's memory stays flat once it is warm.

The default limits must not refuse this load: 20 jobs/s per client with bursts of 100 (each client sends 4, at once)
and max_queued=1000 (at most 200 wait).
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from tests.server.conftest import Server, make_server
from tests.server.test_http import BASIC

CLIENTS = 50
PER_CLIENT = 4
JOBS = CLIENTS * PER_CLIENT
# RSS growth allowed between job 50 and job 200 (the warm server holds ~400 MiB: torch, the tiny model, the
# node library). A job leaves a row in SQLite and a PNG on disk; in RAM only the result cache's last run (kilobytes
# at 32x32) and allocator noise (Python's pools, glibc arenas of the request threads). 64 MiB over 150 jobs flags
# any leak above ~430 KiB a job, e.g. keeping each job's tensors, events or model copy; measured: +2 MiB.
MAX_GROWTH = 64 << 20


def prompt(seed: int) -> dict:
    g = copy.deepcopy(BASIC)
    g["3"]["inputs"].update(seed=seed, steps=1)  # distinct seeds: every job really runs
    g["5"]["inputs"].update(width=32, height=32)
    return g


def client(url: str, n: int) -> list[tuple[int, str, int]]:
    """One client: its 4 jobs, back to back, as (status, prompt_id, number)."""
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for k in range(PER_CLIENT):
            r = http.post("/prompt", json={"prompt": prompt(n * PER_CLIENT + k), "client_id": f"load-{n}"})
            body = r.json()
            out.append((r.status_code, body.get("prompt_id", r.text), body.get("number", -1)))
    return out


def succeeded(srv: Server) -> int:
    return len(httpx.get(f"{srv.url}/api/v1/jobs", params={"state": "succeeded", "limit": 1000}, timeout=30).json())


def wait_succeeded(srv: Server, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (done := succeeded(srv)) < n:
        counts = httpx.get(f"{srv.url}/queue", timeout=30).json()
        assert time.monotonic() < deadline, (f"{done}/{n} jobs succeeded after {timeout} s; "
                                             f"{len(counts['queue_pending'])} pending")
        time.sleep(0.1)


def test_50_clients_200_jobs_none_lost_memory_flat(tmp_path: Path, models: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 shared cores: torch's spinning thread pool slows jobs 10-50x
    srv = make_server(tmp_path, models).start()
    try:
        proc = psutil.Process(srv.proc.pid)
        with ThreadPoolExecutor(CLIENTS) as pool:
            replies = [r for rs in pool.map(lambda n: client(srv.url, n), range(CLIENTS)) for r in rs]
        refused = [r for r in replies if r[0] != 200]
        assert not refused, f"{len(refused)} submissions refused, e.g. {refused[:3]}"
        ids = [r[1] for r in replies]
        assert len(set(ids)) == JOBS and len({r[2] for r in replies}) == JOBS  # ids and queue numbers unique

        wait_succeeded(srv, 50, timeout=60)
        warm = proc.memory_info().rss
        wait_succeeded(srv, JOBS, timeout=90)
        end = proc.memory_info().rss

        hist = httpx.get(f"{srv.url}/history", timeout=30).json()
        assert set(hist) == set(ids)
        assert all(h["status"]["status_str"] == "success" for h in hist.values())
        files = [srv.output / h["outputs"]["9"]["images"][0]["filename"] for h in hist.values()]
        assert len(set(files)) == JOBS and all(f.is_file() for f in files)
        assert httpx.get(f"{srv.url}/queue").json() == {"queue_running": [], "queue_pending": []}
        assert end - warm < MAX_GROWTH, (f"server RSS grew {(end - warm) / 2**20:.0f} MiB from job 50 to job 200 "
                                         f"({warm / 2**20:.0f} -> {end / 2**20:.0f} MiB)")
        print(f"\nRSS after 50 jobs {warm / 2**20:.0f} MiB, after {JOBS} {end / 2**20:.0f} MiB")
    finally:
        srv.stop()
