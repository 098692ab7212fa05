"""Trivial nodes for engine tests: integer arithmetic, big arrays, a lazy switch, an expanding loop, lists, async.

Each run is logged in `ctx.services` (a `Log`), so tests see exactly which nodes ran."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from athena.graph.node import Context, ExecutionBlocker, Node, NodeOutput, Registry
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Output, Schema, String


@dataclass
class Log:
    runs: list[str] = field(default_factory=list)  # node ids in run order
    calls: Counter[str] = field(default_factory=Counter)  # class -> calls
    events: list[tuple[str, float]] = field(default_factory=list)

    def note(self, ctx: Context, cls: str) -> None:
        self.runs.append(ctx.node_id)
        self.calls[cls] += 1


class Const(Node):
    schema = Schema("Const", "test", (Int("value", min=-1000, max=1000),), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, value: int) -> tuple[int]:
        ctx.services.note(ctx, "Const")
        return (value,)


class Add(Node):
    schema = Schema("Add", "test", (Link("a", "INT"), Int("b", default=1)), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int, b: int) -> tuple[int]:
        ctx.services.note(ctx, "Add")
        return (a + b,)


class Out(Node):
    schema = Schema("Out", "test", (Link("value", "*"),), (), output_node=True)

    @classmethod
    def run(cls, ctx: Context, value: Any) -> NodeOutput:
        ctx.services.note(ctx, "Out")
        return NodeOutput(ui={"values": [value if isinstance(value, (int, float, str)) else float(np.sum(value))]})


class Big(Node):
    """`mb` megabytes of float64 filled with `value`."""
    schema = Schema("Big", "test", (Int("mb", default=8, min=1, max=1024), Float("value", default=1.0)),
                    (Output("ARRAY"),))

    @classmethod
    def run(cls, ctx: Context, mb: int, value: float) -> tuple[np.ndarray]:
        ctx.services.note(ctx, "Big")
        return (np.full(mb * 131072, value),)


class Step(Node):
    schema = Schema("Step", "test", (Link("x", "ARRAY"),), (Output("ARRAY"),))

    @classmethod
    def run(cls, ctx: Context, x: np.ndarray) -> tuple[np.ndarray]:
        ctx.services.note(ctx, "Step")
        return (x + 1.0,)


class Switch(Node):
    schema = Schema("Switch", "test", (Boolean("choose_a", default=True), Link("a", "*", lazy=True),
                                       Link("b", "*", lazy=True)), (Output("*"),))

    @classmethod
    def check_lazy_status(cls, choose_a: bool, a: Any = None, b: Any = None) -> list[str]:
        return ["a"] if choose_a else ["b"]

    @classmethod
    def run(cls, ctx: Context, choose_a: bool, a: Any = None, b: Any = None) -> tuple[Any]:
        ctx.services.note(ctx, "Switch")
        return (a if choose_a else b,)


class Repeat(Node):
    """Adds 1 to `a`, `times` times, by expanding into a chain of Add nodes."""
    schema = Schema("Repeat", "test", (Link("a", "INT"), Int("times", default=2, min=1, max=100)), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int, times: int) -> NodeOutput:
        ctx.services.note(ctx, "Repeat")
        graph: dict[str, Any] = {"c": {"class_type": "Const", "inputs": {"value": a}}}
        prev = "c"
        for i in range(times):
            graph[f"add{i}"] = {"class_type": "Add", "inputs": {"a": [prev, 0], "b": 1}}
            prev = f"add{i}"
        return NodeOutput(values=([prev, 0],), expand=graph)


class Count(Node):
    """0, 1, ..., n-1 as one list output."""
    schema = Schema("Count", "test", (Int("n", default=3, min=0, max=100),), (Output("INT", is_list=True),))

    @classmethod
    def run(cls, ctx: Context, n: int) -> tuple[list[int]]:
        ctx.services.note(ctx, "Count")
        return (list(range(n)),)


class Total(Node):
    schema = Schema("Total", "test", (Link("values", "INT"),), (Output("INT"),), input_is_list=True)

    @classmethod
    def run(cls, ctx: Context, values: list[int]) -> tuple[int]:
        ctx.services.note(ctx, "Total")
        return (sum(values),)


class Wait(Node):
    """An async node: sleeps `seconds`, then passes `a` on."""
    schema = Schema("Wait", "test", (Link("a", "INT"), Float("seconds", default=0.2, min=0, max=5)), (Output("INT"),))

    @classmethod
    async def run(cls, ctx: Context, a: int, seconds: float) -> tuple[int]:
        ctx.services.note(ctx, "Wait")
        ctx.services.events.append(("start", time.perf_counter()))
        await asyncio.sleep(seconds)
        ctx.services.events.append(("end", time.perf_counter()))
        return (a,)


class Fail(Node):
    schema = Schema("Fail", "test", (Link("a", "INT"),), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int) -> tuple[int]:
        ctx.services.note(ctx, "Fail")
        raise RuntimeError(f"cannot handle {a}")


class Steps(Node):
    """Reports `n` progress steps (each checks the cancel token); cancels its own job at step `cancel_at`."""
    schema = Schema("Steps", "test", (Link("a", "INT"), Int("n", default=5, min=1, max=100),
                                      Int("cancel_at", default=-1, min=-1, max=100)), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int, n: int, cancel_at: int) -> tuple[int]:
        ctx.services.note(ctx, "Steps")
        for i in range(n):
            if i == cancel_at:
                ctx.cancel.cancel()
            ctx.progress(i + 1, n)
        return (a,)


class Block(Node):
    schema = Schema("Block", "test", (Link("a", "INT"), String("message", default="")), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int, message: str) -> tuple[Any]:
        ctx.services.note(ctx, "Block")
        return (ExecutionBlocker(message or None),)


class ReadFile(Node):
    """The text of a file; its fingerprint is the file's hash, so editing the file re-runs it."""
    schema = Schema("ReadFile", "test", (String("path"),), (Output("STRING"),))

    @classmethod
    def fingerprint(cls, services: Any, path: str) -> str:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    @classmethod
    def validate_inputs(cls, services: Any, path: str) -> str | None:
        return None if Path(path).is_file() else f"file {path!r} does not exist; give an existing file"

    @classmethod
    def run(cls, ctx: Context, path: str) -> tuple[str]:
        ctx.services.note(ctx, "ReadFile")
        return (Path(path).read_text(),)


class Pick(Node):
    schema = Schema("Pick", "test", (Combo("choice", options=("red", "green")),), (Output("STRING"),))

    @classmethod
    def run(cls, ctx: Context, choice: str) -> tuple[str]:
        return (choice,)


class PickAny(Node):
    """A combo whose node accepts names beyond its list (as LoadImage takes "x.png [output]")."""
    schema = Schema("PickAny", "test", (Combo("choice", options=("red", "green")),), (Output("STRING"),))

    @classmethod
    def validate_inputs(cls, services: Any, **inputs: Any) -> str | None:
        return None if str(inputs["choice"]).endswith(("red", "green", "[output]")) else "unknown colour"

    @classmethod
    def run(cls, ctx: Context, choice: str) -> tuple[str]:
        return (choice,)


class LazyBoom(Node):
    schema = Schema("LazyBoom", "test", (Link("a", "*", lazy=True),), (Output("*"),))

    @classmethod
    def check_lazy_status(cls, a: Any = None) -> list[str]:
        raise ValueError("cannot decide")

    @classmethod
    def run(cls, ctx: Context, a: Any = None) -> tuple[Any]:
        return (a,)


class BadExpand(Node):
    schema = Schema("BadExpand", "test", (Link("a", "INT"),), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int) -> NodeOutput:
        return NodeOutput(values=(["nope", 0],), expand={"c": {"class_type": "Const", "inputs": {"value": a}}})


class ExpandOut(Node):
    """Expands into a Const and an output node showing it."""
    schema = Schema("ExpandOut", "test", (Link("a", "INT"),), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, a: int) -> NodeOutput:
        return NodeOutput(values=(["c", 0],), expand={"c": {"class_type": "Const", "inputs": {"value": a + 100}},
                                                      "show": {"class_type": "Out", "inputs": {"value": ["c", 0]}}})


class Seed(Node):
    schema = Schema("Seed", "test", (Int("seed", min=0, max=2**64 - 1),), (Output("INT"),))

    @classmethod
    def run(cls, ctx: Context, seed: int) -> tuple[int]:
        return (seed,)


NODES = (Seed, Pick, PickAny, LazyBoom, BadExpand, ExpandOut, Const, Add, Out, Big, Step, Switch, Repeat, Count, Total, Wait, Fail, Steps, Block, ReadFile)


def registry() -> Registry:
    return Registry(NODES, ignored=("Note",))
