"""Athena: a diffusion content-creation pipeline. Public API: `load`, `generate`, `GenerateRequest`, `Pipeline`, errors."""

from athena.errors import AthenaError, Cancelled, CheckpointError, ConfigError
from athena.pipelines.generate import GenerateRequest, Hires, generate, generate_request
from athena.pipelines.pipeline import Pipeline, load

__all__ = [
           "AthenaError",
           "Cancelled",
           "CheckpointError",
           "ConfigError",
           "GenerateRequest",
           "Hires",
           "Pipeline",
           "generate",
           "generate_request",
           "load",
]
