"""Rolling-buffer shuffle."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torchseq.context import Context
from torchseq.errors import ConfigError
from torchseq.protocol import Running
from torchseq.rng import seeded_random
from torchseq.state import Saved, SnapshotEncoder, State


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

    def settings(self) -> dict[str, Any]:
        return {"buffer_size": self.buffer_size, "seed": self.seed}

    def open(self, upstream: Iterator[Any], ctx: Context, state: State) -> Running:
        return _Shuffling(self.buffer_size, upstream, ctx, self.seed, state)


class _Shuffling(Running):
    __slots__ = ("buffer", "rng", "encoder")

    def __init__(self, size: int, upstream: Iterator[Any], ctx: Context, seed: int, state: State) -> None:
        self.rng = seeded_random("shuffle", seed, ctx.epoch, ctx.rank, ctx.worker)
        self.buffer: list[Any] = []
        if state:
            saved = Saved(state)
            saved.rng("rng", self.rng)
            self.buffer = saved.records("buffer")
            if len(self.buffer) > size:
                raise saved.wrong("buffer", f"at most buffer_size={size} records, not {len(self.buffer)}")
        self.encoder = SnapshotEncoder()
        self.iterator = self._shuffle(upstream, size)

    def state_dict(self) -> State:
        return {"buffer": self.encoder(self.buffer), "rng": self.rng.getstate()}

    def _shuffle(self, upstream: Iterator[Any], size: int) -> Iterator[Any]:
        buffer = self.buffer
        randbelow = self.rng.randrange
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
