"""Our safetensors reader/writer agree with the reference `safetensors` package; bad files give CheckpointError."""

import pytest
import torch

from athena.checkpoints.safetensors import Pending, SafetensorsFile, save_file
from athena.errors import CheckpointError

st = pytest.importorskip("safetensors.torch")


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"f32": torch.randn(3, 5, generator=g), "f16": torch.randn(7, generator=g).half(),
            "bf16": torch.randn(2, 2, 2, generator=g).bfloat16(), "i64": torch.arange(5), "u8": torch.arange(9, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(1.5), "empty": torch.zeros(0, 4)}


def test_reference_reads_what_we_write(tmp_path):
    save_file(sample(), tmp_path / "a.safetensors", {"k": "v"})
    back = st.load_file(tmp_path / "a.safetensors")
    for k, t in sample().items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k


def test_we_read_what_reference_writes(tmp_path):
    st.save_file(sample(), tmp_path / "b.safetensors", metadata={"k": "v"})
    with SafetensorsFile(tmp_path / "b.safetensors") as f:
        assert f.metadata == {"k": "v"} and set(f) == set(sample())
        for k, t in sample().items():
            assert f[k].shape == tuple(t.shape) and torch.equal(f.get(k), t), k
        assert f.get("f16", torch.float32).dtype == torch.float32  # stored dtype cast to the compute dtype
        assert torch.equal(f.get("f16", torch.float32), sample()["f16"].float())


def test_pending_tensors_are_made_once_when_written(tmp_path):
    made = []
    entries = {"a": Pending(torch.float32, (2, 3), lambda: made.append("a") or torch.ones(2, 3))}
    save_file(entries, tmp_path / "c.safetensors")
    assert made == ["a"] and torch.equal(st.load_file(tmp_path / "c.safetensors")["a"], torch.ones(2, 3))


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_file_is_a_clear_error(tmp_path, keep):
    save_file(sample(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated|too short"):
        SafetensorsFile(tmp_path / "cut.safetensors")


def test_corrupt_header_is_a_clear_error(tmp_path):
    save_file(sample(), tmp_path / "x.safetensors")
    data = bytearray((tmp_path / "x.safetensors").read_bytes())
    data[9:13] = b"\xff\xfe\x00{"
    (tmp_path / "x.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        SafetensorsFile(tmp_path / "x.safetensors")


def test_write_is_atomic(tmp_path):
    """A failing writer leaves the previous file intact and no partial file at the destination."""
    save_file({"a": torch.ones(2)}, tmp_path / "m.safetensors")

    def boom() -> torch.Tensor:
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_file({"b": Pending(torch.float32, (2,), boom)}, tmp_path / "m.safetensors")
    assert torch.equal(st.load_file(tmp_path / "m.safetensors")["a"], torch.ones(2))
