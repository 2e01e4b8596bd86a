"""Per-run stage state: what a stage needs to reproduce the rest of its stream.

A stage receives a :class:`Slot` when its generator is created. ``slot.resume``
holds the state to continue from (``{}`` for a fresh start); the stage points
``slot.snapshot`` at a function that reads its live variables, so a snapshot
taken while the generator is suspended at a ``yield`` is always current.

State is builtins only (``torch.load(weights_only=True)`` must read it).
Records that hold token-id arrays are converted by :func:`encode_records`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from torchseq.errors import StateError

State = dict[str, Any]


class Slot:
    """Live state holder of one stage in one run."""

    __slots__ = ("resume", "snapshot")

    def __init__(self, resume: State | None = None) -> None:
        self.resume: State = dict(resume or {})
        # Until the stage registers its own function, a snapshot is what it was
        # resumed from: a checkpoint taken before the first element equals the
        # checkpoint that was loaded.
        self.snapshot: Callable[[], State] = lambda: dict(self.resume)


_ARRAY_TAG = "__ndarray__"


def encode_value(value: Any) -> Any:
    """Turn numpy arrays inside builtins into tagged builtins (bytes + dtype + shape)."""
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(encode_value(v) for v in value)
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            array = np.frombuffer(value["data"], dtype=np.dtype(value[_ARRAY_TAG]))
            return array.reshape(value["shape"]).copy()
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_value(v) for v in value)
    return value


def encode_records(records: Iterable[Any]) -> list[Any]:
    return [encode_value(r) for r in records]


def decode_records(records: Iterable[Any]) -> list[Any]:
    return [decode_value(r) for r in records]


def check_field(name: str, checkpoint: Any, pipeline: Any) -> None:
    """Raise a :class:`StateError` naming ``name`` when a checkpoint field disagrees."""
    if checkpoint != pipeline:
        raise StateError(f"{name}: checkpoint has {checkpoint!r}, pipeline has {pipeline!r}")
