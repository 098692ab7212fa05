"""How much of ComfyUI's template library Athena can read and would run: conversion, validation, missing node types.

    python benchmarks/workflow_templates.py [--write-docs] [--top 40]

Every UI-format workflow of the installed template packages (comfyui_workflow_templates_json, and the older
_media_image / _media_other 0.3.1 that hold the classic SD1.x/SDXL examples; deduplicated by file name, the newest
package wins) is converted with `athena.graph.workflow.convert` and validated with `athena.graph.validate.check`
against `athena.nodes.registry()`, over folders that hold no files. File-name combos (checkpoints, LoRAs, input
images: inputs whose options are computed from the folders) then fail with value_not_in_list, so a workflow counts
as *validating* when it has no other error. `--write-docs` replaces the generated section of docs/workflows.md.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
from common import fmt_table  # noqa: E402

from athena.graph.node import Registry  # noqa: E402
from athena.graph.validate import NodeError, check  # noqa: E402
from athena.graph.workflow import convert  # noqa: E402
from tests.graph.templates import (  # noqa: E402
    checkpoint_names,
    installed_templates,
    sd_templates,
    template_files,
)

DOC = ROOT / "docs" / "workflows.md"
BEGIN, END = "<!-- BEGIN benchmarks/workflow_templates.py -->", "<!-- END benchmarks/workflow_templates.py -->"


def file_name_error(e: NodeError, prompt: dict[str, Any], registry: Registry) -> bool:
    """A value_not_in_list on an input whose options come from the folders (a model or image file name)."""
    if e.code != "value_not_in_list" or e.node_id is None or e.input_name is None:
        return False
    inp = registry[prompt[e.node_id]["class_type"]].schema.by_name.get(e.input_name)
    return inp is not None and callable(inp.options)


def survey(registry: Registry, services: Any) -> dict[str, Any]:
    """Per-workflow outcomes and the counters the report is made of."""
    workflows = installed_templates()
    missing: collections.Counter[str] = collections.Counter()
    other_errors: collections.Counter[str] = collections.Counter()
    converted, known, valid, failed = 0, 0, [], {}
    for name, wf in workflows.items():
        try:
            conv = convert(wf, registry)
        except Exception as e:  # noqa: BLE001 - a survey reports every failure and goes on
            failed[name] = f"{type(e).__name__}: {e}"
            continue
        converted += 1
        missing.update(conv.missing)
        if conv.missing:
            continue
        known += 1
        errors = [e for e in check(conv.prompt, registry, services).errors
                  if not file_name_error(e, conv.prompt, registry)]
        if not errors:
            valid.append(name)
        for e in errors:
            where = conv.prompt[e.node_id]["class_type"] if e.node_id else "prompt"
            other_errors[f"{where}.{e.input_name or ''} {e.code}"] += 1
    return {"files": len(template_files()), "workflows": len(workflows), "converted": converted, "known": known,
            "valid": valid, "failed": failed, "missing": missing, "other_errors": other_errors,
            "node_types": len(registry.nodes), "sd": sd_rows(registry)}


def report(s: dict[str, Any], top: int) -> str:
    total = s["workflows"]
    pct = lambda k: f"{k} ({100 * k / total:.0f}%)"  # noqa: E731
    summary = fmt_table(["templates", "count"], [
        ["UI-format workflows (deduplicated by file name)", str(total)],
        ["convert (to_api succeeds)", pct(s["converted"])],
        ["every node type in Athena's registry", pct(s["known"])],
        ["validate (no error but missing model/image files)", pct(len(s["valid"]))],
    ])
    lines = [f"Athena's node library: {s['node_types']} node types. Template files scanned: {s['files']} "
             f"(catalogue files `index*.json` and non-workflow JSON excluded).", "", summary, ""]
    lines += [f"Missing node types, by how many workflows need them (top {top} of {len(s['missing'])}):", "",
              fmt_table(["node type", "workflows"], [[t, str(c)] for t, c in s["missing"].most_common(top)]), ""]
    if s["other_errors"]:
        lines += ["Validation errors other than missing files, in workflows whose node types Athena all has:", "",
                  fmt_table(["node.input error", "count"],
                            [[k, str(c)] for k, c in s["other_errors"].most_common(20)]), ""]
    if s["failed"]:
        lines += ["Workflows that do not convert:", ""] + [f"- `{k}`: {v}" for k, v in sorted(s["failed"].items())]
        lines.append("")
    lines += ["Workflows that validate: " + ", ".join(f"`{n}`" for n in sorted(s["valid"])), ""]
    lines += ["Classic SD1.x/SD2.x/SDXL templates (by checkpoint name) and what `tests/nodes/test_templates.py` does "
              "with them:", "", fmt_table(["template", "checkpoints", "end to end test"], s["sd"]), ""]
    return "\n".join(lines)


def sd_rows(registry: Registry) -> list[list[str]]:
    """One row per classic SD template: its checkpoints, and run / known gap / skipped for missing node types."""
    from tests.nodes.test_templates import KNOWN_GAPS

    rows = []
    for name, wf in sorted(sd_templates().items()):
        missing = convert(wf, registry).missing
        status = ("skipped: lacks " + ", ".join(missing) if missing else
                  "expected failure: " + KNOWN_GAPS[name] if name in KNOWN_GAPS else "runs")
        rows.append([f"`{name}`", ", ".join(sorted(set(checkpoint_names(wf)))), status])
    return rows


def write_docs(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section to replace")
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--write-docs", action="store_true", help=f"replace the generated section of {DOC.name}")
    args = ap.parse_args()
    from athena.nodes import registry
    from athena.nodes.runtime import Folders, Runtime

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        services = Runtime(Folders(root / "models", root / "output", root / "input", root / "temp"))
        text = report(survey(registry(), services), args.top)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
