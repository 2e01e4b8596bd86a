"""Comparing a checkpoint with the pipeline it is loaded into, and naming what differs.

Every message starts with the path of the field in the checkpoint
(``stages[1].buffer``, ``settings[2].max_length``), then says what the
checkpoint has and what the pipeline has or needs. Values are shown with a
bounded ``repr``: a tampered field can be huge, shared or hold itself.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

from torchseq.errors import StateError

_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxlist = _REPR.maxtuple = 12
_REPR.maxdict = 8
_REPR.maxstring = _REPR.maxother = 160
_REPR.maxlong = 40


def show(value: Any) -> str:
    """``repr(value)``, cut short for large, deep or self-containing values."""
    return _REPR.repr(value)


def join(parent: str, key: str | int) -> str:
    """The path of ``key`` inside ``parent``: ``stages[1]``, ``plan.policy``, ``counters['a b']``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{key!r}]"


def within(parent: str, error: StateError) -> StateError:
    """``error`` with its field path put inside ``parent`` (``buffer: ...`` -> ``stages[1].buffer: ...``)."""
    message = str(error)
    return StateError(f"{parent}{'' if message.startswith('[') else '.'}{message}")


def same(checkpoint: Any, pipeline: Any) -> bool:
    """Equal values of equal types (``True`` is not ``1``); lists and tuples alike.

    Recurses along ``pipeline`` only, so a tampered ``checkpoint`` cannot make it deep.
    """
    if type(pipeline) in (list, tuple):
        return (type(checkpoint) in (list, tuple) and len(checkpoint) == len(pipeline)
                and all(same(a, b) for a, b in zip(checkpoint, pipeline, strict=True)))
    if type(pipeline) is dict:
        return (type(checkpoint) is dict and checkpoint.keys() == pipeline.keys()
                and all(same(checkpoint[k], v) for k, v in pipeline.items()))
    return type(checkpoint) is type(pipeline) and bool(checkpoint == pipeline)


def check_field(name: str, checkpoint: Any, pipeline: Any, hint: str = "") -> None:
    """Raise a :class:`StateError` naming ``name`` when a checkpoint field disagrees."""
    if not same(checkpoint, pipeline):
        raise StateError(f"{name}: checkpoint has {show(checkpoint)}, pipeline has {show(pipeline)}{hint}")


def check_settings(where: str, saved: Any, now: Mapping[str, Any]) -> None:
    """Compare a stage's settings field by field (nested dicts too), naming the first that differs."""
    if type(saved) is not dict:
        raise StateError(f"{where}: checkpoint has {show(saved)}, pipeline has {show(dict(now))}")
    for key in sorted(set(saved) | set(now), key=str):
        name = join(where, key) if isinstance(key, str) else f"{where}[{key!r}]"
        if key not in saved or key not in now:
            theirs_shown = show(saved[key]) if key in saved else "none"
            ours_shown = show(now[key]) if key in now else "none"
            raise StateError(f"{name}: checkpoint has {theirs_shown}, pipeline has {ours_shown}")
        ours, theirs = now[key], saved[key]
        if type(ours) is dict and type(theirs) is dict:
            check_settings(name, theirs, ours)
        else:
            check_field(name, theirs, ours)
