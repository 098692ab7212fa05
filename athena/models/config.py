"""Parsing model configs (frozen dataclasses) from JSON-like dicts, strictly (STYLE rule 19)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from athena.errors import ConfigError

C = TypeVar("C")


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Build the dataclass `cls` from `d`, rejecting unknown keys by name; JSON lists become tuples."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
