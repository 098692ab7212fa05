"""Read and write the safetensors format without the `safetensors` package.

Reading is lazy and memory-mapped: the header is parsed and checked against the file size up front.
A tensor is either copied out of the mapping on demand, after which its pages are released, or handed
out as `shared(name)`: a tensor over a private (copy-on-write) mapping of the file that lives as long as
the tensor does. Loading a model therefore never holds a second full copy of the weights, and weights
loaded shared take no private memory at all until written.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from athena.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the format's own limit on the JSON header


class TensorInfo:
    __slots__ = ("dtype", "end", "shape", "start")

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int):
        self.dtype, self.shape, self.start, self.end = dtype, shape, start, end


class SafetensorsFile(Mapping[str, TensorInfo]):
    """A `.safetensors` file opened lazily: a mapping of name -> TensorInfo, plus `get(name)`."""

    def __init__(self, path: str | os.PathLike[str], *, share: bool = True):
        self.path, self.share = Path(path), share
        self.size = size = self.path.stat().st_size
        self._storage: torch.UntypedStorage | None = None  # the private mapping `shared` hands out, made on first use
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path.name}: {size} bytes is too short for a safetensors file (truncated?)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{self.path.name}: header claims {n} bytes but the file has {size}; the file is truncated or "
                    f"not safetensors. Re-download or re-export it.")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{self.path.name}: the safetensors header is not valid JSON ({e}); the file is corrupt") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path.name}: the safetensors header is not a JSON object; the file is corrupt")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self._infos = {name: self._parse(name, e, size - self.data_start) for name, e in header.items()}
        self._file = open(self.path, "rb")
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size > self.data_start else None

    def _parse(self, name: str, e: object, data_size: int) -> TensorInfo:
        try:
            assert isinstance(e, dict)
            dtype, shape, (start, end) = DTYPES[e["dtype"]], tuple(int(d) for d in e["shape"]), e["data_offsets"]
        except (AssertionError, KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path.name}: bad header entry for {name!r}: {str(e)[:200]}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - start != nbytes or start < 0:
            raise CheckpointError(f"{self.path.name}: {name!r} has {end - start} bytes for shape {shape}; the file is corrupt")
        if end > data_size:
            raise CheckpointError(
                f"{self.path.name}: {name!r} ends at byte {end} of the data but the file holds {data_size}; "
                f"the file is truncated. Re-download or re-export it.")
        return TensorInfo(dtype, shape, start, end)

    def __getitem__(self, name: str) -> TensorInfo:
        return self._infos[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def view(self, name: str) -> Tensor:
        """A zero-copy tensor over the mapped bytes; valid until `release(name)` or `close()`."""
        info = self._infos[name]
        if info.start == info.end:
            return torch.empty(info.shape, dtype=info.dtype)
        assert self._mm is not None
        count = (info.end - info.start) // torch.empty((), dtype=info.dtype).element_size()
        return torch.frombuffer(self._mm, dtype=info.dtype, count=count, offset=self.data_start + info.start).view(info.shape)

    def release(self, name: str) -> None:
        """Drop the resident pages of one tensor's bytes (they are re-read from disk if touched again)."""
        info = self._infos[name]
        if self._mm is None or info.start == info.end:
            return
        page = mmap.PAGESIZE
        lo = (self.data_start + info.start) // page * page
        hi = self.data_start + info.end
        self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def shared(self, name: str) -> Tensor | None:
        """`name` over a private, copy-on-write mapping of the whole file, held by the tensor's own storage: valid
        after `close()`, read from disk page by page as it is used, and writes stay in this process's memory. The
        file must not be rewritten in place while the tensor lives (a rename over it is fine). None where this file
        does not share (opened with share=False), or the tensor is empty or not aligned to its element size."""
        info = self._infos[name]
        item = torch.empty((), dtype=info.dtype).element_size()
        offset = self.data_start + info.start
        if not self.share or info.start == info.end or offset % item:
            return None
        storage = self._storage
        if storage is None:  # map the very file whose header was parsed, even if another was renamed over the path since
            fd = Path(f"/proc/self/fd/{self._file.fileno()}")
            source = str(fd if fd.exists() else self.path)
            storage = self._storage = cast(torch.UntypedStorage,
                                           torch.UntypedStorage.from_file(source, shared=False, nbytes=self.size))
        stride = torch.empty(info.shape, device="meta").stride()
        return torch.empty(0, dtype=info.dtype).set_(storage, offset // item, info.shape, stride)

    def get(self, name: str, dtype: torch.dtype | None = None) -> Tensor:  # type: ignore[override]
        """A fresh tensor (owning its memory), cast to `dtype` if given."""
        t = self.view(name).to(dtype=dtype or self._infos[name].dtype, copy=True)
        self.release(name)
        return t

    def close(self) -> None:
        """Unmap the copy-out mapping (its views die with it); tensors from `shared` keep their own mapping."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._storage = None
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Pending:
    """A tensor to be made when the writer reaches it: streaming writes hold one tensor at a time."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], Tensor]

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def save_file(tensors: Mapping[str, Tensor | Pending], path: str | os.PathLike[str],
              metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` to `path` atomically (temp file, then rename), one tensor at a time."""
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise CheckpointError(f"cannot save {name!r}: dtype {t.dtype} has no safetensors code")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as the reference writer does
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, entry in tensors.items():
            t = entry.make() if isinstance(entry, Pending) else entry
            if tuple(t.shape) != tuple(entry.shape) or t.dtype != entry.dtype:
                raise CheckpointError(f"cannot save {name!r}: made {t.dtype}{tuple(t.shape)}, declared {entry.dtype}{tuple(entry.shape)}")
            if t.numel():
                f.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
