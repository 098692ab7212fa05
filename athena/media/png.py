"""PNG files with their generation parameters: A1111's `parameters` text chunk (read by A1111, Civitai and most
image browsers) and Athena's own JSON request, from which `athena generate --from-png` replays the image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from athena.errors import ConfigError

PARAMETERS, REQUEST = "parameters", "athena"


def save_png(img: Image.Image, path: Path, *, parameters: str, request: dict[str, Any]) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS, parameters)
    info.add_text(REQUEST, json.dumps(request, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, pnginfo=info)
    return path


def read_request(path: str | Path) -> dict[str, Any]:
    """The Athena request embedded in a PNG that Athena wrote."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{str(p)!r} does not exist; pass a PNG written by `athena generate`")
    try:
        with Image.open(p) as img:
            text = img.info.get(REQUEST) if img.format == "PNG" else None
    except OSError as e:
        raise ConfigError(f"{p.name}: not a readable image ({e})") from None
    if text is None:
        raise ConfigError(f"{p.name} carries no Athena request (no '{REQUEST}' text chunk); "
                          f"only PNGs written by `athena generate` can be replayed")
    data: dict[str, Any] = json.loads(text)
    return data


def read_parameters(path: str | Path) -> str | None:
    """A1111's `parameters` text, if present."""
    with Image.open(path) as img:
        value = img.info.get(PARAMETERS)
    return str(value) if value is not None else None
