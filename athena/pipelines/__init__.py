"""Pipelines compose models, diffusion, checkpoints and text into usable objects."""
