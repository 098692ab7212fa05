"""Athena: a diffusion content-creation pipeline. Public API: `load`, `Pipeline` and the errors."""

from athena.errors import AthenaError, CheckpointError, ConfigError
from athena.pipelines.pipeline import Pipeline, load

__all__ = ["load", "Pipeline", "AthenaError", "CheckpointError", "ConfigError"]
