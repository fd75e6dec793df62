"""Name -> class table of the pruning methods (used by the conformance tests, the CLI and benchmarks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lightning_pruning.methods.base import PruningCallback

METHODS: dict[str, type[PruningCallback]] = {}

_Method = TypeVar("_Method", bound=type[PruningCallback])


def register(name: str) -> Callable[[_Method], _Method]:
    """Class decorator that adds a pruning method to :data:`METHODS` under ``name``."""

    def decorator(cls: _Method) -> _Method:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"a pruning method named {name!r} is already registered ({METHODS[name].__name__}).")
        METHODS[name] = cls
        return cls

    return decorator
