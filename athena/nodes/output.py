"""Output nodes: PNGs into the output folder (SaveImage) or the temp folder (PreviewImage), and animated WebP.

Files are named as ComfyUI names them, `{prefix}_{counter:05}_.png`, with the prefix's folders as a subfolder of
the output folder (never outside it), and carry the graph (`prompt`, `workflow`) so ComfyUI can reopen them. The
UI result lists each file as {"filename", "subfolder", "type"} for the frontend's /view requests.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from torch import Tensor

from athena.graph.node import Context, Node, NodeOutput
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Schema, String
from athena.media import files

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def save_pngs(ctx: Context, images: Tensor, root: Path, prefix: str, kind: str, compress_level: int) -> NodeOutput:
    """Each image of the batch as a PNG with the job's graph in its text chunks; the UI entry for each."""
    target = files.save_target(root, prefix, images.shape[2], images.shape[1])
    info = files.png_text(ctx.prompt, ctx.extra_pnginfo)
    results = []
    for i, image in enumerate(images):
        name = target.name(i, ".png", batch_number=i)
        files.save_png(image, target.folder / name, info, compress_level)
        results.append({"filename": name, "subfolder": target.subfolder, "type": kind})
    return NodeOutput(ui={"images": results})


class SaveImage(Node):
    schema = Schema(
        id="SaveImage", category="image", display_name="Save Image", output_node=True,
        description="Saves the input images to your ComfyUI output directory.",
        inputs=(Link("images", "IMAGE", tooltip="The images to save."),
                String("filename_prefix", default="ComfyUI",
                       tooltip="The prefix for the file to save. This may include formatting information such as "
                               "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")),
        hidden=("PROMPT", "EXTRA_PNGINFO"))

    @classmethod
    def run(cls, ctx: Context, images: Tensor, filename_prefix: str = "ComfyUI") -> NodeOutput:
        return save_pngs(ctx, images, ctx.services.folders.output, filename_prefix, "output", compress_level=4)


class PreviewImage(Node):
    """Saves to the temp folder (cleared by the host), under a random prefix so concurrent previews never clash."""

    schema = Schema(id="PreviewImage", category="image", display_name="Preview Image", output_node=True,
                    inputs=(Link("images", "IMAGE"),), hidden=("PROMPT", "EXTRA_PNGINFO"))

    @classmethod
    def run(cls, ctx: Context, images: Tensor) -> NodeOutput:
        prefix = "ComfyUI_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        return save_pngs(ctx, images, ctx.services.folders.temp, prefix, "temp", compress_level=1)


class SaveAnimatedWEBP(Node):
    schema = Schema(id="SaveAnimatedWEBP", category="image/animation", output_node=True,
                    inputs=(Link("images", "IMAGE"), String("filename_prefix", default="ComfyUI"),
                            Float("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
                            Boolean("lossless", default=True), Int("quality", default=80, min=0, max=100),
                            Combo("method", tuple(WEBP_METHODS))),
                    hidden=("PROMPT", "EXTRA_PNGINFO"))

    @classmethod
    def run(cls, ctx: Context, images: Tensor, filename_prefix: str, fps: float, lossless: bool, quality: int,
            method: str) -> NodeOutput:
        target = files.save_target(ctx.services.folders.output, filename_prefix, images.shape[2], images.shape[1])
        name = target.name(0, ".webp")
        files.save_animated_webp(images, target.folder / name, fps, lossless, quality, WEBP_METHODS[method],
                                 ctx.prompt, ctx.extra_pnginfo)
        ui: dict[str, Any] = {"images": [{"filename": name, "subfolder": target.subfolder, "type": "output"}],
                              "animated": [len(images) != 1]}
        return NodeOutput(ui=ui)


NODES = (SaveImage, PreviewImage, SaveAnimatedWEBP)
