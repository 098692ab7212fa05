"""Sampling nodes: KSampler(Advanced), custom sampling (noise, guider, sampler, sigmas as graph values), schedulers
and the model patches that change sampling (RescaleCFG, ModelSamplingDiscrete).

Every sampler node reports progress per step with a cheap preview, which is also where cancellation stops it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from athena.diffusion import schedules
from athena.diffusion.denoisers import ModelSampling, discrete_sampling
from athena.diffusion.progress import Step
from athena.diffusion.schedules import SCHEDULERS
from athena.errors import ConfigError
from athena.graph.node import Context, Node
from athena.graph.schema import Boolean, Combo, Float, Int, Link, Output, Schema
from athena.nodes.types import Guider, Model, NoiseSource, SamplerRef
from athena.pipelines.ksampler import (
    ksampler_sigmas,
    sample_entries,
    sampler_names,
    turbo_sigmas,
)
from athena.pipelines.sample import model_sampling

SEED = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}
CFG = {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
SIGMA = {"min": 0.0, "max": 5000.0, "step": 0.01, "round": False}
LATENT = Output("LATENT")


def sampling_of(model: Model) -> ModelSampling:
    return model.sampling or model_sampling(model.pipe.unet)


def sample(ctx: Context, model: Model, positive: Any, negative: Any, latent: dict[str, Any], sigmas: torch.Tensor, *,
           sampler: str, cfg: float, seed: int, add_noise: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(output, denoised_output) LATENTs; progress and a preview after each step."""
    pipe, total = model.pipe, len(sigmas) - 1

    def report(s: Step) -> None:
        ctx.progress(s.i + 1, total, pipe.preview(s.x0) if pipe.vae is not None else None)

    samples, x0 = sample_entries(
        pipe, positive, negative, latent["samples"], sigmas, sampler=sampler, cfg=cfg, seed=seed, add_noise=add_noise,
        batch_index=latent.get("batch_index"), noise_mask=latent.get("noise_mask"), sampling=model.sampling,
        cfg_rescale=model.cfg_rescale, loras=[(u.path, u.strength) for u in model.loras], callback=report)
    out = {**latent, "samples": samples}
    return out, ({**latent, "samples": x0} if x0 is not None else out)


class KSampler(Node):
    schema = Schema("KSampler", "sampling",
                    inputs=(Link("model", "MODEL"), Int("seed", **SEED), Int("steps", 20, 1, 10000),
                            Float("cfg", **CFG), Combo("sampler_name", sampler_names()),
                            Combo("scheduler", tuple(SCHEDULERS)), Link("positive", "CONDITIONING"),
                            Link("negative", "CONDITIONING"), Link("latent_image", "LATENT"),
                            Float("denoise", 1.0, 0.0, 1.0, 0.01)),
                    outputs=(LATENT,),
                    description="Denoises the latent with the model, guided by the positive and negative conditioning.")

    @classmethod
    def run(cls, ctx: Context, model: Model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            positive: Any, negative: Any, latent_image: dict[str, Any], denoise: float = 1.0) -> tuple[Any, ...]:
        sigmas = ksampler_sigmas(sampling_of(model), sampler_name, scheduler, steps, denoise=denoise)
        return (sample(ctx, model, positive, negative, latent_image, sigmas, sampler=sampler_name, cfg=cfg,
                       seed=seed)[0],)


class KSamplerAdvanced(Node):
    schema = Schema("KSamplerAdvanced", "sampling",
                    inputs=(Link("model", "MODEL"), Combo("add_noise", ("enable", "disable")),
                            Int("noise_seed", **SEED), Int("steps", 20, 1, 10000), Float("cfg", **CFG),
                            Combo("sampler_name", sampler_names()), Combo("scheduler", tuple(SCHEDULERS)),
                            Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"),
                            Link("latent_image", "LATENT"), Int("start_at_step", 0, 0, 10000),
                            Int("end_at_step", 10000, 0, 10000),
                            Combo("return_with_leftover_noise", ("disable", "enable"))),
                    outputs=(LATENT,))

    @classmethod
    def run(cls, ctx: Context, model: Model, add_noise: str, noise_seed: int, steps: int, cfg: float,
            sampler_name: str, scheduler: str, positive: Any, negative: Any, latent_image: dict[str, Any],
            start_at_step: int, end_at_step: int, return_with_leftover_noise: str) -> tuple[Any, ...]:
        sigmas = ksampler_sigmas(sampling_of(model), sampler_name, scheduler, steps, start_step=start_at_step,
                                 last_step=end_at_step, force_full_denoise=return_with_leftover_noise == "disable")
        return (sample(ctx, model, positive, negative, latent_image, sigmas, sampler=sampler_name, cfg=cfg,
                       seed=noise_seed, add_noise=add_noise == "enable")[0],)


class SamplerCustom(Node):
    schema = Schema("SamplerCustom", "sampling/custom_sampling",
                    inputs=(Link("model", "MODEL"), Boolean("add_noise", True), Int("noise_seed", **SEED),
                            Float("cfg", **CFG), Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"),
                            Link("sampler", "SAMPLER"), Link("sigmas", "SIGMAS"), Link("latent_image", "LATENT")),
                    outputs=(Output("LATENT", "output"), Output("LATENT", "denoised_output")))

    @classmethod
    def run(cls, ctx: Context, model: Model, add_noise: bool, noise_seed: int, cfg: float, positive: Any,
            negative: Any, sampler: SamplerRef, sigmas: torch.Tensor, latent_image: dict[str, Any]) -> tuple[Any, ...]:
        return sample(ctx, model, positive, negative, latent_image, sigmas, sampler=sampler.name, cfg=cfg,
                      seed=noise_seed, add_noise=add_noise)


class SamplerCustomAdvanced(Node):
    schema = Schema("SamplerCustomAdvanced", "sampling/custom_sampling",
                    inputs=(Link("noise", "NOISE"), Link("guider", "GUIDER"), Link("sampler", "SAMPLER"),
                            Link("sigmas", "SIGMAS"), Link("latent_image", "LATENT")),
                    outputs=(Output("LATENT", "output"), Output("LATENT", "denoised_output")))

    @classmethod
    def run(cls, ctx: Context, noise: NoiseSource, guider: Guider, sampler: SamplerRef, sigmas: torch.Tensor,
            latent_image: dict[str, Any]) -> tuple[Any, ...]:
        return sample(ctx, guider.model, guider.positive, guider.negative, latent_image, sigmas, sampler=sampler.name,
                      cfg=guider.cfg, seed=noise.seed, add_noise=noise.add)


class KSamplerSelect(Node):
    schema = Schema("KSamplerSelect", "sampling/custom_sampling/samplers",
                    inputs=(Combo("sampler_name", sampler_names()),), outputs=(Output("SAMPLER"),))

    @classmethod
    def run(cls, sampler_name: str) -> tuple[Any, ...]:
        return (SamplerRef(sampler_name),)


class BasicScheduler(Node):
    schema = Schema("BasicScheduler", "sampling/custom_sampling/schedulers",
                    inputs=(Link("model", "MODEL"), Combo("scheduler", tuple(SCHEDULERS)), Int("steps", 20, 1, 10000),
                            Float("denoise", 1.0, 0.0, 1.0, 0.01)),
                    outputs=(Output("SIGMAS"),))

    @classmethod
    def run(cls, model: Model, scheduler: str, steps: int, denoise: float) -> tuple[Any, ...]:
        return (ksampler_sigmas(sampling_of(model), "euler", scheduler, steps, denoise=denoise),)


class KarrasScheduler(Node):
    schema = Schema("KarrasScheduler", "sampling/custom_sampling/schedulers",
                    inputs=(Int("steps", 20, 1, 10000), Float("sigma_max", 14.614642, **SIGMA),
                            Float("sigma_min", 0.0291675, **SIGMA), Float("rho", 7.0, 0.0, 100.0, 0.01, round=False)),
                    outputs=(Output("SIGMAS"),))

    @classmethod
    def run(cls, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any, ...]:
        return (schedules.karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    schema = Schema("ExponentialScheduler", "sampling/custom_sampling/schedulers",
                    inputs=(Int("steps", 20, 1, 10000), Float("sigma_max", 14.614642, **SIGMA),
                            Float("sigma_min", 0.0291675, **SIGMA)),
                    outputs=(Output("SIGMAS"),))

    @classmethod
    def run(cls, steps: int, sigma_max: float, sigma_min: float) -> tuple[Any, ...]:
        return (schedules.exponential(steps, sigma_min, sigma_max),)


class SDTurboScheduler(Node):
    schema = Schema("SDTurboScheduler", "sampling/custom_sampling/schedulers",
                    inputs=(Link("model", "MODEL"), Int("steps", 1, 1, 10), Float("denoise", 1.0, 0.0, 1.0, 0.01)),
                    outputs=(Output("SIGMAS"),))

    @classmethod
    def run(cls, model: Model, steps: int, denoise: float) -> tuple[Any, ...]:
        return (turbo_sigmas(sampling_of(model), steps, denoise),)


class SplitSigmas(Node):
    schema = Schema("SplitSigmas", "sampling/custom_sampling/sigmas",
                    inputs=(Link("sigmas", "SIGMAS"), Int("step", 0, 0, 10000)),
                    outputs=(Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")))

    @classmethod
    def run(cls, sigmas: torch.Tensor, step: int) -> tuple[Any, ...]:
        return sigmas[:step + 1], sigmas[step:]


class RandomNoise(Node):
    schema = Schema("RandomNoise", "sampling/custom_sampling/noise", inputs=(Int("noise_seed", **SEED),),
                    outputs=(Output("NOISE"),))

    @classmethod
    def run(cls, noise_seed: int) -> tuple[Any, ...]:
        return (NoiseSource(noise_seed),)


class DisableNoise(Node):
    schema = Schema("DisableNoise", "sampling/custom_sampling/noise", outputs=(Output("NOISE"),))

    @classmethod
    def run(cls) -> tuple[Any, ...]:
        return (NoiseSource(0, add=False),)


class CFGGuider(Node):
    schema = Schema("CFGGuider", "sampling/custom_sampling/guiders",
                    inputs=(Link("model", "MODEL"), Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"),
                            Float("cfg", **CFG)),
                    outputs=(Output("GUIDER"),))

    @classmethod
    def run(cls, model: Model, positive: Any, negative: Any, cfg: float) -> tuple[Any, ...]:
        return (Guider(model, tuple(positive), tuple(negative), cfg),)


class BasicGuider(Node):
    schema = Schema("BasicGuider", "sampling/custom_sampling/guiders",
                    inputs=(Link("model", "MODEL"), Link("conditioning", "CONDITIONING")), outputs=(Output("GUIDER"),))

    @classmethod
    def run(cls, model: Model, conditioning: Any) -> tuple[Any, ...]:
        return (Guider(model, tuple(conditioning)),)


class RescaleCFG(Node):
    schema = Schema("RescaleCFG", "advanced/model",
                    inputs=(Link("model", "MODEL"), Float("multiplier", 0.7, 0.0, 1.0, 0.01)), outputs=(Output("MODEL"),))

    @classmethod
    def run(cls, model: Model, multiplier: float) -> tuple[Any, ...]:
        return (replace(model, cfg_rescale=multiplier),)


PREDICTIONS = {"eps": "eps", "v_prediction": "v", "x0": "x0"}


class ModelSamplingDiscrete(Node):
    schema = Schema("ModelSamplingDiscrete", "advanced/model",
                    inputs=(Link("model", "MODEL"), Combo("sampling", ("eps", "v_prediction", "lcm", "x0")),
                            Boolean("zsnr", False)),
                    outputs=(Output("MODEL"),))

    @classmethod
    def run(cls, model: Model, sampling: str, zsnr: bool) -> tuple[Any, ...]:
        if sampling not in PREDICTIONS:
            raise ConfigError(f"ModelSamplingDiscrete sampling={sampling!r} is not supported; use one of "
                              f"{', '.join(PREDICTIONS)}")
        return (replace(model, sampling=discrete_sampling(PREDICTIONS[sampling], zero_snr=zsnr)),)  # type: ignore[arg-type]


NODES = (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced, KSamplerSelect, BasicScheduler,
         KarrasScheduler, ExponentialScheduler, SDTurboScheduler, SplitSigmas, RandomNoise, DisableNoise, CFGGuider,
         BasicGuider, RescaleCFG, ModelSamplingDiscrete)
