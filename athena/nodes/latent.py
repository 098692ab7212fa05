"""Placeholder: filled in by the node library work."""

NODES: tuple = ()
