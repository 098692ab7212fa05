"""LoRA and textual-inversion training on a frozen SD1.x base: small trainable modules, `inject` functions that
return them, and exports in the formats ComfyUI, A1111 and diffusers read.

Both tasks are the `t2i` task with the base model's networks frozen and different trainable parameters, so they
share its latents, loss, sampling and the one training loop (STYLE rule 20).
- `lora`: `LoRALayer`s wrap the targeted Linear/Conv2d layers (y = base(x) + up(down(x)) * alpha / rank, `up`
  starting at zero so step 0 is the base model). Exported as a kohya file: `lora_unet_<diffusers name>`,
  `lora_te_<HF CLIP name>`, `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
- `ti`: the vectors of a new token (`--ti-token`, e.g. `<teal>`) fed to the frozen text encoder as extra embedding
  rows. Exported in A1111's safetensors layout (`emb_params`), which `embedding:NAME` in prompts reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.checkpoints.keymaps import sd_unet
from athena.checkpoints.safetensors import save_file
from athena.errors import ConfigError
from athena.pipelines.pipeline import load
from athena.training.config import TrainConfig
from athena.training.data import Dataset
from athena.training.tasks import META_TRAIN, TextToImage, sampling_for

# --lora-targets groups -> module name suffixes (U-Net under LDM names, CLIP under HF names)
UNET_TARGETS = {
    "attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "ff": ("ff.net.0.proj", "ff.net.2"),
    "proj": ("proj_in", "proj_out"),
    "conv": ("in_layers.2", "out_layers.3", "skip_connection", "op", "conv"),
}
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


class LoRAFactors(nn.Module):
    """The trainable part of one LoRA layer in kohya's shapes: `down` (r, in[, kh, kw]) and `up` (out, r[, 1, 1]),
    `up` starting at zero."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int):
        super().__init__()
        w = base.weight
        self.down = nn.Parameter(torch.empty(rank, *w.shape[1:], device=w.device))
        self.up = nn.Parameter(torch.zeros(w.shape[0], rank, *([1, 1] if w.ndim == 4 else []), device=w.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))


class LoRALayer(nn.Module):
    def __init__(self, base: nn.Linear | nn.Conv2d, factors: LoRAFactors, scale: float):
        super().__init__()
        self.base, self.factors, self.scale = base, factors, scale

    def forward(self, x: Tensor) -> Tensor:
        f, b, h = self.factors, self.base, x.float()
        if isinstance(b, nn.Conv2d):
            h = F.conv2d(F.conv2d(h, f.down, None, b.stride, b.padding, b.dilation), f.up)
        else:
            h = F.linear(F.linear(h, f.down), f.up)
        return b(x) + h.to(x.dtype) * self.scale


def inject(model: nn.Module, suffixes: Sequence[str], rank: int, alpha: float) -> dict[str, LoRAFactors]:
    """Wrap every Linear/Conv2d of `model` whose name ends in one of `suffixes`; returns {module name: factors}."""
    found = {n: m for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d)) and n.endswith(tuple(suffixes))}
    out = {}
    for name, base in found.items():
        parent, _, child = name.rpartition(".")
        factors = LoRAFactors(base, rank)
        setattr(model.get_submodule(parent) if parent else model, child, LoRALayer(base, factors, alpha / rank))
        out[name] = factors
    return out


def _flat(name: str) -> str:
    return name.replace(".", "_")


class LoRATraining(TextToImage):
    """A LoRA on a frozen SD1.x base (`--base`, default the bundled athena-tiny)."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device):
        self._base(cfg, data, device)
        groups = [g for g in cfg.lora_targets.split(",") if g]
        unknown = sorted(set(groups) - set(UNET_TARGETS))
        if unknown or not groups:
            raise ConfigError(f"--lora-targets={cfg.lora_targets!r}: use a comma list of {sorted(UNET_TARGETS)}")
        suffixes = [s for g in groups for s in UNET_TARGETS[g]]
        to_diffusers = {ldm.removesuffix(".weight"): d.removesuffix(".weight")
                        for d, ldm in sd_unet.diffusers_to_ldm(self.unet.cfg).items() if d.endswith(".weight")}
        layers = {"lora_unet_" + _flat(to_diffusers[n]): f
                  for n, f in inject(self.unet, suffixes, cfg.lora_rank, cfg.lora_alpha).items()}
        if cfg.lora_text:
            layers.update({"lora_te_" + _flat(n): f
                           for n, f in inject(self.text, TEXT_TARGETS, cfg.lora_rank, cfg.lora_alpha).items()})
        self.layers = nn.ModuleDict(layers)
        self.modules = {"lora": self.layers}

    def _base(self, cfg: TrainConfig, data: Dataset, device: torch.device) -> None:
        pipe = load(cfg.base, device=device)
        if pipe.family.name != "sd1" or pipe.vae is None or pipe.text is None:
            raise ConfigError(f"--base {cfg.base}: adapter training needs a full SD1.x checkpoint (U-Net, VAE and "
                              f"CLIP); this is {pipe.family.label}" + ("" if pipe.vae and pipe.text else " without all three"))
        self.cfg, self.device, self.data = cfg, device, data
        self.vae, self.unet, self.text = pipe.vae, pipe.unet, pipe.text.encoders[0].model
        self.ms = sampling_for(pipe.unet.cfg.prediction)
        self.tokenizer = pipe.text.encoders[0].get_tokenizer()
        self.latents = None
        self.vae_source = pipe.path or Path(cfg.base)

    def export(self, path: Path) -> dict[str, float]:
        tensors: dict[str, Tensor] = {}
        for key, f in self.layers.items():
            assert isinstance(f, LoRAFactors)
            tensors[f"{key}.lora_down.weight"] = f.down.detach().float().cpu().contiguous()
            tensors[f"{key}.lora_up.weight"] = f.up.detach().float().cpu().contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(self.cfg.lora_alpha))
        meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(self.cfg.lora_rank),
                "ss_network_alpha": str(self.cfg.lora_alpha), "ss_base_model_version": "sd_v1",
                META_TRAIN: json.dumps(asdict(self.cfg))}
        save_file(tensors, path, meta)
        return {"modules": float(len(self.layers))}


class TextualInversion(LoRATraining):
    """The vectors of a new token on a frozen SD1.x base; captions name it as `--ti-token`."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device):
        self._base(cfg, data, device)
        if not cfg.ti_token.strip():
            raise ConfigError("--ti-token: give the placeholder word the captions use, e.g. --ti-token='<teal>'")
        captions = getattr(data, "captions", None) or []
        if not any(cfg.ti_token in c for c in captions):
            raise ConfigError(f"--ti-token={cfg.ti_token!r} appears in none of the dataset's captions, so there would be "
                              f"nothing to learn; caption the images with it (e.g. 'a photo of {cfg.ti_token}') in a "
                              f"folder's metadata.jsonl or .txt files")
        init = self.tokenizer.tokenize(cfg.ti_init) if cfg.ti_init else []
        table = self.text.text_model.embeddings.token_embedding.weight.detach().float()
        rows = [table[init[i % len(init)]] if init else table.mean(0) for i in range(cfg.ti_vectors)]
        self.vectors = nn.Parameter(torch.stack(rows).clone())
        holder = nn.Module()
        holder.register_parameter("emb_params", self.vectors)
        self.modules = {"ti": holder}

    def ids(self, captions: Sequence[str]) -> Tensor:
        """The caption's tokens with the placeholder replaced by the new rows (ids vocab, vocab+1, ...)."""
        n, vocab, token = self.text.cfg.max_positions, self.text.cfg.vocab_size, self.cfg.ti_token
        new = list(range(vocab, vocab + len(self.vectors)))
        rows = []
        for c in captions:
            parts = c.split(token)
            ids = self.tokenizer.tokenize(parts[0])
            for part in parts[1:]:
                ids += new + self.tokenizer.tokenize(part)
            row = [self.tokenizer.bos] + ids[: n - 2] + [self.tokenizer.eos]
            rows.append(row + [self.tokenizer.eos] * (n - len(row)))
        return torch.tensor(rows, device=self.device)

    def context(self, captions: Sequence[str]) -> Tensor:
        return self.text(self.ids(captions), pooled=False, extra_embeddings=self.vectors).hidden

    def export(self, path: Path) -> dict[str, float]:
        """A1111's safetensors embedding: `emb_params` (vectors, width)."""
        save_file({"emb_params": self.vectors.detach().float().cpu().contiguous()}, path,
                  {"name": self.cfg.ti_token, META_TRAIN: json.dumps(asdict(self.cfg))})
        return {"vectors": float(len(self.vectors))}
