"""A real `athena serve` in a child process on 127.0.0.1, over a models folder with a tiny SD1 checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from athena.checkpoints.build import random_checkpoint
from athena.models.unet import TINY_SD1
from athena.models.vae import TINY_VAE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: Path
    port: int
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> Path:
        return self.root / "output"

    def start(self, timeout: float = 120) -> Server:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (the child writes to it)
        self.proc = subprocess.Popen([sys.executable, "-m", "athena.cli", "serve", "--port", str(self.port),
                                      "--quiet", *self.args], stdout=log, stderr=log, env={**os.environ})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    random_checkpoint(root / "checkpoints" / "tiny_sd1.safetensors", "sd1", TINY_SD1, TINY_VAE, {"clip_l": (32, 2)},
                      dtype=torch.float32)
    return root


def make_server(root: Path, models: Path, *extra: str) -> Server:
    args = ["--models-dir", str(models), "--output-dir", str(root / "output"), "--input-dir", str(root / "input"),
            "--data-dir", str(root / "data"), *extra]
    return Server(root, free_port(), args)


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    srv = make_server(tmp_path_factory.mktemp("srv"), models).start()
    yield srv
    srv.stop()
