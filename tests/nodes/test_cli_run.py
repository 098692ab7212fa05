"""`athena run`: a workflow file in, per-node progress and the written paths out; a broken workflow lists every error."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from athena.cli import main
from tests.nodes.test_cache import BASIC


@pytest.fixture
def dirs(models_dir, tmp_path):
    return ["--models-dir", str(models_dir), "--input-dir", str(tmp_path / "in"), "--data-dir", str(tmp_path / "data")]


def write(tmp_path, prompt) -> str:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(prompt))
    return str(path)


def test_run_prints_the_images_it_wrote_and_per_node_progress(tmp_path, dirs, capsys):
    out = tmp_path / "out"
    assert main(["run", write(tmp_path, BASIC), "-o", str(out), "--set", "3.seed=7", "--set", "KSampler.steps=3",
                 *dirs]) == 0
    captured = capsys.readouterr()
    paths = captured.out.split()
    assert len(paths) == 1 and paths[0].startswith(str(out)) and Image.open(paths[0]).size == (8, 8)
    assert json.loads(Image.open(paths[0]).text["prompt"])["3"]["inputs"]["seed"] == 7
    assert "KSampler (node 3) 3/3" in captured.err and "[7/7] SaveImage (node 9)" in captured.err


def test_an_invalid_workflow_exits_non_zero_listing_every_error(tmp_path, dirs, capsys):
    bad = json.loads(json.dumps(BASIC))
    bad["3"]["inputs"]["steps"] = 0
    bad["3"]["inputs"]["sampler_name"] = "eulerr"
    bad["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    del bad["6"]["inputs"]["clip"]
    assert main(["run", write(tmp_path, bad), "-o", str(tmp_path / "out"), *dirs]) == 1
    err = capsys.readouterr().err
    for line in ("node 3 (KSampler) input 'steps': value_smaller_than_min",
                 "node 3 (KSampler) input 'sampler_name': value_not_in_list",
                 "node 4 (CheckpointLoaderSimple) input 'ckpt_name': value_not_in_list",
                 "node 6 (CLIPTextEncode) input 'clip': required_input_missing"):
        assert line in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,message", [("{not json", "is not valid JSON"), ("[1, 2]", "not a workflow object")])
def test_unreadable_files_get_one_clear_line(tmp_path, dirs, capsys, content, message):
    path = tmp_path / "wf.json"
    path.write_text(content)
    assert main(["run", str(path), *dirs]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_set_names_the_inputs_there_are(tmp_path, dirs, capsys):
    assert main(["run", write(tmp_path, BASIC), "--set", "3.sed=7", *dirs]) == 2
    assert "has no input 'sed'" in capsys.readouterr().err
