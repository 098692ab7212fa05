"""A Fashion-MNIST classifier, trained here, that the benchmarks use to judge generated items.

It gives class predictions (the class accuracy of class-conditional samples, the item class of the bundled model's
images) and a 256-d feature space for a Fréchet distance. Shift augmentation makes it robust to where an item sits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from athena.checkpoints.io import open_weights
from athena.checkpoints.safetensors import save_file
from athena.training.data import fashion_mnist


class FashionClassifier(nn.Module):
    """(B, 1, 28, 28) in [0, 1] -> logits (B, 10); `features` gives the 256-d layer before them."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32),
            nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64),
            nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(64 * 7 * 7, 256)
        self.head = nn.Linear(256, 10)

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.dropout(self.features(x), 0.3, self.training))


def shifted(x: Tensor, g: torch.Generator, pixels: int = 2) -> Tensor:
    """Each image moved by up to `pixels` in x and y (zero fill)."""
    padded = F.pad(x, (pixels,) * 4)
    d = torch.randint(0, 2 * pixels + 1, (len(x), 2), generator=g)
    return torch.stack([p[:, dy:dy + x.shape[-2], dx:dx + x.shape[-1]] for p, (dy, dx) in zip(padded, d.tolist())])


def train_classifier(data_dir: str | Path | None = None, *, epochs: int = 2, seed: int = 0, log: bool = True) -> FashionClassifier:
    images, labels = fashion_mnist("train", data_dir)
    x, y = images[:, None].float() / 255, labels
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(len(x) // 128):
            idx = order[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(model(shifted(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
        if log:
            print(f"classifier epoch {epoch + 1}/{epochs}: loss {float(loss):.3f}", flush=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: FashionClassifier, data_dir: str | Path | None = None) -> float:
    images, labels = fashion_mnist("test", data_dir)
    pred = torch.cat([model(images[i:i + 1000, None].float() / 255).argmax(1) for i in range(0, len(images), 1000)])
    return float((pred == labels).float().mean())


def load_or_train(path: Path, data_dir: str | Path | None = None) -> FashionClassifier:
    """The classifier cached at `path` (safetensors), trained first if it is not there yet."""
    model = FashionClassifier()
    if path.is_file():
        w = open_weights(path)
        model.load_state_dict({k: w.view(k).clone() for k in w})
        return model.eval()
    model = train_classifier(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (N, D): |mu_a - mu_b|^2 +
    tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with the matrix square root from scipy as FID computes it."""
    import numpy as np
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    s_a, s_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
