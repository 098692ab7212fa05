"""`Node`: a schema plus a `run` classmethod; `Registry`: the node classes a host offers, by id.

A node is stateless. `run(cls, **inputs)` returns a tuple with one value per output, or a `NodeOutput` that adds UI
results, a sub-graph to expand, or a blocker. A node that needs the host's services (model cache, folders), the
progress reporter or its hidden values declares a first parameter named `ctx` and receives a `Context`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from athena.cancel import CancelToken
from athena.errors import ConfigError
from athena.graph.schema import Schema


@dataclass(frozen=True)
class ExecutionBlocker:
    """An output value that stops every node consuming it. With a message, the job fails with it; without, the
    consumers are skipped silently (a switch's unused branch)."""

    message: str | None = None


@dataclass
class NodeOutput:
    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None  # e.g. {"images": [{"filename", "subfolder", "type"}]}
    expand: dict[str, Any] | None = None  # an API-format sub-graph; `values` may hold [node_id, index] links into it


@dataclass
class Context:
    """What a running node may see: its id, the job's hidden values, the host's services, progress and cancel."""

    node_id: str
    services: Any
    cancel: CancelToken
    report: Callable[[int, int, Any], None]  # (value, max, preview or None)
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_pnginfo: dict[str, Any] = field(default_factory=dict)

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        self.cancel.raise_if_cancelled()
        self.report(value, total, preview)


class Node:
    schema: ClassVar[Schema]
    run: ClassVar[Callable[..., Any]]  # each node's own typed classmethod: run(cls, [ctx,] **inputs)

    @classmethod
    def fingerprint(cls, services: Any, **inputs: Any) -> Hashable:
        """ComfyUI's IS_CHANGED: a value that changes when the node's result would (a file's content hash).
        NaN forces a re-run every time."""
        return None

    @classmethod
    def validate_inputs(cls, services: Any, **inputs: Any) -> str | None:
        """An error message for constant inputs that pass the schema but not the node (custom_validation_failed)."""
        return None

    @classmethod
    def check_lazy_status(cls, **inputs: Any) -> list[str]:
        """The names of lazy inputs still needed, given the ones available (unevaluated lazy inputs are None)."""
        return []

    @classmethod
    def wants_context(cls) -> bool:
        params = list(inspect.signature(cls.run).parameters)
        return bool(params) and params[0] == "ctx"


class Registry:
    """The node classes by id, checked once: unique ids, valid schemas (checked by `Schema`), a `run` method."""

    def __init__(self, nodes: Iterable[type[Node]] = (), *, ignored: Iterable[str] = ()) -> None:
        self.nodes: dict[str, type[Node]] = {}
        self.ignored = frozenset(ignored)  # UI-only classes a workflow may hold (Note, MarkdownNote)
        self.context_nodes: set[str] = set()
        self.is_async: set[str] = set()
        for n in nodes:
            self.add(n)

    def add(self, node: type[Node]) -> None:
        sid = node.schema.id
        if sid in self.nodes:
            raise ConfigError(f"two node classes share the id {sid!r}: {self.nodes[sid].__qualname__} and "
                              f"{node.__qualname__}; give one of them another id")
        if not callable(getattr(node, "run", None)):
            raise ConfigError(f"node {sid!r} ({node.__qualname__}) has no run method")
        self.nodes[sid] = node
        if node.wants_context():
            self.context_nodes.add(sid)
        if inspect.iscoroutinefunction(node.run):
            self.is_async.add(sid)

    def __contains__(self, sid: str) -> bool:
        return sid in self.nodes

    def __getitem__(self, sid: str) -> type[Node]:
        return self.nodes[sid]

    def object_info(self, services: Any = None) -> dict[str, Any]:
        """Every node's schema in ComfyUI's `/object_info` shape."""
        return {sid: n.schema.info(services) for sid, n in self.nodes.items()}
