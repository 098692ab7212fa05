"""Shared benchmark helpers: interleaved median timing, peak RSS, and the machine's reference rates."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import torch


def device_of(name: str) -> torch.device:
    """The `--device` argument as a device, or a one-line exit when this machine cannot run on it."""
    from athena.checkpoints.load import device_of as checked
    from athena.errors import ConfigError

    try:
        return checked(name)
    except ConfigError as e:
        raise SystemExit(f"--{e}") from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_pair(a: Callable[[], object], b: Callable[[], object], *, runs: int, warmup: int = 1,
               device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """Median seconds of `a` and `b`, run interleaved (a, b, a, b, ...) after warm-up so drift hits both alike."""
    for _ in range(warmup):
        a(), b()
    sync(device)
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(runs):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def matmul_flops_per_s(dtype: torch.dtype, device: torch.device, n: int = 2048, runs: int = 5) -> float:
    """The large-matmul rate of this machine for `dtype`: the ceiling the model's GEMMs and convs chase."""
    x = torch.randn(n, n, device=device).to(dtype)
    t, _ = timed_pair(lambda: x @ x, lambda: None, runs=runs, device=device)
    return 2 * n**3 / t


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
