"""What the executor reports, as typed events into a sink (a callable). The server turns them into ComfyUI's WebSocket
messages; `athena run` prints them. The engine itself knows nothing about HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Executing:
    prompt_id: str
    node: str
    display_node: str  # the workflow node it came from (an expanded node's parent)


@dataclass(frozen=True)
class ProgressEvent:
    prompt_id: str
    node: str
    value: int
    max: int
    preview: Any = None  # a PIL image, when the node offers one


@dataclass(frozen=True)
class Executed:
    prompt_id: str
    node: str
    display_node: str
    output: dict[str, Any]


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str


@dataclass(frozen=True)
class ExecutionError:
    prompt_id: str
    node_id: str
    node_type: str
    message: str
    exception_type: str
    traceback: tuple[str, ...]
    current_inputs: dict[str, Any]  # a short summary of each input value
    executed: tuple[str, ...]


@dataclass(frozen=True)
class ExecutionInterrupted:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    executed: tuple[str, ...]


Event = (ExecutionStart | ExecutionCached | Executing | ProgressEvent | Executed | ExecutionSuccess | ExecutionError
         | ExecutionInterrupted)
Sink = Callable[[Event], None]


@dataclass
class Collect:
    """A sink that keeps every event (tests, `athena run --json`)."""

    events: list[Any] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def summary(value: Any, limit: int = 200) -> str:
    """A one-line description of an input value for error reports (shapes, not contents)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}{tuple(shape)} {getattr(value, 'dtype', '')}".strip()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {summary(v, 40)}" for k, v in list(value.items())[:6]) + "}"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"{type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
