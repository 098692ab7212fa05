"""Pickles load only with weights_only=True: a malicious pickle is refused and never executes."""

import os
import pickle

import pytest
import torch

import athena
from athena.checkpoints.io import load_pickle
from athena.errors import CheckpointError


class Payload:
    """Unpickling this would run `os.system` (if the loader allowed arbitrary globals)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_weights_only_pickle_loads(tmp_path):
    sd = {"a": torch.randn(3), "b": torch.arange(4)}
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "m.ckpt")  # Lightning/LDM wrapper
    out = load_pickle(tmp_path / "m.ckpt")
    assert set(out) == {"a", "b"} and torch.equal(out["a"], sd["a"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    obj = {"state_dict": {"w": torch.ones(1)}, "evil": Payload(str(marker))}
    path = tmp_path / "evil.ckpt"
    if writer == "torch_zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only=True.*safetensors"):
        athena.load(path)
    assert not marker.exists()  # the payload never executed


def test_truncated_pickle_is_a_clear_error(tmp_path):
    torch.save({"w": torch.randn(100, 100)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pickle(tmp_path / "cut.pt")
