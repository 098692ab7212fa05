"""A small Fashion-MNIST stand-in in the real IDX format, so the training tests need no installed dataset."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from athena.training.data import FASHION_MNIST_DIR


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 grey items: class k is a filled box whose size grows with k, with a little noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28))
    for i, k in enumerate(labels):
        half = 3 + k
        images[i, 14 - half:14 + half, 14 - half // 2:14 + half // 2] = 200
    images += rng.normal(0, 10, images.shape)
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    for prefix, n, seed in (("train", 96, 0), ("t10k", 32, 1)):
        images, labels = shapes(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def real_fashion_dir() -> Path:
    """Debian's dataset-fashion-mnist, which `.ci/run` installs."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST_DIR
