"""Gaussian-mixture data whose exact denoiser E[x0 | x0 + sigma n = x] is known in closed form."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Mixture:
    means: Tensor  # (K, D)
    stds: Tensor  # (K,)
    weights: Tensor  # (K,), sums to 1

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.stds[k, None] * torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64).to(self.means.dtype)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The posterior mean of x0 given x (B, D) at noise level sigma (B,)."""
        var = self.stds[None] ** 2 + sigma[:, None].to(x.dtype) ** 2  # (B, K)
        d = x.shape[1]
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # (B, K)
        logp = self.weights.log()[None] - 0.5 * sq / var - 0.5 * d * var.log()
        w = logp.softmax(dim=1)  # (B, K)
        shrink = self.stds[None] ** 2 / var  # (B, K)
        per = self.means[None] + shrink[..., None] * (x[:, None, :] - self.means[None])  # (B, K, D)
        return (w[..., None] * per).sum(1)


def mixture(dtype: torch.dtype = torch.float32) -> Mixture:
    """Three 2-D clusters of different widths: far from Gaussian, so samplers' errors show."""
    return Mixture(torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], dtype=dtype),
                   torch.tensor([0.3, 0.5, 0.2], dtype=dtype), torch.tensor([0.5, 0.3, 0.2], dtype=dtype))
