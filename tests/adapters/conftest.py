"""Fixtures shared with the training tests."""

from tests.training.conftest import real_fashion_dir  # noqa: F401
