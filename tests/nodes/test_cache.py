"""Incremental execution on ComfyUI's basic txt2img graph: what re-runs when one thing changes, and model sharing."""

from __future__ import annotations

import copy

import pytest

from athena.graph.execute import Executor
from athena.nodes import registry

# ComfyUI's script_examples/basic_api_example.py graph, at a tiny size
BASIC = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 2, "cfg": 8, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "bad hands", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


@pytest.fixture
def ex(runtime):
    ex = Executor(registry(), runtime)
    first = ex.run(copy.deepcopy(BASIC))
    assert first.status == "success", first.error
    assert sorted(first.executed) == sorted(BASIC)
    return ex


def test_the_same_graph_twice_runs_nothing(ex):
    again = ex.run(copy.deepcopy(BASIC))
    assert again.status == "success" and again.executed == []
    assert again.outputs["9"]["images"][0]["filename"].endswith(".png")  # the cached result is still reported


def test_a_new_seed_reruns_exactly_the_sampler_and_its_descendants(ex):
    g = copy.deepcopy(BASIC)
    g["3"]["inputs"]["seed"] = 6
    assert sorted(ex.run(g).executed) == ["3", "8", "9"]


def test_a_new_prompt_reruns_that_text_encode_and_its_descendants(ex):
    g = copy.deepcopy(BASIC)
    g["6"]["inputs"]["text"] = "a photo of a dog"
    assert sorted(ex.run(g).executed) == ["3", "6", "8", "9"]


def test_two_loaders_of_one_file_load_it_once(runtime):
    g = copy.deepcopy(BASIC)
    g["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd1.safetensors"}}
    g["7"]["inputs"]["clip"] = ["10", 1]
    g["8"]["inputs"]["vae"] = ["10", 2]
    ex = Executor(registry(), runtime)
    result = ex.run(g)
    assert result.status == "success" and runtime.models.loads == 1
    assert len({"4", "10"} & set(result.executed)) == 1 and len({"4", "10"} & set(result.cached)) == 1
    other = Executor(registry(), runtime)  # another job's engine: the model is shared, not loaded again
    assert other.run(copy.deepcopy(BASIC)).status == "success" and runtime.models.loads == 1
