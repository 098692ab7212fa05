"""The ComfyUI workflow templates installed as packages (the test extra), by file name: the newest package wins."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

# oldest first: a file name in a later package replaces the earlier one
PACKAGES = ("comfyui_workflow_templates_media_other", "comfyui_workflow_templates_media_image",
            "comfyui_workflow_templates_json")


def template_files() -> dict[str, Path]:
    """Every UI-format workflow file of the installed packages, by file name (index*.json are catalogues)."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        if importlib.util.find_spec(package) is None:
            continue
        folder = Path(importlib.import_module(package).__file__).parent / "templates"
        for path in sorted(folder.glob("*.json")):
            if not path.name.startswith("index"):
                files[path.name] = path
    return files


def installed_templates() -> dict[str, dict[str, Any]]:
    """The UI-format workflows among `template_files()`, parsed (a few files are other JSON: option lists)."""
    out = {}
    for name, path in template_files().items():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            out[name] = data
    return out


# ---- the classic SD templates (tests/nodes/test_templates.py runs them end to end) -----------------------------------

CHECKPOINT_FAMILY = {  # checkpoint file names in the templates -> the family of tiny model that stands in for them
    "v1-5-pruned-emaonly-fp16.safetensors": "sd1", "DreamShaper_8_pruned.safetensors": "sd1",
    "dreamshaper_8.safetensors": "sd1", "majicmixRealistic_v7.safetensors": "sd1",
    "japaneseStyleRealistic_v20.safetensors": "sd1", "architecturerealmix_v11.safetensors": "sd1",
    "awpainting_v14.safetensors": "sd1", "interiordesignsuperm_v2.safetensors": "sd1",
    "v2-1_768-ema-pruned.safetensors": "sd2", "512-inpainting-ema.safetensors": "sd2_inpaint",
    "sd_xl_base_1.0.safetensors": "sdxl", "sd_xl_turbo_1.0_fp16.safetensors": "sdxl",
    "sd_xl_refiner_1.0.safetensors": "sdxl_refiner",
}
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple", "CheckpointLoader", "ImageOnlyCheckpointLoader", "unCLIPCheckpointLoader")


def checkpoint_names(workflow: dict[str, Any]) -> list[str]:
    """The file names the workflow's checkpoint loaders (subgraphs included) hold as their first widget value."""
    graphs = [workflow, *((workflow.get("definitions") or {}).get("subgraphs") or [])]
    return [str(n["widgets_values"][0]) for g in graphs for n in g["nodes"]
            if n["type"] in CHECKPOINT_LOADERS and isinstance(n.get("widgets_values"), list) and n["widgets_values"]]


def sd_templates() -> dict[str, dict[str, Any]]:
    """The templates whose every checkpoint is a classic SD1.x/SD2.x/SDXL one of `CHECKPOINT_FAMILY`."""
    return {name: wf for name, wf in installed_templates().items()
            if (names := checkpoint_names(wf)) and all(n in CHECKPOINT_FAMILY for n in names)}
