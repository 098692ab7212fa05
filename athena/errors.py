"""Athena's error hierarchy: every error raised at a boundary says what, the value, and the fix."""


class AthenaError(Exception):
    """Base class of every error Athena raises on purpose."""


class ConfigError(AthenaError, ValueError):
    """A configuration (model preset, CLI option, request field) is invalid."""


class CheckpointError(AthenaError):
    """A weights file or folder cannot be read, detected or loaded."""


class Cancelled(AthenaError):
    """A job was cancelled (a `CancelToken`, Ctrl-C, or an interrupt); its partial work is discarded."""
