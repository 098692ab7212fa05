"""Constant values as nodes (ComfyUI's `comfy_extras/nodes_primitive.py`): one widget in, the same value out, so
one constant can feed several inputs and be changed in one place."""

from __future__ import annotations

import sys

from athena.graph.node import Node
from athena.graph.schema import Boolean, Float, Int, Output, Schema, String

CATEGORY = "utils/primitive"


class PrimitiveInt(Node):
    schema = Schema(id="PrimitiveInt", category=CATEGORY, display_name="Int",
                    inputs=(Int("value", min=-sys.maxsize, max=sys.maxsize, control_after_generate=True),),
                    outputs=(Output("INT"),))

    @classmethod
    def run(cls, value: int) -> tuple[int]:
        return (value,)


class PrimitiveFloat(Node):
    schema = Schema(id="PrimitiveFloat", category=CATEGORY, display_name="Float",
                    inputs=(Float("value", min=-sys.maxsize, max=sys.maxsize),), outputs=(Output("FLOAT"),))

    @classmethod
    def run(cls, value: float) -> tuple[float]:
        return (value,)


class PrimitiveString(Node):
    schema = Schema(id="PrimitiveString", category=CATEGORY, display_name="String",
                    inputs=(String("value"),), outputs=(Output("STRING"),))

    @classmethod
    def run(cls, value: str) -> tuple[str]:
        return (value,)


class PrimitiveStringMultiline(Node):
    schema = Schema(id="PrimitiveStringMultiline", category=CATEGORY, display_name="String (Multiline)",
                    inputs=(String("value", multiline=True),), outputs=(Output("STRING"),))

    @classmethod
    def run(cls, value: str) -> tuple[str]:
        return (value,)


class PrimitiveBoolean(Node):
    schema = Schema(id="PrimitiveBoolean", category=CATEGORY, display_name="Boolean",
                    inputs=(Boolean("value"),), outputs=(Output("BOOLEAN"),))

    @classmethod
    def run(cls, value: bool) -> tuple[bool]:
        return (value,)


NODES = (PrimitiveInt, PrimitiveFloat, PrimitiveString, PrimitiveStringMultiline, PrimitiveBoolean)
