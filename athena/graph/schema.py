"""Node schemas: typed inputs and outputs, declared once, exported in ComfyUI's `/object_info` shape.

A port type is a name (ComfyUI's: "MODEL", "LATENT", "INT", ...). Widget types (INT, FLOAT, STRING, BOOLEAN,
COMBO) carry constants; every other type is a link from another node's output. "*" matches any type, and a
comma-separated type ("IMAGE,MASK") matches any of its parts, as in ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from athena.errors import ConfigError

WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
ANY = "*"
Hidden = Literal["PROMPT", "UNIQUE_ID", "EXTRA_PNGINFO", "DYNPROMPT"]
Options = Sequence[str] | Callable[[Any], Sequence[str]]  # fixed, or computed from the host's services (files)


@dataclass(frozen=True)
class Input:
    """One input socket or widget. `options` makes a combo; a callable computes them (model files) from the services
    object the host passes to `Registry.object_info` and `validate`."""

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    round: float | bool | None = None
    options: Options | None = None
    multiline: bool = False
    optional: bool = False
    lazy: bool = False
    force_input: bool = False
    control_after_generate: bool = False
    tooltip: str | None = None
    image_upload: bool = False  # LoadImage's upload button in the ComfyUI frontend

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGETS and not self.force_input

    def choices(self, services: Any) -> list[str]:
        if self.options is None:
            return []
        return list(self.options(services) if callable(self.options) else self.options)

    def info(self, services: Any) -> list[Any]:
        """This input as ComfyUI's `[TYPE, {options}]` pair (a combo's TYPE is its list of choices)."""
        opts: dict[str, Any] = {}
        for key, value in (("default", self.default), ("min", self.min), ("max", self.max), ("step", self.step),
                           ("round", self.round), ("tooltip", self.tooltip)):
            if value is not None:
                opts[key] = value
        for key, flag in (("multiline", self.multiline), ("lazy", self.lazy), ("forceInput", self.force_input),
                          ("control_after_generate", self.control_after_generate), ("image_upload", self.image_upload)):
            if flag:
                opts[key] = True
        head: Any = self.choices(services) if self.type == "COMBO" else self.type
        return [head, opts] if opts else [head]


def Int(name: str, default: int = 0, min: int = -(2**63), max: int = 2**63 - 1, step: int = 1, **kw: Any) -> Input:
    return Input(name, "INT", default=default, min=min, max=max, step=step, **kw)


def Float(name: str, default: float = 0.0, min: float = -math.inf, max: float = math.inf, step: float = 0.01,
          **kw: Any) -> Input:
    return Input(name, "FLOAT", default=default, min=min if math.isfinite(min) else None,
                 max=max if math.isfinite(max) else None, step=step, **kw)


def String(name: str, default: str = "", **kw: Any) -> Input:
    return Input(name, "STRING", default=default, **kw)


def Boolean(name: str, default: bool = False, **kw: Any) -> Input:
    return Input(name, "BOOLEAN", default=default, **kw)


def Combo(name: str, options: Options, default: str | None = None, **kw: Any) -> Input:
    return Input(name, "COMBO", default=default, options=options, **kw)


def Link(name: str, type: str, **kw: Any) -> Input:
    """An input fed by another node's output of `type`."""
    return Input(name, type, **kw)


@dataclass(frozen=True)
class Output:
    type: str
    name: str | None = None  # shown on the socket; the type's name by default
    is_list: bool = False
    tooltip: str | None = None


@dataclass(frozen=True)
class Schema:
    """What a node takes and gives. `id` is the class name that workflows refer to (ComfyUI's `class_type`)."""

    id: str
    category: str
    inputs: tuple[Input, ...] = ()
    outputs: tuple[Output, ...] = ()
    hidden: tuple[Hidden, ...] = ()
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    input_is_list: bool = False
    not_idempotent: bool = False  # its cache key includes its node id (no sharing with equal nodes); for "re-run
    # every time" (a node that reads a clock), return NaN from `fingerprint`
    deprecated: bool = False
    experimental: bool = False
    module: str = "athena.nodes"
    by_name: dict[str, Input] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {i.name: i for i in self.inputs})
        problems = []
        if len(self.by_name) != len(self.inputs):
            problems.append("input names repeat")
        for i in self.inputs:
            if i.type == "COMBO" and i.options is None:
                problems.append(f"combo {i.name!r} has no options")
            if i.type == "COMBO" and not callable(i.options) and not i.options:
                problems.append(f"combo {i.name!r} has an empty option list")
            if i.type in ("INT", "FLOAT") and i.default is not None:
                if (i.min is not None and i.default < i.min) or (i.max is not None and i.default > i.max):
                    problems.append(f"{i.name!r} default {i.default} lies outside [{i.min}, {i.max}]")
        if problems:
            raise ConfigError(f"node schema {self.id!r} is invalid: {'; '.join(problems)}")

    def info(self, services: Any = None) -> dict[str, Any]:
        """ComfyUI's `/object_info` entry for this node."""
        sections: dict[str, dict[str, Any]] = {"required": {}, "optional": {}}
        for i in self.inputs:
            sections["optional" if i.optional else "required"][i.name] = i.info(services)
        order = {k: list(v) for k, v in sections.items()}
        if self.hidden:
            sections["hidden"] = {h.lower(): h for h in self.hidden}
            order["hidden"] = [h.lower() for h in self.hidden]
        return {
            "input": sections, "input_order": order,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.name or o.type for o in self.outputs],
            "output_tooltips": [o.tooltip or "" for o in self.outputs],
            "name": self.id, "display_name": self.display_name or self.id, "description": self.description,
            "python_module": self.module, "category": self.category, "output_node": self.output_node,
            "deprecated": self.deprecated, "experimental": self.experimental, "api_node": False,
        }


def types_match(given: str, wanted: str) -> bool:
    """ComfyUI's socket compatibility: equal names, "*" on either side, or a shared part of a comma list."""
    if given == wanted or ANY in (given, wanted):
        return True
    return bool(set(given.split(",")) & set(wanted.split(",")))
