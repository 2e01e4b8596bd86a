"""Equal batches per rank: the rank-level arithmetic of one epoch (no shard knowledge).

DDP hangs when one rank runs out of batches while the others still call
``all_reduce``. Ranks cannot talk to each other inside DataLoader workers, so
equality must come from knowledge every process already shares: the
per-shard record counts (from :mod:`torchseq.sources.index`), the world size, the
batch *quantum* (records per batch, from the batching stage) and the
remainder policy. From those alone each worker of each rank computes the
same :class:`EpochPlan` and reads only its own part of it.

The records of an epoch form a *stream*: the shards in the epoch's shard
order, concatenated. Rank ``r`` gets one contiguous slice of the stream and
the slices tile it, so every record goes to exactly one rank. A rank's slice
holds ``T`` batches' worth of records, ``T`` the same on every rank; within
the rank the ``T`` batches are dealt to the ``K`` DataLoader workers and every
worker but one gets whole batches only, so the rank yields ``T`` batches
whatever ``K`` is (DataLoader round-robins its workers; the per-rank total
is what DDP sees).

Remainder policies (``N`` records, ``W`` ranks, quantum ``q``):

* ``"partial"`` (default): every record exactly once. ``T = ceil(N / (W q))``
  and each rank's last batch may be short; partial sizes differ by at most
  one record between ranks. Only when fewer than ``W`` records are left for
  the last step (so some rank would get none) are up to ``W - 1`` records
  repeated so that every rank has one.
* ``"drop"``: full batches only; ``T = floor(N / (W q))``; the last
  ``N - W q T < W q`` records of the epoch's order are not delivered.
* ``"pad"``: full batches only; ``T = ceil(N / (W q))``; the
  ``W q T - N < W q`` missing records are repeated from the start of the
  epoch's order.
* ``"wrap"``: full batches only; what does not fill a step is delivered at
  the start of the next epoch. Epoch ``e`` is stream positions
  ``[W q floor(e N / (W q)), W q floor((e + 1) N / (W q)))`` of the endless
  stream ``order_0 + order_1 + ...``: over any run of epochs nothing is lost
  or repeated; within one epoch fewer than ``W q`` records come from the
  previous epoch's order.

A batching stage with ``drop_last=True`` turns ``"partial"`` into ``"drop"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchseq.errors import ConfigError

POLICIES = ("partial", "drop", "pad", "wrap")
OFF = "off"

def check_policy(policy: str) -> str:
    if policy not in (*POLICIES, OFF):
        raise ConfigError(f"balance: policy must be one of {(*POLICIES, OFF)}, got {policy!r}")
    return policy


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Layout:
    """The rank-level arithmetic of one epoch (no shard knowledge).

    Rank ``r`` gets ``base + (r < extra)`` records starting at stream position
    ``start + r * base + min(r, extra)``, and yields ``batches`` batches.

    Attributes:
        policy: the effective policy (``"partial"`` becomes ``"drop"`` under ``drop_last``).
        num_records: records in one epoch's order (``N``).
        world_size: ranks (``W``).
        quantum: records per full batch (``q``).
        epoch: the epoch.
        batches: batches every rank yields this epoch.
        start: stream position of rank 0's first record.
        base: records of every rank ...
        extra: ... plus one for the first ``extra`` ranks.
        dropped: records of this epoch's order not delivered (``"drop"``).
        repeated: records delivered twice this epoch (``"pad"``, rare ``"partial"``).
        carried_in: records of the previous epoch's order delivered now (``"wrap"``).
        carried_out: records of this epoch's order left for the next (``"wrap"``).
    """

    policy: str
    num_records: int
    world_size: int
    quantum: int
    epoch: int
    batches: int
    start: int
    base: int
    extra: int
    dropped: int = 0
    repeated: int = 0
    carried_in: int = 0
    carried_out: int = 0

    def rank_records(self, rank: int) -> int:
        return self.base + (1 if rank < self.extra else 0)

    def rank_start(self, rank: int) -> int:
        return self.start + rank * self.base + min(rank, self.extra)

    @property
    def delivered(self) -> int:
        """Records delivered this epoch over all ranks (repeats counted twice)."""
        return self.world_size * self.base + self.extra

    @property
    def imbalance(self) -> int:
        """Largest difference in records between two ranks (0 or 1)."""
        return 1 if 0 < self.extra < self.world_size else 0


def layout(num_records: int, world_size: int, quantum: int, policy: str, epoch: int = 0) -> Layout:
    """The :class:`Layout` of ``epoch`` for ``num_records`` records (see module docs)."""
    if world_size < 1 or quantum < 1 or num_records < 0:
        raise ConfigError(
            f"balance: need world_size >= 1, quantum >= 1, records >= 0; got "
            f"{world_size}, {quantum}, {num_records}"
        )
    n, w, q = num_records, world_size, quantum
    step = w * q  # records per step over all ranks
    args = (policy, n, w, q, epoch)
    if policy == "partial":
        t = _ceil_div(n, step)
        if t == 0:
            return Layout(*args, batches=0, start=0, base=0, extra=0)
        last = n - w * (t - 1) * q  # records for the last step, 1..step
        if last >= w:
            return Layout(*args, batches=t, start=0, base=(t - 1) * q + last // w, extra=last % w)
        return Layout(*args, batches=t, start=0, base=(t - 1) * q + 1, extra=0, repeated=w - last)
    if policy == "drop":
        t = n // step
        return Layout(*args, batches=t, start=0, base=t * q, extra=0, dropped=n - t * step)
    if policy == "pad":
        t = _ceil_div(n, step)
        return Layout(*args, batches=t, start=0, base=t * q, extra=0, repeated=t * step - n)
    if policy == "wrap":
        begin = step * (epoch * n // step)
        end = step * ((epoch + 1) * n // step)
        t = (end - begin) // step
        return Layout(
            *args, batches=t, start=begin, base=t * q, extra=0,
            carried_in=epoch * n - begin, carried_out=(epoch + 1) * n - end,
        )
    raise ConfigError(f"balance: policy must be one of {POLICIES}, got {policy!r}")


def worker_slice(rank_records: int, batches: int, quantum: int, num_workers: int, worker: int) -> tuple[int, int, int]:
    """``(offset in the rank's slice, records, batches)`` of one DataLoader worker.

    The rank's ``batches`` are dealt round-robin: worker ``w`` gets
    ``batches // K + (w < batches % K)``. All are full except the rank's last
    one, which goes to worker ``(batches - 1) % K``, so the rank yields
    exactly ``batches`` batches for any ``K``.
    """
    if batches == 0:
        return 0, 0, 0
    per, more = divmod(batches, num_workers)
    short = batches * quantum - rank_records  # records missing from the last batch, 0..q-1
    holder = (batches - 1) % num_workers

    def before(v: int) -> int:  # records of workers 0..v-1
        return (v * per + min(v, more)) * quantum - (short if holder < v else 0)

    mine = per + (1 if worker < more else 0)
    return before(worker), before(worker + 1) - before(worker), mine
