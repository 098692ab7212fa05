"""Checkpoint merging, streamed tensor by tensor so that RAM stays near one tensor, not one model.

- weighted sum: `A * (1 - alpha) + B * alpha` (alpha 0 gives A, alpha 1 gives B in A's dtype, bit for bit);
- add difference: `A + (B - C) * alpha` (B's change from C, grafted onto A; alpha 0 gives A).

Sums are taken in fp32 and stored in A's dtype. The output has A's keys and metadata, so it loads and is detected
like A; keys that B (or C) lacks, and integer tensors, are A's unchanged. Inputs are single safetensors or pickle
files; every input's tensors are read from its memory map and released as soon as they are written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from athena.checkpoints.io import Weights, open_weights
from athena.checkpoints.safetensors import Pending, save_file
from athena.errors import CheckpointError, ConfigError

META_RECIPE = "athena.merge"


def _combine(a: Weights, b: Weights, c: Weights | None, key: str, alpha: float,
             done: Callable[[], None]) -> Callable[[], Tensor]:
    def make() -> Tensor:
        ta = a.view(key)
        if c is None and alpha in (0.0, 1.0):  # exactly A or B (in A's dtype), whatever they hold
            out = (ta if alpha == 0.0 else b.view(key)).to(ta.dtype, copy=True)
        elif c is None:
            out = ta.float() * (1 - alpha) + b.view(key).float() * alpha
        else:
            out = ta.float() + (b.view(key).float() - c.view(key).float()) * alpha
        out = out.to(ta.dtype)
        for w in (a, b, c):
            if w is not None:
                w.release(key)
        done()
        return out
    return make


def _copied(w: Weights, key: str) -> Callable[[], Tensor]:
    def make() -> Tensor:
        return w.get(key)  # a copy, with the mapped pages released
    return make


def merge(a: str | Path, b: str | Path, out: str | Path, *, alpha: float,
          difference: str | Path | None = None,
          progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write the merge of `a` and `b` (or `a + (b - difference) * alpha`) to `out`; returns counts of merged keys and
    of keys copied from A. `progress(done, total)` is called after each merged tensor."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha {alpha}: use a value in [0, 1] (0 keeps A, 1 takes B)")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{out.name}: merges are written as .safetensors; name the output *.safetensors")
    paths = [Path(p) for p in (a, b, difference) if p is not None]
    if out.resolve() in {p.resolve() for p in paths}:
        raise ConfigError(f"{out.name} is also an input; write the merge to a new file")
    wa, wb = open_weights(a), open_weights(b)
    wc = open_weights(difference) if difference is not None else None
    try:
        plan: dict[str, Tensor | Pending] = {}
        merged = copied = 0
        count = [0]

        def done() -> None:
            count[0] += 1
            if progress is not None:
                progress(count[0], merged)
        for key in wa:
            info = wa[key]
            others = [w for w in (wb, wc) if w is not None]
            if not info.dtype.is_floating_point or not all(key in w for w in others):
                plan[key] = Pending(info.dtype, info.shape, _copied(wa, key))
                copied += 1
                continue
            for w, name in zip(others, (Path(b).name, Path(difference).name if difference else "")):
                if w[key].shape != info.shape:
                    raise CheckpointError(f"'{key}' is {tuple(info.shape)} in {Path(a).name} but {tuple(w[key].shape)} in "
                                          f"{name}; only checkpoints of the same architecture can be merged")
            plan[key] = Pending(info.dtype, info.shape, _combine(wa, wb, wc, key, alpha, done))
            merged += 1
        if merged == 0:
            raise CheckpointError(f"{Path(a).name} and {Path(b).name} share no tensors; they are not the same kind of model")
        recipe = {"a": Path(a).name, "b": Path(b).name, "alpha": alpha,
                  "mode": "add_difference" if difference is not None else "weighted_sum"}
        if difference is not None:
            recipe["c"] = Path(difference).name
        save_file(plan, out, metadata={**wa.metadata, META_RECIPE: json.dumps(recipe)})
    finally:
        for opened in (wa, wb, wc):
            if opened is not None:
                opened.close()
    return {"merged": merged, "copied": copied}

