"""Rolling-buffer shuffle."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context, derive_seed
from torchseq.errors import ConfigError
from torchseq.state import Slot, SnapshotEncoder, decode_records


def restore_rng(rng: random.Random, state: Any) -> None:
    """Load a ``random.Random`` state that went through builtins (lists for tuples)."""
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


@dataclass(frozen=True)
class BufferShuffle:
    """Shuffle within a rolling buffer of ``buffer_size`` elements.

    The buffer fills first; then each new element replaces a random one, which
    is yielded; at the end the rest drains in random order. Seeded from
    ``(seed, epoch, rank, worker)``; the shard order is shuffled by the source.

    State: ``buffer`` (elements held), ``rng``.
    """

    buffer_size: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"shuffle: buffer_size must be >= 1, got {self.buffer_size}")

    def __call__(self, upstream: Iterator[Any], ctx: Context, slot: Slot) -> Iterator[Any]:
        rng = random.Random(derive_seed("shuffle", self.seed, ctx.epoch, ctx.rank, ctx.worker))
        buffer: list[Any] = decode_records(slot.resume.get("buffer", []))
        if "rng" in slot.resume:
            restore_rng(rng, slot.resume["rng"])
        encoder = SnapshotEncoder()
        slot.snapshot = lambda: {"buffer": encoder(buffer), "rng": rng.getstate()}
        return self._shuffle(upstream, buffer, rng)

    def _shuffle(self, upstream: Iterator[Any], buffer: list[Any], rng: random.Random) -> Iterator[Any]:
        size = self.buffer_size
        randbelow = rng.randrange
        for item in upstream:
            if len(buffer) < size:
                buffer.append(item)
                continue
            index = randbelow(size)
            out = buffer[index]
            buffer[index] = item
            yield out
        while buffer:
            index = randbelow(len(buffer))
            out = buffer[index]
            buffer[index] = buffer[-1]
            buffer.pop()
            yield out
