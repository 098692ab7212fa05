"""`Pipeline`: the loaded models of one checkpoint, and `load`, the Python entry point."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from athena.checkpoints.detect import FAMILIES, Family
from athena.checkpoints.load import (
    Checkpoint,
    device_of,
    dtype_of,
    load_text_file,
    open_checkpoint,
    with_family,
)
from athena.checkpoints.lora import alias_table, component_of, match, read_lora
from athena.checkpoints.text import layers_dropped
from athena.errors import CheckpointError, ConfigError
from athena.models.clip import CLIPTextModel
from athena.models.lora import Handle, Patcher
from athena.models.unet import UNet, UNetConfig
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
        return patch_lora(path, self.family, self.unet.cfg, self.models(), self.patchers, model_strength, clip_strength)

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


@dataclass(eq=False)
class TextModels:
    """A family's text encoders without a U-Net (ComfyUI's CLIPLoader): prompts to conditioning, LoRAs on the text
    side. `Pipeline` offers the same `load_lora` and `encode_prompt`, so a CLIP value may hold either."""

    family: Family
    text: PromptEncoder
    path: Path | None = None  # the (first) file, for messages
    patchers: dict[str, Patcher] = field(default_factory=dict, repr=False)

    def models(self) -> dict[str, nn.Module]:
        return {e.spec.name: e.model for e in self.text.encoders}

    def load_lora(self, path: str | Path, model_strength: float = 0.0, clip_strength: float = 1.0) -> Handle:
        """Patch a LoRA's text-encoder modules in at `clip_strength`; its U-Net modules have nothing to fit here and
        are skipped without a warning (the MODEL side applies them)."""
        return patch_lora(path, self.family, None, self.models(), self.patchers, model_strength, clip_strength)

    def encode_prompt(self, text: str | Mapping[str, str], *, clip_skip: int | None = None,
                      weighting: Weighting = "comfy") -> Conditioning:
        """As `Pipeline.encode_prompt` with its default sizes (a sampler rebuilds SDXL's size part for its latent)."""
        name = self.family.name
        return conditioning(name, self.text, text, clip_skip=clip_skip, weighting=weighting,
                            sizes=lambda: size_ids(name, width=1024, height=1024))


def patch_lora(path: str | Path, family: Family, unet_cfg: UNetConfig | None, models: Mapping[str, nn.Module],
               patchers: dict[str, Patcher], model_strength: float, clip_strength: float) -> Handle:
    """Patch a LoRA file into `models` ("unet" and text encoders by name), creating their `patchers` on first use.
    Modules spelled for a part that `models` lacks (a U-Net for text encoders loaded alone, or the reverse) are
    skipped silently; modules that fit nothing are warned about, and a file where nothing fits is an error."""
    lora = read_lora(path)
    adaptable = {name: [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
                 for name, model in models.items()}
    table = alias_table(family.name, unet_cfg, adaptable.pop("unet", []), adaptable)
    parts, unmatched = match(lora, table)
    absent = {m for m in unmatched if component_of(m, family.name) not in (None, *models)}
    unmatched = [m for m in unmatched if m not in absent]
    name = Path(path).name
    if not parts and not absent:
        raise CheckpointError(f"{name}: none of its {len(lora.deltas)} modules fit this {family.label} model "
                              f"(e.g. {unmatched[:3]}); it was made for another model family")
    if unmatched:
        warnings.warn(f"{name}: {len(unmatched)} of its modules fit nothing in this {family.label} model and "
                      f"are not applied (e.g. {unmatched[:3]})", stacklevel=3)
    handle = Handle(unmatched=tuple(unmatched))
    try:
        for component, deltas in parts.items():
            if component not in patchers:
                patchers[component] = Patcher(models[component])
            strength = model_strength if component == "unet" else clip_strength
            if strength == 0:  # leaves the weights as they are; skipping it saves the patch and the restore
                continue
            handle.entries += patchers[component].add(deltas, strength).entries
    except BaseException as e:  # a misfit in a later component, or Ctrl-C: undo the earlier ones
        handle.remove()
        if isinstance(e, CheckpointError):
            raise CheckpointError(f"{name}: {e}") from None
        raise
    return handle


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
         family: str | None = None, embeddings: str | Path | None = None, share: bool = True) -> Pipeline:
    """Load a single-file checkpoint or a diffusers folder; `family` (sd1, sd2, ...) is checked if given.
    `embeddings` is the folder that `embedding:name` in prompts reads textual-inversion files from.
    `"athena-tiny"` is the bundled model. `share=False` copies every weight into private memory instead of
    using the file's mapping (see `open_checkpoint`): for a file that may be rewritten in place while loaded."""
    device = device_of(device)
    if str(path) == BUNDLED and not Path(path).exists():
        path = bundled_model()
    ckpt = with_family(open_checkpoint(path, share=share), family)
    dt = dtype_of(dtype)
    unet = ckpt.load_unet(device, dt)
    vae = ckpt.load_vae(device, dt) if ckpt.vae is not None else None
    text = text_encoders(ckpt, device, dt, Path(embeddings) if embeddings is not None else None)
    return Pipeline(ckpt.family, unet, vae, text, ckpt.path, resolution=ckpt.resolution)


# the family that standalone text encoders make up, by the set of encoders (ComfyUI's choice for one clip_g file)
TEXT_FAMILIES = {frozenset({"clip_l"}): "sd1", frozenset({"clip_h"}): "sd2", frozenset({"clip_g"}): "sdxl_refiner",
                 frozenset({"clip_l", "clip_g"}): "sdxl"}


def load_text(paths: Sequence[str | Path], *, device: torch.device | str = "cpu",
              dtype: torch.dtype | str = torch.float32, embeddings: str | Path | None = None) -> TextModels:
    """Standalone text-encoder files as the text side of the family they make up, in that family's encoder order:
    clip_l (SD1.x), clip_h (SD2.x), clip_g (SDXL refiner), or clip_l and clip_g in either order (SDXL)."""
    device = device_of(device)
    found: dict[str, tuple[Path, CLIPTextModel]] = {}
    for p in map(Path, paths):
        name, model = load_text_file(p, device, dtype_of(dtype))
        if name in found:
            raise ConfigError(f"{found[name][0].name} and {p.name} are both {name} text encoders; give files of "
                              f"different encoders (e.g. clip_l and clip_g for SDXL)")
        found[name] = (p, model)
    family = TEXT_FAMILIES.get(frozenset(found))
    if family is None:
        got = ", ".join(f"{n} ({p.name})" for n, (p, _) in found.items())
        raise ConfigError(f"text encoders {got} make up no supported model; supported: clip_l (SD1.x), clip_h (SD2.x), "
                          f"clip_g (SDXL refiner), clip_l + clip_g (SDXL)")
    encoders = [TextEncoder(s, found[s.name][1], layers_dropped=layers_dropped(s.name, found[s.name][1].cfg))
                for s in FAMILY_TEXT[family]]
    return TextModels(FAMILIES[family], PromptEncoder(encoders, Path(embeddings) if embeddings is not None else None),
                      Path(paths[0]))


def load_vae(path: str | Path, *, device: torch.device | str = "cpu",
             dtype: torch.dtype | str = torch.float32) -> tuple[AutoencoderKL, Family]:
    """A standalone VAE file (or a checkpoint's VAE) and the family it belongs to (from its metadata; SD1.x when
    the file does not say, since the latent scale cannot be read from the weights)."""
    device = device_of(device)
    ckpt = open_checkpoint(path)
    return ckpt.load_vae(device, dtype_of(dtype)), ckpt.family
