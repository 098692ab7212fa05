"""LoRA-family weight deltas and their application by patching weights, with an exact restore.

Deltas (each `weight(shape)` returns the full fp32 change of one parameter, scale included):
- `LowRank`: LoRA and LoCon, `up @ down * alpha / rank`, with LoCon's optional Tucker core `mid`;
- `Hadamard`: LyCORIS LoHa, `(w1a @ w1b) * (w2a @ w2b) * alpha / rank`, optionally with CP cores t1, t2;
- `Kronecker`: LyCORIS LoKr, `kron(w1, w2)`, each factor full or low rank, scaled by alpha / rank only when a
  factor is low rank;
- `Full`: a stored difference (`diff`, `diff_b`).

Why patching and not wrapping at forward time: a patched model runs at the base model's speed on every step, and
its numerics are those of ComfyUI and A1111, which merge too. The price is keeping the originals of the touched
parameters (only those, on the CPU) so that removal is bit-exact in every dtype. A `Patcher` owns one model's
originals and its active deltas (use one per model); a touched parameter is always recomputed as original + the
active deltas in the order they were added (in fp32, then cast), so adapters stack, can come off in any order,
and the last removal restores the original bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from athena.errors import CheckpointError


class Delta(Protocol):
    def weight(self, shape: torch.Size, device: torch.device) -> Tensor: ...


def _scale(alpha: float | None, rank: int | None) -> float:
    return 1.0 if alpha is None or rank is None else alpha / rank


def _f(t: Tensor, device: torch.device) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class LowRank:
    up: Tensor  # (out, r) or (out, r, 1, 1)
    down: Tensor  # (r, in) or (r, in, kh, kw); (r, in, 1, 1) when `mid` holds the kernel
    alpha: float | None = None
    mid: Tensor | None = None  # (r, r, kh, kw)

    def weight(self, shape: torch.Size, device: torch.device) -> Tensor:
        up, down = _f(self.up, device).flatten(1), _f(self.down, device).flatten(1)
        if self.mid is not None:
            w = torch.einsum("oa,abkl,bi->oikl", up, _f(self.mid, device), down)
        else:
            w = up @ down
        return w.reshape(shape) * _scale(self.alpha, down.shape[0])


def _cp(t: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """A CP/Tucker-decomposed kernel: core t (r, r, kh, kw), output factor a (out, r), input factor b (r, in)."""
    return torch.einsum("ijkl,jr,ip->prkl", t, b, a)


@dataclass(frozen=True)
class Hadamard:
    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    alpha: float | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None

    def weight(self, shape: torch.Size, device: torch.device) -> Tensor:
        w1a, w1b, w2a, w2b = (_f(t, device) for t in (self.w1a, self.w1b, self.w2a, self.w2b))
        if self.t1 is not None and self.t2 is not None:
            w = _cp(_f(self.t1, device), w1a, w1b) * _cp(_f(self.t2, device), w2a, w2b)
        else:
            w = (w1a @ w1b.flatten(1)) * (w2a @ w2b.flatten(1))
        return w.reshape(shape) * _scale(self.alpha, self.w1b.shape[0])


@dataclass(frozen=True)
class Kronecker:
    w1: Tensor | None = None
    w1a: Tensor | None = None
    w1b: Tensor | None = None
    w2: Tensor | None = None
    w2a: Tensor | None = None
    w2b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None

    def weight(self, shape: torch.Size, device: torch.device) -> Tensor:
        w1 = _f(self.w1, device) if self.w1 is not None else _f(self.w1a, device) @ _f(self.w1b, device)  # type: ignore[arg-type]
        if self.w2 is not None:
            w2 = _f(self.w2, device)
        elif self.t2 is not None:
            w2 = _cp(_f(self.t2, device), _f(self.w2a, device), _f(self.w2b, device))  # type: ignore[arg-type]
        else:
            w2 = _f(self.w2a, device) @ _f(self.w2b, device)  # type: ignore[arg-type]
            if len(shape) == 4:
                w2 = w2.reshape(w2.shape[0], shape[1] // w1.shape[1], *shape[2:])
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        rank = self.w2b.shape[0] if self.w2b is not None else self.w1b.shape[0] if self.w1b is not None else None
        return torch.kron(w1, w2).reshape(shape) * _scale(self.alpha, rank)


@dataclass(frozen=True)
class Full:
    diff: Tensor

    def weight(self, shape: torch.Size, device: torch.device) -> Tensor:
        return _f(self.diff, device).reshape(shape)


@dataclass
class Handle:
    """What `Patcher.add` returns: `remove()` takes the adapter off again (idempotent)."""

    entries: list[tuple[Patcher, int]] = field(default_factory=list)
    unmatched: tuple[str, ...] = ()  # the file's modules that fit nothing in the model

    def remove(self) -> None:
        for patcher, token in self.entries:
            patcher.remove(token)
        self.entries = []


class Patcher:
    """The adapters patched into one model's parameters, and the originals of the parameters they touch."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = dict(model.named_parameters())
        self.originals: dict[str, Tensor] = {}
        self.active: dict[int, tuple[Mapping[str, Delta], float]] = {}
        self.next_token = 0

    def add(self, deltas: Mapping[str, Delta], strength: float = 1.0) -> Handle:
        """Patch `deltas` (parameter name -> delta) in at `strength`; the delta shapes are checked first."""
        for name, d in deltas.items():
            if name not in self.params:
                raise CheckpointError(f"adapter targets '{name}', which {type(self.model).__name__} does not have")
            p = self.params[name]
            if isinstance(d, Full) and d.diff.numel() != p.numel():
                raise CheckpointError(f"adapter delta for '{name}' has {d.diff.numel()} values; the weight has {p.numel()}")
        token, self.next_token = self.next_token, self.next_token + 1
        self.active[token] = (dict(deltas), strength)
        try:
            self._refresh(deltas)
        except BaseException as e:  # a misfit factor, or Ctrl-C: leave the weights as they were
            self.remove(token)
            if isinstance(e, RuntimeError):
                raise CheckpointError(f"an adapter's shapes do not fit the model: {e}") from None
            raise
        return Handle([(self, token)])

    def remove(self, token: int) -> None:
        if token in self.active:
            deltas, _ = self.active.pop(token)
            self._refresh(deltas)

    @torch.no_grad()
    def _refresh(self, names: Mapping[str, Delta]) -> None:
        for name in names:
            p = self.params[name]
            if name not in self.originals:
                self.originals[name] = p.detach().to("cpu", copy=True)
            active = [(d[name], s) for d, s in self.active.values() if name in d]
            if not active:
                p.copy_(self.originals.pop(name))
                continue
            w = self.originals[name].to(p.device, torch.float32, copy=True)
            for delta, strength in active:
                w.add_(delta.weight(p.shape, p.device), alpha=strength)
            p.copy_(w)

