"""The node library: ComfyUI's core node names and input orders, each node thin over `athena.pipelines`."""

from __future__ import annotations

from athena.graph.node import Registry
from athena.nodes import conditioning, image, latent, loaders, mask, output, primitives, sampling

MODULES = (loaders, conditioning, sampling, latent, image, mask, primitives, output)
IGNORED = ("Note", "MarkdownNote")  # UI-only nodes a workflow may hold


def registry() -> Registry:
    """Every node class of the library, registered and checked."""
    return Registry([n for m in MODULES for n in m.NODES], ignored=IGNORED)
