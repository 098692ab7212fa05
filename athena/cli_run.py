"""`athena run WORKFLOW.json [--set NODE.INPUT=VALUE ...] [-o DIR]`: run a ComfyUI (API or UI format) or Athena
workflow with the node library, showing per-node progress, and print the files it wrote."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch

from athena.cancel import CancelToken
from athena.checkpoints.load import dtype_of
from athena.errors import ConfigError
from athena.folders import default_dir
from athena.graph import events as ev
from athena.graph.execute import Executor
from athena.graph.validate import check
from athena.graph.workflow import load as load_workflow
from athena.graph.workflow import set_value
from athena.nodes import registry
from athena.nodes.runtime import Folders, Runtime


class NodeProgress:
    """One stderr line per node, with the sampler's steps on the same line."""

    def __init__(self, prompt: dict[str, Any], total: int, stream: TextIO | None = None) -> None:
        self.prompt, self.total, self.stream = prompt, total, stream or sys.stderr
        self.done, self.start, self.open = 0, time.perf_counter(), False

    def title(self, node: str) -> str:
        spec = self.prompt.get(node, {})
        name = spec.get("_meta", {}).get("title") or spec.get("class_type", "")
        return f"{name} (node {node})"

    def __call__(self, e: Any) -> None:
        if isinstance(e, ev.ExecutionCached) and e.nodes:
            self.line(f"cached: {len(e.nodes)} node(s) reused from earlier results")
        elif isinstance(e, ev.Executing):
            self.done += 1
            self.start = time.perf_counter()
            self.line(f"[{self.done}/{self.total}] {self.title(e.display_node)}", end="")
        elif isinstance(e, ev.ProgressEvent):
            rate = e.value / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r[{self.done}/{self.total}] {self.title(e.node)} {e.value}/{e.max} "
                              f"{rate:5.2f} it/s")
            self.stream.flush()
            self.open = True
        elif isinstance(e, (ev.ExecutionSuccess, ev.ExecutionError, ev.ExecutionInterrupted)):
            self.line("")

    def line(self, text: str, end: str = "\n") -> None:
        if self.open or end == "":
            self.stream.write("\n" if self.open else "")
        self.stream.write(text + end)
        self.stream.flush()
        self.open = end == ""


def read_workflow(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"workflow {path!r} does not exist; pass a ComfyUI workflow .json (API or UI format)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p.name} is not valid JSON ({e}); export the workflow again from ComfyUI") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name} holds a JSON {type(data).__name__}, not a workflow object")
    return data


def cmd_run(args: argparse.Namespace) -> int:
    data = read_workflow(args.workflow)
    reg = registry()
    prompt = load_workflow(data, reg)
    for spec in args.set or []:
        prompt = set_value(prompt, spec, reg)
    output = Path(args.output or args.output_dir or default_dir("output", "ATHENA_OUTPUT_DIR"))
    data_dir = Path(args.data_dir) if args.data_dir else default_dir("data", "ATHENA_DATA_DIR")
    folders = Folders(models=Path(args.models_dir) if args.models_dir else default_dir("models", "ATHENA_MODELS_DIR"),
                      output=output, temp=data_dir / "temp",
                      input=Path(args.input_dir) if args.input_dir else default_dir("input", "ATHENA_INPUT_DIR"))
    runtime = Runtime(folders, torch.device(args.device), dtype_of(args.dtype))
    checked = check(prompt, reg, runtime)
    for e in checked.errors:
        print(f"error: {e}", file=sys.stderr)
    if not checked.outputs:
        print(f"{args.workflow}: {len(checked.errors)} error(s); nothing can run", file=sys.stderr)
        return 1
    if checked.errors:
        print(f"warning: outputs depending on those nodes are skipped; running {', '.join(checked.outputs)}",
              file=sys.stderr)
    extra = {"extra_pnginfo": {"workflow": data}} if "nodes" in data else {}
    cancel = CancelToken()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()  # stop at the next node or sampler step; a second Ctrl-C aborts at once

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        result = Executor(reg, runtime).run(prompt, sink=NodeProgress(prompt, len(prompt)), cancel=cancel,
                                            extra=extra)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.status == "interrupted":
        print("interrupted: finished nodes are kept; nothing else was written", file=sys.stderr)
        return 130
    if result.error is not None:
        fail = result.error
        print(f"error: node {fail.node_id} ({fail.node_type}) failed: {fail.exception_type}: {fail.message}",
              file=sys.stderr)
        return 1
    for path in output_paths(result.outputs, folders):
        print(path)
    return 0


def output_paths(outputs: dict[str, dict[str, Any]], folders: Folders) -> list[Path]:
    roots = {"output": folders.output, "temp": folders.temp, "input": folders.input}
    paths = []
    for ui in outputs.values():
        for key in ("images", "gifs", "animated", "videos", "audio"):
            for item in ui.get(key, []):
                if isinstance(item, dict) and "filename" in item:
                    paths.append(roots.get(item.get("type", "output"), folders.output)
                                 / item.get("subfolder", "") / item["filename"])
    return paths


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run a ComfyUI workflow (API or UI format) or an Athena workflow")
    r.add_argument("workflow", help="a workflow .json file")
    r.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                   help="change an input before running; NODE is an id or a title (repeatable)")
    r.add_argument("-o", "--output", help="the output folder (default: --output-dir)")
    r.add_argument("--output-dir")
    r.add_argument("--models-dir")
    r.add_argument("--input-dir", help="where LoadImage reads images (default: $ATHENA_INPUT_DIR or ~/.athena/input)")
    r.add_argument("--data-dir")
    r.add_argument("--device", default="cpu")
    r.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    r.set_defaults(fn=cmd_run)
