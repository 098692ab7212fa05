"""What `athena train` trains: each task builds its models and gives a loss, a sample grid and an exported file.

- `ddpm`: a pixel-space U-Net, unconditional or class-conditional (the label as SDM's `y` vector).
- `vae`: the SD KL-autoencoder at small width; the export folds in the latent scale SD1 files assume.
- `t2i`: the SD1.x U-Net and a CLIP-L-architecture text encoder, trained jointly on a frozen VAE's latents;
  the export is an ordinary SD1.x single file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.checkpoints.build import ddpm_buffers, text_config
from athena.checkpoints.detect import (
    FAMILIES,
    META_FAMILY,
    META_RESOLUTION,
    META_UNET,
    META_VAE,
    UNET_PREFIX,
    VAE_PREFIX,
)
from athena.checkpoints.io import open_weights, strip_prefix
from athena.checkpoints.load import load_module, open_checkpoint
from athena.checkpoints.safetensors import save_file
from athena.checkpoints.text import META_TEXT
from athena.diffusion.denoisers import (
    ModelSampling,
    discrete_sampling,
    flow_sampling,
)
from athena.diffusion.progress import Step
from athena.errors import ConfigError
from athena.models.clip import CLIPTextModel
from athena.models.unet import UNet, UNetConfig
from athena.models.vae import SD_VAE, AutoencoderKL
from athena.pipelines.conditioning import Conditioning
from athena.pipelines.sample import sample_latent
from athena.text import clip_tokenizer
from athena.training.config import TrainConfig, from_mapping
from athena.training.data import Batch, Dataset, FashionColors

META_TRAIN = "athena.train_config"
SD1_LATENT_SCALE = FAMILIES["sd1"].latent_scale


class Task(Protocol):
    modules: dict[str, nn.Module]  # what is trained, by name (the checkpoint's keys)

    def loss(self, batch: Batch, g: torch.Generator) -> Tensor: ...
    def samples(self) -> Tensor: ...  # a grid's images (N, 3, H, W) in [-1, 1]
    def export(self, path: Path) -> dict[str, float]: ...  # writes the model file; returns figures to report


def trainable(task: Task) -> list[nn.Parameter]:
    return [p for m in task.modules.values() for p in m.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- diffusion objective


def sampling_for(prediction: str) -> ModelSampling:
    return flow_sampling() if prediction == "flow" else discrete_sampling(prediction)  # type: ignore[arg-type]


def diffusion_loss(ms: ModelSampling, net: Any, x0: Tensor, cond: Any, g: torch.Generator,
                   min_snr_gamma: float | None) -> Tensor:
    """The denoiser wrapper's loss at a uniformly drawn training timestep; min-SNR-gamma weighting optional.

    Min-SNR weights the x0-space error by min(SNR, gamma); the wrapper's loss is in the network's own target
    space, whose error is the x0 error divided by c_out, hence the c_out^2 factor (1/SNR for eps, 1/(SNR+1) for v).
    """
    t = torch.randint(0, len(ms.sigmas), (x0.shape[0],), generator=g)
    sigma = ms.sigmas[t].to(x0.device)
    noise = torch.randn(x0.shape, generator=g).to(x0.device)
    per_sample = ms.loss(net, x0, noise, sigma, cond)
    if min_snr_gamma is not None:
        snr = ((1 - sigma) / sigma) ** 2 if ms.prediction == "flow" else sigma ** -2
        _, c_out, _ = ms.scalings(sigma)
        per_sample = per_sample * snr.clamp(max=min_snr_gamma) * c_out ** 2
    return per_sample.mean()


def unet_config(cfg: TrainConfig, channels: int, context_dim: int, adm: int | None) -> UNetConfig:
    return UNetConfig(in_channels=channels, out_channels=channels, model_channels=cfg.model_channels,
                      channel_mult=cfg.channel_mult, num_res_blocks=cfg.num_res_blocks, transformer_depth=cfg.attention,
                      context_dim=context_dim, adm_in_channels=adm,
                      prediction="v" if cfg.prediction == "v" else "eps")


# --------------------------------------------------------------------------- ddpm


class PixelDDPM:
    """A U-Net on pixels; class-conditional through `y` = one-hot label (zeros = unconditional)."""

    context_dim = 32

    def __init__(self, cfg: TrainConfig, unet: UNet, shape: tuple[int, ...], device: torch.device):
        self.cfg, self.unet, self.shape, self.device = cfg, unet, shape, device
        self.classes = unet.cfg.adm_in_channels or 0
        self.ms = sampling_for(cfg.prediction)
        self.modules: dict[str, nn.Module] = {"unet": self.unet}

    @classmethod
    def build(cls, cfg: TrainConfig, data: Dataset, device: torch.device) -> PixelDDPM:
        probe = data.batch([0])
        labels = getattr(data, "labels", None)
        classes = int(labels.max()) + 1 if cfg.class_conditional and labels is not None else 0
        shape = tuple(probe.images.shape[1:])
        return cls(cfg, UNet(unet_config(cfg, shape[0], cls.context_dim, classes or None), device=device), shape, device)

    @classmethod
    def from_file(cls, path: str | Path, device: torch.device | str = "cpu") -> PixelDDPM:
        """A trained pixel model (`athena train --task ddpm`'s model.safetensors), ready to sample."""
        w = open_weights(path)
        if META_TRAIN not in w.metadata or META_UNET not in w.metadata:
            raise ConfigError(f"{path}: not a pixel DDPM written by `athena train --task ddpm`")
        cfg = from_mapping(json.loads(w.metadata[META_TRAIN]))
        ucfg = UNetConfig.from_dict(json.loads(w.metadata[META_UNET]))
        unet = load_module(UNet(ucfg, device="meta"), strip_prefix(w, UNET_PREFIX), name=str(path), device=device)
        size = int(w.metadata.get(META_RESOLUTION, 32))
        return cls(cfg, unet, (ucfg.in_channels, size, size), torch.device(device))

    def cond(self, labels: Tensor | None, keep: Tensor | None = None) -> Conditioning:
        n = len(labels) if labels is not None else 1
        context = torch.zeros(n, 1, self.context_dim, device=self.device)
        if not self.classes or labels is None:
            return Conditioning(context)
        y = F.one_hot(labels, self.classes).float()
        return Conditioning(context, y=(y * keep[:, None] if keep is not None else y).to(self.device))

    def net(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.unet(x, t, cond.context, cond.y).float()

    def loss(self, batch: Batch, g: torch.Generator) -> Tensor:
        keep = (torch.rand(len(batch.images), generator=g) >= self.cfg.cond_dropout).float()
        cond = self.cond(batch.labels, keep)
        return diffusion_loss(self.ms, self.net, batch.images.to(self.device), cond, g, self.cfg.min_snr_gamma)

    @torch.no_grad()
    def generate(self, labels: Tensor | None, n: int, *, seed: int, steps: int = 50, sampler: str = "euler",
                 scheduler: str = "normal", guidance: float = 1.0,
                 callback: Callable[[Step], None] | None = None) -> Tensor:
        """n images in [-1, 1] (grey images repeated to RGB), of the given classes when conditional."""
        pos = self.cond(labels) if labels is not None else self.cond(None).expand(n)
        neg = self.cond(torch.zeros(n, dtype=torch.long), torch.zeros(n)) if self.classes else self.cond(None).expand(n)
        # guidance 1 evaluates the conditional model alone
        x = sample_latent(self.unet, pos, neg, torch.zeros(n, *self.shape, device=self.device), seed=seed, steps=steps,
                          sampler=sampler, scheduler=scheduler, guidance=guidance, sampling=self.ms, callback=callback)
        return x.clamp(-1, 1).expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.clamp(-1, 1)

    def samples(self) -> Tensor:
        labels = torch.arange(self.classes).repeat_interleave(8) if self.classes else None
        return self.generate(labels, len(labels) if labels is not None else 64, seed=0)

    def export(self, path: Path) -> dict[str, float]:
        meta = {META_UNET: self.unet.cfg.to_json(), META_RESOLUTION: str(self.shape[-1]),
                META_TRAIN: json.dumps(asdict(self.cfg))}
        save_file({UNET_PREFIX + k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}, path, meta)
        return {}


# --------------------------------------------------------------------------- vae


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp(min=1e-12))


class KLAutoencoder:
    """The SD VAE (encoder, decoder, quant convs) trained on MSE plus a KL term weighted as in LDM."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device):
        self.cfg, self.device, self.data = cfg, device, data
        if cfg.vae is None:
            vcfg = replace(SD_VAE, ch=cfg.vae_ch, ch_mult=cfg.vae_ch_mult, num_res_blocks=cfg.vae_res_blocks)
            self.vae = AutoencoderKL(vcfg, device=device)
        else:  # a warm restart: go on training a saved VAE, with its own architecture
            self.vae = open_checkpoint(cfg.vae).load_vae(device).float().requires_grad_(True)
        self.modules: dict[str, nn.Module] = {"vae": self.vae}
        self.fixed = data.batch(range(min(8, len(data)))).images

    def loss(self, batch: Batch, g: torch.Generator) -> Tensor:
        x = batch.images.to(self.device)
        d = self.vae.encode(x)
        z = d.mean + d.std * torch.randn(d.mean.shape, generator=g).to(self.device)
        rec = ((self.vae.decode(z) - x) ** 2).mean()
        # LDM: kl summed over the latent, the reconstruction summed over pixels; both divided by the pixel count here
        kl = 0.5 * (d.mean ** 2 + d.std ** 2 - 1 - d.logvar).flatten(1).sum(1).mean() / x[0].numel()
        return rec + self.cfg.kl_weight * kl

    @torch.no_grad()
    def samples(self) -> Tensor:
        x = self.fixed.to(self.device)
        return torch.cat([x, self.vae.decode(self.vae.encode(x).mode()).clamp(-1, 1)])

    @torch.no_grad()
    def evaluate(self, data: Dataset, n: int = 1000, batch: int = 100) -> tuple[float, float]:
        """(mean reconstruction PSNR in dB of the posterior mean, std of those latents) over n items."""
        scores, latents = [], []
        for start in range(0, min(n, len(data)), batch):
            x = data.batch(range(start, min(start + batch, n, len(data)))).images.to(self.device)
            z = self.vae.encode(x).mode()
            latents.append(z.float().cpu())
            scores.append(psnr(self.vae.decode(z), x).cpu())
        return float(torch.cat(scores).mean()), float(torch.cat(latents).std())

    def export(self, path: Path) -> dict[str, float]:
        """Write the VAE with the latent rescaled so that SD1's scale factor brings it to unit variance: the
        mean rows of quant_conv are multiplied by c (log-variance shifted by 2 log c), post_quant_conv's input
        divided by c. Decoding is unchanged; another tool reading the file as SD1 sees unit-variance latents."""
        test = FashionColors("test", self.cfg.data_dir, seed=self.cfg.seed, size=self.cfg.resolution, limit=self.cfg.limit) \
            if self.cfg.dataset == "fashion-colors" else self.data
        _, std = self.evaluate(self.data)
        c = 1.0 / (SD1_LATENT_SCALE * std)
        fold_latent_scale(self.vae, c)
        score, new_std = self.evaluate(test)
        meta = {META_VAE: json.dumps(asdict(self.vae.cfg)), META_RESOLUTION: str(self.cfg.resolution),
                META_TRAIN: json.dumps(asdict(self.cfg)), "athena.psnr": f"{score:.3f}"}
        save_file({k: v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()}, path, meta)
        return {"psnr_db": score, "latent_std_scaled": new_std * SD1_LATENT_SCALE}


@torch.no_grad()
def fold_latent_scale(vae: AutoencoderKL, c: float) -> None:
    if not vae.cfg.use_quant_conv:
        raise ConfigError("folding a latent scale needs the VAE's quant convs")
    z = vae.cfg.z_channels
    q, pq = vae.quant_conv, vae.post_quant_conv
    assert q.bias is not None
    q.weight[:z] *= c
    q.bias[:z] *= c
    q.bias[z:] += 2 * math.log(c)
    pq.weight /= c


# --------------------------------------------------------------------------- t2i


class TextToImage:
    """SD1.x latent diffusion from scratch: U-Net + CLIP text encoder on a frozen VAE's (cached) latents."""

    def __init__(self, cfg: TrainConfig, data: Dataset, device: torch.device):
        if cfg.vae is None:
            raise ConfigError("t2i needs an autoencoder: pass --vae with the model.safetensors of an "
                              "`athena train --task vae` run")
        if cfg.prediction == "flow":
            raise ConfigError("t2i writes an SD1.x file, whose U-Net predicts eps or v; use --prediction eps or v")
        self.cfg, self.device, self.data = cfg, device, data
        self.vae = open_checkpoint(cfg.vae).load_vae(device)
        self.text = CLIPTextModel(text_config("clip_l", cfg.text_width, cfg.text_layers), device=device)
        self.unet = UNet(unet_config(cfg, self.vae.cfg.z_channels, cfg.text_width, None), device=device)
        self.modules: dict[str, nn.Module] = {"unet": self.unet, "text": self.text}
        self.ms = sampling_for(cfg.prediction)
        self.tokenizer = clip_tokenizer()
        self.latents: tuple[Tensor, Tensor] | None = None  # (mean, std) per item, when cached
        self.vae_source = Path(cfg.vae)  # the file the cached latents depend on

    def ids(self, captions: Sequence[str]) -> Tensor:
        """SD1's CLIP input: BOS, tokens, EOS, padded with EOS to 77."""
        n = self.text.cfg.max_positions
        rows = [[self.tokenizer.bos] + self.tokenizer.tokenize(c)[: n - 2] + [self.tokenizer.eos] for c in captions]
        return torch.tensor([r + [self.tokenizer.eos] * (n - len(r)) for r in rows], device=self.device)

    def context(self, captions: Sequence[str]) -> Tensor:
        return self.text(self.ids(captions), pooled=False).hidden

    @torch.no_grad()
    def cache_latents(self, path: Path, report: Any = None, chunk: int = 250) -> None:
        """Encode the whole dataset once (posterior mean and std); reused while the VAE file is unchanged."""
        vae_file = self.vae_source
        key = {"vae": str(vae_file.resolve()), "vae_size": vae_file.stat().st_size, "vae_mtime": vae_file.stat().st_mtime,
               "dataset": self.cfg.dataset, "limit": self.cfg.limit, "seed": self.cfg.seed, "n": len(self.data),
               "resolution": self.cfg.resolution}
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached.get("key") == json.dumps(key):
                self.latents = (cached["mean"], cached["std"])
                return
        means, stds = [], []
        for start in range(0, len(self.data), chunk):
            x = self.data.batch(range(start, min(start + chunk, len(self.data)))).images.to(self.device)
            d = self.vae.encode(x)
            means.append(d.mean.cpu())
            stds.append(d.std.cpu())
            if report is not None:
                report(min(start + chunk, len(self.data)), len(self.data))
        self.latents = (torch.cat(means), torch.cat(stds))
        torch.save({"key": json.dumps(key), "mean": self.latents[0], "std": self.latents[1]}, path)

    def loss(self, batch: Batch, g: torch.Generator) -> Tensor:
        assert batch.captions is not None
        if self.latents is not None and batch.indices is not None:
            mean, std = (t[batch.indices] for t in self.latents)
            z = mean + std * torch.randn(mean.shape, generator=g)
        else:
            with torch.no_grad():
                d = self.vae.encode(batch.images.to(self.device))
            z = d.mean.cpu() + d.std.cpu() * torch.randn(d.mean.shape, generator=g)
        drop = torch.rand(len(batch.captions), generator=g) < self.cfg.cond_dropout
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist())]
        cond = Conditioning(self.context(captions))
        net = lambda x, t, c: self.unet(x, t, c.context).float()
        return diffusion_loss(self.ms, net, z.to(self.device) * SD1_LATENT_SCALE, cond, g, self.cfg.min_snr_gamma)

    @torch.no_grad()
    def generate(self, captions: Sequence[str], *, seed: int, steps: int = 20, guidance: float = 7.0) -> Tensor:
        s = self.cfg.resolution // self.vae.cfg.downscale
        pos, neg = Conditioning(self.context(captions)), Conditioning(self.context([""] * len(captions)))
        z = sample_latent(self.unet, pos, neg, torch.zeros(len(captions), self.vae.cfg.z_channels, s, s, device=self.device),
                          seed=seed, steps=steps, guidance=guidance, sampling=self.ms)
        return self.vae.decode(z / SD1_LATENT_SCALE).clamp(-1, 1)

    def samples(self) -> Tensor:
        data = self.data if isinstance(self.data, FashionColors) else None
        n = min(16, len(self.data))  # a LoRA's folder may hold fewer images than a grid
        captions = [data.caption(i) for i in range(n)] if data else [c or "" for c in
                                                                     (self.data.batch(range(n)).captions or [])]
        return self.generate(captions, seed=0)

    def export(self, path: Path) -> dict[str, float]:
        """An SD1.x single file: U-Net, VAE, CLIP-L-layout text encoder, the DDPM buffers, configs as metadata."""
        fam = FAMILIES["sd1"]
        prefix = dict(fam.text_encoders)["clip_l"]
        tensors: dict[str, Tensor] = {}
        tensors.update({UNET_PREFIX + k: v for k, v in self.unet.state_dict().items()})
        tensors.update({VAE_PREFIX + k: v for k, v in self.vae.state_dict().items()})
        tensors.update({prefix + k: v for k, v in self.text.state_dict().items()})
        half = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in tensors.items()}
        half[prefix + "text_model.embeddings.position_ids"] = torch.arange(self.text.cfg.max_positions)[None]
        half.update(ddpm_buffers())
        meta = {META_FAMILY: "sd1", META_UNET: self.unet.cfg.to_json(), META_VAE: json.dumps(asdict(self.vae.cfg)),
                META_TEXT: json.dumps({"clip_l": asdict(self.text.cfg)}), META_RESOLUTION: str(self.cfg.resolution),
                META_TRAIN: json.dumps(asdict(self.cfg))}
        save_file(half, path, meta)
        return {}
