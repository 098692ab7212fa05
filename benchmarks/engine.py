"""The workflow engine's own cost, measured against calling the same node functions directly.

    python benchmarks/engine.py [--nodes 2000] [--runs 7]

1. Overhead per node: a 2,000-node chain of trivial nodes (integer + 1), run by the executor with nothing cached
   (`FreeEarly`), against a plain loop calling the same `run` functions. The table gives the engine's time over
   the direct calls, and the overhead per node in microseconds.
2. An unchanged 50-node graph re-run from the cache: validation, signatures and cache lookups only (no node runs).
   Its time is given next to the direct calls of those 50 functions and next to the graph's first, uncached run.

Medians of `--runs` runs after one warm-up, in one process on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table  # noqa: E402

from athena.graph.cache import FreeEarly, LastRun  # noqa: E402
from athena.graph.execute import Executor  # noqa: E402
from athena.graph.node import Node, NodeOutput, Registry  # noqa: E402
from athena.graph.schema import Int, Link, Output, Schema  # noqa: E402


class Seed(Node):
    schema = Schema("Seed", "bench", (Int("value"),), (Output("INT"),))

    @classmethod
    def run(cls, value: int) -> tuple[int]:
        return (value,)


class Inc(Node):
    schema = Schema("Inc", "bench", (Link("a", "INT"), Int("b", default=1)), (Output("INT"),))

    @classmethod
    def run(cls, a: int, b: int) -> tuple[int]:
        return (a + b,)


class Show(Node):
    schema = Schema("Show", "bench", (Link("value", "INT"),), (), output_node=True)

    @classmethod
    def run(cls, value: int) -> NodeOutput:
        return NodeOutput(ui={"values": [value]})


def chain(n: int) -> dict[str, Any]:
    g: dict[str, Any] = {"0": {"class_type": "Seed", "inputs": {"value": 0}}}
    for i in range(1, n - 1):
        g[str(i)] = {"class_type": "Inc", "inputs": {"a": [str(i - 1), 0], "b": 1}}
    g[str(n - 1)] = {"class_type": "Show", "inputs": {"value": [str(n - 2), 0]}}
    return g


def direct(n: int) -> int:
    (x,) = Seed.run(value=0)
    for _ in range(1, n - 1):
        (x,) = Inc.run(a=x, b=1)
    Show.run(value=x)
    return x


def median_time(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--small", type=int, default=50)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    reg = Registry([Seed, Inc, Show])
    big = chain(args.nodes)
    ex = Executor(reg, None, FreeEarly())
    assert ex.run(big).outputs[str(args.nodes - 1)] == {"values": [args.nodes - 2]}
    t_engine = median_time(lambda: ex.run(big), args.runs)
    t_direct = median_time(lambda: direct(args.nodes), args.runs)

    small = chain(args.small)
    cached = Executor(reg, None, LastRun())
    t_first = median_time(lambda: Executor(reg, None, LastRun()).run(small), args.runs)
    cached.run(small)
    assert cached.run(small).executed == []
    t_rerun = median_time(lambda: cached.run(small), args.runs)
    t_small_direct = median_time(lambda: direct(args.small), args.runs)

    rows = [
        [f"{args.nodes}-node chain, nothing cached", f"{t_engine * 1e3:.1f} ms", f"{t_direct * 1e3:.2f} ms",
         f"{t_engine / t_direct:.0f}x", f"{(t_engine - t_direct) / args.nodes * 1e6:.1f} us"],
        [f"{args.small}-node graph, first run", f"{t_first * 1e3:.2f} ms", f"{t_small_direct * 1e3:.3f} ms",
         f"{t_first / t_small_direct:.0f}x", f"{(t_first - t_small_direct) / args.small * 1e6:.1f} us"],
        [f"{args.small}-node graph, unchanged re-run (all cached)", f"{t_rerun * 1e3:.2f} ms",
         f"{t_small_direct * 1e3:.3f} ms", f"{t_rerun / t_small_direct:.0f}x",
         f"{t_rerun / t_first:.2f} of the first run"],
    ]
    print(fmt_table(["case", "engine", "direct calls", "ratio", "overhead per node"], rows))


if __name__ == "__main__":
    main()
