"""Reading a saved state field by field: :class:`Saved`.

A stage resumed from a checkpoint reads its state through ``Saved`` instead
of ``state.get(key, default)``: a missing field, a wrong type, a number out
of range or a damaged collection of records is a
:class:`~torchseq.errors.StateError` naming the field, never a default, a
``KeyError`` or a ``TypeError`` from deep inside the stage.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Any

from torchseq.errors import StateError
from torchseq.rng import restore_rng
from torchseq.state.checks import join, show
from torchseq.state.codec import decode_batches, decode_records

_RNG_WORDS = 625  # Mersenne Twister: 624 words and the position


class Saved:
    """One saved state (a dict), read field by field.

    Args:
        value: the state.
        where: its path in the checkpoint, relative to the stage (``""`` for the stage itself).

    Raises:
        StateError: ``value`` is not a dict.
    """

    __slots__ = ("value", "where")

    def __init__(self, value: Any, where: str = "") -> None:
        if type(value) is not dict:
            raise StateError(f"{where or 'state'}: checkpoint has {show(value)}, pipeline needs a dict")
        self.value: dict[str, Any] = value
        self.where = where

    def field(self, key: str) -> str:
        return join(self.where, key)

    def wrong(self, key: str, what: str) -> StateError:
        """The error for field ``key`` not being ``what``."""
        shown = show(self.value[key]) if key in self.value else "none"
        return StateError(f"{self.field(key)}: checkpoint has {shown}, pipeline needs {what}")

    def get(self, key: str, what: str = "it") -> Any:
        """A field that must be present."""
        if key not in self.value:
            raise self.wrong(key, what)
        return self.value[key]

    def integer(self, key: str, low: int = 0, high: int | None = None) -> int:
        value = self.value.get(key)
        if type(value) is not int or value < low or (high is not None and value > high):
            raise self.wrong(key, f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}")
        return value

    def flag(self, key: str) -> bool:
        value = self.value.get(key)
        if type(value) is not bool:
            raise self.wrong(key, "True or False")
        return value

    def nested(self, key: str, *, empty: bool = True) -> Saved:
        """A dict field (``empty=False``: a non-empty one, where ``{}`` would mean a fresh start)."""
        value = self.value.get(key)
        if type(value) is not dict or not (empty or value):
            raise self.wrong(key, "a dict" if empty else "a non-empty dict (a saved state)")
        return Saved(value, self.field(key))

    def records(self, key: str) -> list[Any]:
        return decode_records(self.get(key, "a collection of records"), self.field(key))

    def batches(self, key: str) -> list[list[Any]]:
        return decode_batches(self.get(key, "a collection of batches"), self.field(key))

    def counts(self, key: str, names: Collection[str] | None = None) -> dict[str, int]:
        """A dict of counts: each value an int >= 0, each name one of ``names`` (if given) or any string."""
        value = self.value.get(key)
        if type(value) is not dict:
            raise self.wrong(key, "a dict of counts")
        for name, count in value.items():
            known = type(name) is str and (names is None or name in names)
            if not known or type(count) is not int or count < 0:
                choices = f" of one of {sorted(names)}" if names is not None else ""
                raise StateError(f"{join(self.field(key), str(name))}: checkpoint has {show(count)}, "
                                 f"pipeline needs a count (an int >= 0){choices}")
        return dict(value)

    def rng(self, key: str, rng: random.Random) -> None:
        """Restore ``rng`` from the field (a ``random.Random`` state that went through builtins)."""
        value: Any = self.value.get(key)
        what = "a random.Random state (3, 625 ints, None)"
        if type(value) not in (tuple, list) or len(value) != 3 or type(value[1]) not in (tuple, list) \
                or len(value[1]) != _RNG_WORDS or any(type(word) is not int for word in value[1]):
            raise self.wrong(key, what)
        try:
            restore_rng(rng, value)
        except (TypeError, ValueError, OverflowError):
            raise self.wrong(key, what) from None
