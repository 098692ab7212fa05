"""Schemas: checked at registration, exported in ComfyUI's /object_info shape."""

from __future__ import annotations

import pytest

from athena.errors import ConfigError
from athena.graph.node import Node, Registry
from athena.graph.schema import Combo, Float, Int, Link, Output, Schema, String, types_match


class Sampler(Node):
    schema = Schema("MySampler", "sampling", (
        Link("model", "MODEL", tooltip="the denoiser"),
        Int("seed", default=0, min=0, max=2**64 - 1, control_after_generate=True),
        Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
        Combo("sampler_name", options=("euler", "heun")),
        String("note", multiline=True, optional=True),
        Combo("ckpt_name", options=lambda services: sorted(services)),
    ), (Output("LATENT"),), hidden=("PROMPT", "UNIQUE_ID"), display_name="My Sampler")

    @classmethod
    def run(cls, **kw):
        return (None,)


def test_object_info_has_comfyuis_exact_shape():
    info = Registry([Sampler]).object_info(services={"b.safetensors", "a.safetensors"})
    assert info == {"MySampler": {
        "input": {
            "required": {
                "model": ["MODEL", {"tooltip": "the denoiser"}],
                "seed": ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "step": 1,
                                 "control_after_generate": True}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                "sampler_name": [["euler", "heun"]],
                "ckpt_name": [["a.safetensors", "b.safetensors"]],
            },
            "optional": {"note": ["STRING", {"default": "", "multiline": True}]},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        },
        "input_order": {"required": ["model", "seed", "cfg", "sampler_name", "ckpt_name"], "optional": ["note"],
                        "hidden": ["prompt", "unique_id"]},
        "output": ["LATENT"], "output_is_list": [False], "output_name": ["LATENT"], "output_tooltips": [""],
        "name": "MySampler", "display_name": "My Sampler", "description": "", "python_module": "athena.nodes",
        "category": "sampling", "output_node": False, "deprecated": False, "experimental": False, "api_node": False,
    }}


@pytest.mark.parametrize("inputs,problem", [
    ((Int("a"), Int("a")), "repeat"),
    ((Int("steps", default=0, min=1, max=10),), "outside"),
    ((Combo("c", options=()),), "empty option list"),
])
def test_bad_schemas_are_refused_when_declared(inputs, problem):
    with pytest.raises(ConfigError, match=problem):
        Schema("Bad", "test", inputs)


def test_registry_refuses_two_nodes_with_one_id():
    with pytest.raises(ConfigError, match="share the id 'MySampler'"):
        Registry([Sampler, Sampler])


@pytest.mark.parametrize("given,wanted,ok", [("IMAGE", "IMAGE", True), ("IMAGE", "MASK", False), ("*", "MODEL", True),
                                            ("IMAGE,MASK", "MASK", True), ("LATENT", "*", True)])
def test_socket_types_match_as_in_comfyui(given, wanted, ok):
    assert types_match(given, wanted) is ok
