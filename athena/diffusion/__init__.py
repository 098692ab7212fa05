"""Diffusion maths: parameterisations, schedules, samplers and guidance (functions, no nn state)."""
