"""The server under concurrent clients: POST /prompt throughput and latency, and end-to-end jobs/s.

    python benchmarks/server.py [--clients 20] [--jobs-per-client 20] [--threads 1]

Starts `athena serve`'s app (the same `create_app`, security layers and uvicorn settings) in a child process over
a tiny SD1 checkpoint, then N concurrent asyncio clients each POST their jobs (32x32, 1 step, distinct seeds)
back to back. Reports POST /prompt per second, its p50/p99 latency, and jobs/s from the first submission to the
last job's end.

Reference peer: ComfyUI itself is not installable here, so the figures are absolute, and the in-process reference
is a bare FastAPI endpoint that parses the same JSON body and does nothing else (`POST /bench/noop`, routed first
inside the same app, behind the same middlewares, in the same uvicorn process), driven by the same clients. The
ratio /prompt : noop is what Athena's submit path (rate limit, graph validation, the SQLite WAL commit with its
fsync, the worker wake-up and status broadcast) costs over the HTTP stack itself. The worker runs jobs on the
same cores while /prompt is measured (it is idle during the noop phase), as it would in use.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table

from tests.server.conftest import free_port
from tests.server.test_http import BASIC


def prompt(seed: int) -> dict[str, Any]:
    g = copy.deepcopy(BASIC)
    g["3"]["inputs"].update(seed=seed, steps=1)
    g["5"]["inputs"].update(width=32, height=32)
    return g


# ---------------------------------------------------------------- the server (child process)


async def noop(request: Request) -> JSONResponse:
    """The reference: parse the body as /prompt does, then answer."""
    await request.json()
    return JSONResponse({})


def serve(port: int, root: Path, models: Path) -> None:
    """`athena serve` as cmd_serve runs it, plus the no-op reference route placed before every other route."""
    import uvicorn

    from athena.server.app import create_app
    from athena.server.state import ServerConfig

    config = ServerConfig(models_dir=models, output_dir=root / "output", input_dir=root / "input",
                          data_dir=root / "data", port=port)
    app = create_app(config)
    inner = app
    while not isinstance(inner, FastAPI):  # through the security middlewares
        inner = inner.app

    inner.router.add_api_route("/bench/noop", noop, methods=["POST"])
    inner.router.routes.insert(0, inner.router.routes.pop())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_server(root: Path, models: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(root / "server.log", "ab")  # noqa: SIM115 (the child writes to it)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(root), str(models)],
                            stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


# ---------------------------------------------------------------- the clients


async def drive(url: str, path: str, clients: int, per_client: int, seed0: int) -> tuple[list[float], float, list[str]]:
    """`clients` concurrent clients, each POSTing `per_client` bodies back to back: (latencies, wall s, prompt ids)."""
    latencies: list[float] = []
    ids: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def one(n: int) -> None:
            for k in range(per_client):
                seed = seed0 + n * per_client + k
                body = {"prompt": prompt(seed), "client_id": f"bench-{n}"}
                t0 = time.perf_counter()
                r = await http.post(path, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
                if "prompt_id" in r.json():
                    ids.append(r.json()["prompt_id"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(clients)))
        return latencies, time.perf_counter() - t0, ids


def wait_done(url: str, ids: list[str], timeout: float = 600) -> float:
    """Block until every job in `ids` has finished; the latest `finished` time (server clock)."""
    want, deadline = set(ids), time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{url}/api/v1/jobs", params={"limit": 1000}, timeout=60).json()
        mine = [j for j in jobs if j["id"] in want]
        if len(mine) == len(want) and all(j["finished"] is not None for j in mine):
            bad = [j for j in mine if j["state"] != "succeeded"]
            if bad:
                raise RuntimeError(f"{len(bad)} jobs did not succeed, e.g. {bad[0]['error']}")
            return max(j["finished"] for j in mine)
        time.sleep(0.2)
    raise RuntimeError("jobs did not finish in time")


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--jobs-per-client", type=int, default=20, help="at most 100: the default per-client burst")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS)")
    ap.add_argument("--serve", nargs=3, metavar=("PORT", "ROOT", "MODELS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]), Path(args.serve[2]))
        return

    import torch

    from athena.checkpoints.build import random_checkpoint
    from athena.models.unet import TINY_SD1
    from athena.models.vae import TINY_VAE

    with tempfile.TemporaryDirectory() as tmp:
        root, models = Path(tmp), Path(tmp) / "models"
        (models / "checkpoints").mkdir(parents=True)
        random_checkpoint(models / "checkpoints" / "tiny_sd1.safetensors", "sd1", TINY_SD1, TINY_VAE,
                          {"clip_l": (32, 2)}, dtype=torch.float32)
        proc, url = start_server(root, models, args.threads)
        try:
            warm = httpx.post(f"{url}/prompt", json={"prompt": prompt(10**6), "client_id": "warm"}).json()
            wait_done(url, [warm["prompt_id"]])  # the model is loaded and the nodes' code is warm
            n, m = args.clients, args.jobs_per_client
            asyncio.run(drive(url, "/bench/noop", n, 2, 0))  # connection set-up, once
            noop, noop_wall, _ = asyncio.run(drive(url, "/bench/noop", n, m, 0))
            t_submit = time.time()
            post, post_wall, ids = asyncio.run(drive(url, "/prompt", n, m, 0))
            t_end = wait_done(url, ids)
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    jobs = n * m
    rows = [
        ["POST /prompt", f"{jobs / post_wall:.0f}", f"{1e3 * pct(post, 50):.1f}", f"{1e3 * pct(post, 99):.1f}"],
        ["POST /bench/noop (bare FastAPI)", f"{jobs / noop_wall:.0f}", f"{1e3 * pct(noop, 50):.1f}",
         f"{1e3 * pct(noop, 99):.1f}"],
        ["ratio /prompt : noop", f"{(jobs / post_wall) / (jobs / noop_wall):.2f}x",
         f"{pct(post, 50) / pct(noop, 50):.2f}x", f"{pct(post, 99) / pct(noop, 99):.2f}x"],
    ]
    print(f"{n} concurrent clients x {m} POSTs each ({jobs} jobs: 32x32, 1 step, tiny SD1), {os.cpu_count()} CPUs, "
          f"server torch threads {args.threads}\n")
    print(fmt_table(["endpoint", "req/s", "p50 ms", "p99 ms"], rows))
    print(f"\nend to end: {jobs} jobs in {t_end - t_submit:.1f} s = {jobs / (t_end - t_submit):.1f} jobs/s "
          f"(first POST to last job finished)")


if __name__ == "__main__":
    main()
