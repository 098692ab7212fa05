"""`Pipeline`: the loaded models of one checkpoint, and `load`, the Python entry point."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from athena.checkpoints.detect import Family
from athena.checkpoints.load import Checkpoint, dtype_of, open_checkpoint, with_family
from athena.checkpoints.lora import alias_table, match, read_lora
from athena.errors import CheckpointError
from athena.models.lora import Handle, Patcher
from athena.models.unet import UNet
from athena.models.vae import AutoencoderKL
from athena.pipelines.conditioning import (
    FAMILY_TEXT,
    Conditioning,
    PromptEncoder,
    TextEncoder,
    Weighting,
    conditioning,
    size_ids,
)
from athena.pipelines.preview import fit_latent_rgb, preview


@dataclass
class Pipeline:
    """A checkpoint's models, ready for inference."""

    family: Family
    unet: UNet
    vae: AutoencoderKL | None
    text: PromptEncoder | None = None
    path: Path | None = None
    latent_rgb: Tensor | None = field(default=None, repr=False)  # the preview map, fitted on first use
    resolution: int | None = None  # the size the model was trained at, when its file says
    patchers: dict[str, Patcher] = field(default_factory=dict, repr=False)  # per model: applied adapters, originals

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def models(self) -> dict[str, nn.Module]:
        """The adaptable models by component name: "unet" and the text encoders (clip_l, clip_h, clip_g)."""
        out: dict[str, nn.Module] = {"unet": self.unet}
        out.update({e.spec.name: e.model for e in (self.text.encoders if self.text else [])})
        return out

    def load_lora(self, path: str | Path, model_strength: float = 1.0, clip_strength: float = 1.0) -> Handle:
        """Patch a LoRA / LyCORIS file into the U-Net (at `model_strength`) and the text encoders (`clip_strength`).
        Adapters stack; `handle.remove()` restores the weights bit for bit. Modules of the file that fit nothing in
        this model are listed in `handle.unmatched` and reported with a warning."""
        lora, models = read_lora(path), self.models()
        adaptable = {name: [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
                     for name, model in models.items()}
        table = alias_table(self.family.name, self.unet.cfg, adaptable.pop("unet"), adaptable)
        parts, unmatched = match(lora, table)
        name = Path(path).name
        if not parts:
            raise CheckpointError(f"{name}: none of its {len(lora.deltas)} modules fit this {self.family.label} model "
                                  f"(e.g. {unmatched[:3]}); it was made for another model family")
        if unmatched:
            warnings.warn(f"{name}: {len(unmatched)} of its modules fit nothing in this {self.family.label} model and "
                          f"are not applied (e.g. {unmatched[:3]})", stacklevel=2)
        handle = Handle(unmatched=tuple(unmatched))
        try:
            for component, deltas in parts.items():
                if component not in self.patchers:
                    self.patchers[component] = Patcher(models[component])
                strength = model_strength if component == "unet" else clip_strength
                if strength == 0:  # leaves the weights as they are; skipping it saves the patch and the restore
                    continue
                handle.entries += self.patchers[component].add(deltas, strength).entries
        except BaseException as e:  # a misfit in a later component, or Ctrl-C: undo the earlier ones
            handle.remove()
            if isinstance(e, CheckpointError):
                raise CheckpointError(f"{name}: {e}") from None
            raise
        return handle

    def preview(self, x0: Tensor, index: int = 0) -> Image.Image:
        """A cheap RGB preview of a step's x0 estimate (a linear map, no VAE decode)."""
        if self.latent_rgb is None:
            if self.vae is None:
                raise CheckpointError("previews need the checkpoint's VAE")
            self.latent_rgb = fit_latent_rgb(self.vae, self.family.latent_scale, self.family.latent_shift)
        return preview(self.latent_rgb, x0, index)

    def encode_prompt(self, text: str | Mapping[str, str], *, clip_skip: int | None = None, weighting: Weighting = "comfy",
                      width: int = 1024, height: int = 1024, crop: tuple[int, int] = (0, 0),
                      original_size: tuple[int, int] | None = None, target_size: tuple[int, int] | None = None,
                      aesthetic_score: float = 6.0) -> Conditioning:
        """The conditioning the U-Net was trained with for `text`. The size arguments (pixels, (h, w)) are SDXL's
        micro-conditioning and default to the image size; `aesthetic_score` is the SDXL refiner's."""
        if self.text is None:
            raise CheckpointError(f"{self.path.name if self.path else 'this model'} has no text encoders; "
                                  f"load a checkpoint that includes them")
        name = self.family.name
        return conditioning(name, self.text, text, clip_skip=clip_skip, weighting=weighting, sizes=lambda: size_ids(
            name, width=width, height=height, crop=crop, original=original_size, target=target_size,
            aesthetic_score=aesthetic_score))


def text_encoders(ckpt: Checkpoint, device: torch.device | str, dtype: torch.dtype,
                  embeddings: Path | None) -> PromptEncoder | None:
    """The family's text encoders, if the checkpoint has them all (a bare U-Net file has none)."""
    specs = FAMILY_TEXT[ckpt.family.name]
    if not all(s.name in ckpt.text for s in specs):
        return None
    return PromptEncoder([TextEncoder(s, ckpt.load_text(s.name, device, dtype), ckpt.tokenizers.get(s.name),
                                      ckpt.text_layers_dropped(s.name)) for s in specs], embeddings)


BUNDLED = "athena-tiny"


def bundled_model() -> Path:
    """The model that ships inside the package (trained by `scripts/train_athena_tiny.sh`)."""
    path = Path(__file__).resolve().parents[1] / "assets" / f"{BUNDLED}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the bundled model is missing from this install ({path}); reinstall Athena, or rebuild "
                              f"it with `bash scripts/train_athena_tiny.sh`")
    return path


def load(path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
         family: str | None = None, embeddings: str | Path | None = None) -> Pipeline:
    """Load a single-file checkpoint or a diffusers folder; `family` (sd1, sd2, ...) is checked if given.
    `embeddings` is the folder that `embedding:name` in prompts reads textual-inversion files from.
    `"athena-tiny"` is the bundled model."""
    if str(path) == BUNDLED and not Path(path).exists():
        path = bundled_model()
    ckpt = with_family(open_checkpoint(path), family)
    dt = dtype_of(dtype)
    unet = ckpt.load_unet(device, dt)
    vae = ckpt.load_vae(device, dt) if ckpt.vae is not None else None
    text = text_encoders(ckpt, device, dt, Path(embeddings) if embeddings is not None else None)
    return Pipeline(ckpt.family, unet, vae, text, ckpt.path, resolution=ckpt.resolution)


def load_vae(path: str | Path, *, device: torch.device | str = "cpu",
             dtype: torch.dtype | str = torch.float32) -> tuple[AutoencoderKL, Family]:
    """A standalone VAE file (or a checkpoint's VAE) and the family it belongs to (from its metadata; SD1.x when
    the file does not say, since the latent scale cannot be read from the weights)."""
    ckpt = open_checkpoint(path)
    return ckpt.load_vae(device, dtype_of(dtype)), ckpt.family
