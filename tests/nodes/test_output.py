"""Output nodes: ComfyUI's file naming and metadata, and a filename_prefix that can never leave the output folder."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from athena.errors import ConfigError
from athena.nodes import output as O
from tests.nodes.helpers import make_ctx

PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0]}},
          "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}}
WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 9, "type": "SaveImage", "widgets_values": ["ComfyUI"]}],
            "links": [], "version": 0.4}


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path, prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})


def images(b=1):
    return torch.rand(b, 32, 32, 3, generator=torch.Generator().manual_seed(0))


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_save_image_writes_comfyui_names_and_metadata(ctx):
    out = O.SaveImage.run(ctx, images=images(2), filename_prefix="ComfyUI")
    assert out.ui == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
                                 {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"}]}
    with Image.open(ctx.services.folders.output / "ComfyUI_00001_.png") as img:
        assert img.size == (32, 32)
        assert json.loads(img.info["prompt"]) == PROMPT
        assert json.loads(img.info["workflow"]) == WORKFLOW


def test_pixels_are_truncated_to_8_bits_as_comfyui(ctx):
    x = torch.tensor([0.0, 0.5, 0.999, 1.2]).view(1, 1, 4, 1).expand(1, 1, 4, 3).contiguous()
    O.SaveImage.run(ctx, images=x, filename_prefix="px")
    with Image.open(ctx.services.folders.output / "px_00001_.png") as img:
        assert np.asarray(img)[0, :, 0].tolist() == [0, 127, 254, 255]


def test_counter_continues_after_existing_files_and_subfolders_come_from_the_prefix(ctx):
    root = ctx.services.folders.output
    (root / "shots").mkdir()
    (root / "shots" / "fox_00007_.png").write_bytes(b"")
    (root / "shots" / "foxes_00042_.png").write_bytes(b"")  # another prefix: ignored
    out = O.SaveImage.run(ctx, images=images(), filename_prefix="shots/fox")
    assert out.ui["images"] == [{"filename": "fox_00008_.png", "subfolder": "shots", "type": "output"}]
    out = O.SaveImage.run(ctx, images=images(), filename_prefix="new/deeper/fox_%width%x%height%")
    assert out.ui["images"][0] == {"filename": "fox_32x32_00001_.png", "subfolder": "new/deeper", "type": "output"}


def test_no_metadata_chunks_without_a_prompt(tmp_path):
    ctx = make_ctx(tmp_path)
    O.SaveImage.run(ctx, images=images(), filename_prefix="bare")
    with Image.open(ctx.services.folders.output / "bare_00001_.png") as img:
        assert "prompt" not in img.info and "workflow" not in img.info


@pytest.mark.parametrize("prefix", ["../x", "/abs/x", "a/../../b", "..", "a/../b", "..\\x", "C:/x", "", "/"])
def test_prefix_cannot_escape_the_output_folder(ctx, tmp_path, prefix):
    before = files_under(tmp_path)
    with pytest.raises(ConfigError, match="filename_prefix"):
        O.SaveImage.run(ctx, images=images(), filename_prefix=prefix)
    assert files_under(tmp_path) == before


def test_prefix_through_a_symlink_out_is_refused(ctx, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, ctx.services.folders.output / "link")
    with pytest.raises(ConfigError, match="outside the output folder"):
        O.SaveImage.run(ctx, images=images(), filename_prefix="link/x")
    assert not any(outside.iterdir())


def test_preview_goes_to_temp(ctx):
    out = O.PreviewImage.run(ctx, images=images())
    (entry,) = out.ui["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    assert entry["filename"].startswith("ComfyUI_temp_") and entry["filename"].endswith("_00001_.png")
    with Image.open(ctx.services.folders.temp / entry["filename"]) as img:
        assert json.loads(img.info["prompt"]) == PROMPT
    assert not any(ctx.services.folders.output.iterdir())


def test_animated_webp_has_every_frame(ctx):
    frames = torch.stack([torch.full((32, 32, 3), v) for v in (0.0, 0.5, 1.0)])
    out = O.SaveAnimatedWEBP.run(ctx, images=frames, filename_prefix="anim/clip", fps=10.0, lossless=True,
                                 quality=80, method="fastest")
    assert out.ui == {"images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
                      "animated": [True]}
    with Image.open(ctx.services.folders.output / "anim" / "clip_00001_.webp") as img:
        assert img.format == "WEBP" and img.n_frames == 3 and img.is_animated
        img.seek(1)
        img.load()
        assert img.info["duration"] == 100  # 1000 / fps ms per frame
        assert img.convert("RGB").getpixel((5, 5)) == (127, 127, 127)  # lossless
        exif = img.getexif()
        assert json.loads(exif[0x0110].removeprefix("prompt:")) == PROMPT
        assert json.loads(exif[0x010F].removeprefix("workflow:")) == WORKFLOW


def test_schemas_match_comfyui_widget_order():
    info = O.SaveAnimatedWEBP.schema.info()
    assert info["input_order"]["required"] == ["images", "filename_prefix", "fps", "lossless", "quality", "method"]
    assert info["input"]["required"]["method"][0] == ["default", "fastest", "slowest"]
    assert info["output_node"] and info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def test_graph_run_saves_with_the_prompt_and_reruns_when_the_input_file_changes(tmp_path):
    from athena.graph.execute import Executor
    from athena.nodes import registry

    ctx = make_ctx(tmp_path)
    runtime = ctx.services
    Image.new("RGB", (32, 32), (255, 0, 0)).save(runtime.folders.input / "red.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "red.png"}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "run/inv"}}}
    ex = Executor(registry(), runtime)
    first = ex.run(prompt, extra={"extra_pnginfo": {"workflow": WORKFLOW}})
    assert first.status == "success", first.error or first.errors
    assert first.outputs["3"]["images"] == [{"filename": "inv_00001_.png", "subfolder": "run", "type": "output"}]
    with Image.open(runtime.folders.output / "run" / "inv_00001_.png") as img:
        assert img.getpixel((0, 0)) == (0, 255, 255)
        assert json.loads(img.info["prompt"]) == prompt and json.loads(img.info["workflow"]) == WORKFLOW
    assert ex.run(prompt).executed == []  # nothing changed: nothing runs
    Image.new("RGB", (32, 32), (0, 0, 255)).save(runtime.folders.input / "red.png")
    again = ex.run(prompt)
    assert sorted(again.executed) == ["1", "2", "3"]  # the file's hash changed the whole chain's signature
    with Image.open(runtime.folders.output / "run" / "inv_00002_.png") as img:
        assert img.getpixel((0, 0)) == (255, 255, 0)


def test_graph_run_reports_a_missing_input_file(tmp_path):
    from athena.graph.execute import Executor
    from athena.nodes import registry

    runtime = make_ctx(tmp_path).services
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    result = Executor(registry(), runtime).run(prompt)
    assert result.status == "invalid"
    assert any("gone.png" in e.message for e in result.errors)
    assert not any(runtime.folders.output.iterdir())
