"""Output caches, keyed by a node's signature (its class, constants and fingerprint over its whole ancestry).

| policy | keeps | ComfyUI |
|---|---|---|
| `LastRun(budget)` (default) | the results of the last run's nodes, least recently used dropped beyond `budget` bytes | classic |
| `LRU(budget)` | results of any earlier run, least recently used dropped beyond `budget` bytes | `--cache-lru` |
| `FreeEarly()` | nothing between runs; each result is freed once its last consumer ran | `--cache-none` |

The executor itself drops its reference to an intermediate as soon as its last consumer in the run has finished, so
with `FreeEarly` a chain of nodes holds at most a node's inputs and outputs at a time.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class Entry:
    outputs: list[list[Any]]  # per output, the list of values (list semantics)
    ui: dict[str, Any] | None
    size: int
    parent: str | None = None  # for a sub-graph node: the signature of the node that expanded into it


class Cache(Protocol):
    def get(self, key: str) -> Entry | None: ...
    def put(self, key: str, entry: Entry) -> None: ...
    def begin(self, keys: set[str]) -> None: ...  # a run over these signatures starts
    def end(self) -> None: ...  # the run finished (or failed)
    def clear(self) -> None: ...  # forget every result (ComfyUI's /free)


def default_budget() -> int:
    """Half of the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class LRU:
    """Results of any run, least recently used dropped beyond `budget` bytes (the newest entry always stays)."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = default_budget() if budget is None else budget
        self.items: OrderedDict[str, Entry] = OrderedDict()

    @property
    def size(self) -> int:
        return sum(e.size for e in self.items.values())

    def get(self, key: str) -> Entry | None:
        entry = self.items.get(key)
        if entry is not None:
            self.items.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        self.items[key] = entry
        self.items.move_to_end(key)
        total = self.size
        while total > self.budget and len(self.items) > 1:
            _, dropped = self.items.popitem(last=False)
            total -= dropped.size

    def begin(self, keys: set[str]) -> None:
        pass

    def end(self) -> None:
        pass

    def clear(self) -> None:
        self.items.clear()


class LastRun(LRU):
    """The last run's results only: at the start of a run, results that the new graph cannot use are dropped."""

    def begin(self, keys: set[str]) -> None:
        for key in [k for k, e in self.items.items() if k not in keys and e.parent not in keys]:
            del self.items[key]


class FreeEarly:
    """Nothing is kept: every intermediate is freed as soon as its consumers ran; every run starts from scratch."""

    def get(self, key: str) -> Entry | None:
        return None

    def put(self, key: str, entry: Entry) -> None:
        pass

    def begin(self, keys: set[str]) -> None:
        pass

    def end(self) -> None:
        pass

    def clear(self) -> None:
        pass


def nbytes(value: Any) -> int:
    """The memory behind a value: tensors and arrays, counted once per storage, found through containers, modules,
    dataclasses and plain objects."""
    seen: set[int] = set()

    def walk(v: Any, depth: int) -> int:
        if depth > 6 or id(v) in seen or v is None or isinstance(v, (str, bytes, int, float, bool)):
            return 0
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            ptr = v.untyped_storage().data_ptr() if v.device.type != "meta" else id(v)
            if ptr in seen:
                return 0
            seen.add(ptr)
            return v.untyped_storage().nbytes()
        if hasattr(v, "__array_interface__") and hasattr(v, "nbytes"):
            return int(v.nbytes)
        if isinstance(v, nn.Module):
            return sum(walk(t, depth + 1) for t in (*v.parameters(), *v.buffers()))
        if isinstance(v, dict):
            return sum(walk(x, depth + 1) for x in v.values())
        if isinstance(v, (list, tuple, set, frozenset)):
            return sum(walk(x, depth + 1) for x in v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return sum(walk(getattr(v, f.name, None), depth + 1) for f in dataclasses.fields(v))
        if hasattr(v, "__dict__") and not isinstance(v, type):
            return sum(walk(x, depth + 1) for x in vars(v).values())
        return 0

    return walk(value, 0)
