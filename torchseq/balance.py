"""Equal batches per rank: the epoch plan every process computes alike.

DDP hangs when one rank runs out of batches while the others still call
``all_reduce``. Ranks cannot talk to each other inside DataLoader workers, so
equality must come from knowledge every process already shares: the
per-shard record counts (from :mod:`torchseq.index`), the world size, the
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

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchseq.errors import ConfigError

POLICIES = ("partial", "drop", "pad", "wrap")
OFF = "off"

# A piece of one shard: (shard index, first item, end item), items counted from 0.
Range = tuple[int, int, int]


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


@dataclass(frozen=True)
class Share:
    """One worker's part of a balanced epoch; carried to the stages in the context.

    Attributes:
        ranges: ``(shard, start, end)`` item ranges to read, in order.
        num_records: records planned for this worker (sum of the ranges).
        num_batches: batches this worker yields (the step guard holds it to that).
        quantum: records per full batch.
        num_shards: shards in the spec the plan was made for.
        epoch_records: records in one epoch's order (``N``).
        policy: the effective remainder policy.
        guard: hold the batch count exactly (``world_size > 1``).
    """

    ranges: tuple[Range, ...]
    num_records: int
    num_batches: int
    quantum: int
    num_shards: int
    epoch_records: int
    policy: str
    guard: bool


class EpochPlan:
    """Who reads which records in one epoch, for any rank and worker.

    Building it costs ``O(S)`` for ``S`` shards (one prefix sum per shard order
    used); :meth:`share` then costs ``O(log S + pieces)``.

    Args:
        counts: records per shard, in spec order.
        world_size: ranks.
        quantum: records per full batch.
        policy: one of :data:`POLICIES`.
        epoch: the epoch.
        order_of: the shard order of an epoch (a permutation of ``range(S)``);
            ``"wrap"`` reads the previous and next epochs' orders too.
    """

    def __init__(
        self,
        counts: Sequence[int],
        world_size: int,
        quantum: int,
        policy: str,
        epoch: int,
        order_of: Callable[[int], Sequence[int]],
    ) -> None:
        self.counts = list(counts)
        self.num_records = sum(self.counts)
        self.layout = layout(self.num_records, world_size, quantum, policy, epoch)
        self._order_of = order_of
        self._cycles: dict[int, tuple[Sequence[int], list[int]]] = {}

    def _cycle(self, cycle: int) -> tuple[Sequence[int], list[int]]:
        # "wrap" positions are absolute, so cycle c is epoch c's order; the
        # other policies wrap around (repeat) within the epoch's own order.
        epoch = cycle if self.layout.policy == "wrap" else self.layout.epoch
        cached = self._cycles.get(epoch)
        if cached is None:
            order = self._order_of(epoch)
            cumulative = [0, *itertools.accumulate(self.counts[s] for s in order)]
            cached = self._cycles[epoch] = (order, cumulative)
        return cached

    def ranges(self, begin: int, end: int) -> list[Range]:
        """Shard ranges covering stream positions ``[begin, end)``."""
        n = self.num_records
        out: list[Range] = []
        if n == 0:
            return out
        position = begin
        while position < end:
            cycle, offset = divmod(position, n)
            stop = min(n, offset + end - position)
            order, cumulative = self._cycle(cycle)
            # Last shard starting at or before ``offset``: skips empty shards.
            i = bisect.bisect_right(cumulative, offset) - 1
            while offset < stop:
                shard = order[i]
                first = offset - cumulative[i]
                last = min(self.counts[shard], stop - cumulative[i])
                if last > first:
                    out.append((shard, first, last))
                offset = cumulative[i] + last
                i += 1
            position = cycle * n + stop
        return out

    def share(self, rank: int, worker: int = 0, num_workers: int = 1) -> Share:
        lay = self.layout
        if not (0 <= rank < lay.world_size and 0 <= worker < num_workers):
            raise ConfigError(f"balance: no worker {worker} of {num_workers} on rank {rank} of {lay.world_size}")
        records = lay.rank_records(rank)
        offset, count, batches = worker_slice(records, lay.batches, lay.quantum, num_workers, worker)
        begin = lay.rank_start(rank) + offset
        return Share(
            ranges=tuple(self.ranges(begin, begin + count)),
            num_records=count,
            num_batches=batches,
            quantum=lay.quantum,
            num_shards=len(self.counts),
            epoch_records=self.num_records,
            policy=lay.policy,
            guard=lay.world_size > 1,
        )

    def report(self) -> dict[str, Any]:
        """Builtins summary of the epoch: batches per rank and what the policy costs."""
        lay = self.layout
        return {
            "policy": lay.policy,
            "epoch": lay.epoch,
            "records": lay.num_records,
            "world_size": lay.world_size,
            "quantum": lay.quantum,
            "batches_per_rank": lay.batches,
            "records_per_rank": [lay.base + 1] * lay.extra + [lay.base] * (lay.world_size - lay.extra),
            "delivered": lay.delivered,
            "dropped": lay.dropped,
            "repeated": lay.repeated,
            "carried_in": lay.carried_in,
            "carried_out": lay.carried_out,
            "imbalance": lay.imbalance,
        }


def batching_quantum(stages: Sequence[Any]) -> tuple[int, bool]:
    """``(records per full batch, drop_last)`` of the pipeline's batching stage.

    A batching stage says so by defining ``balance_quantum()``; without one the
    pipeline yields records and the quantum is 1.

    Raises:
        ConfigError: more than one batching stage, or one that cannot plan.
    """
    found = [stage for stage in stages if hasattr(stage, "balance_quantum")]
    if len(found) > 1:
        names = ", ".join(type(s).__name__ for s in found)
        raise ConfigError(
            f"balance: the pipeline batches more than once ({names}); equal batches per rank "
            "need one batching stage (or .balance('off'))"
        )
    if not found:
        return 1, False
    quantum, drop_last = found[0].balance_quantum()
    return int(quantum), bool(drop_last)


def plan_epoch(source: Any, stages: Sequence[Any], policy: str, ctx: Any) -> EpochPlan | None:
    """The plan of ``ctx.epoch`` for a pipeline; ``None`` when it is not balanced.

    Counts come from :mod:`torchseq.index` (counted once, then cached).
    """
    from torchseq.index import shard_counts
    from torchseq.sharding import shard_order
    from torchseq.sources.base import ShardSource

    if policy == OFF or not isinstance(source, ShardSource):
        return None
    quantum, drop_last = batching_quantum(stages)
    effective = "drop" if drop_last and policy == "partial" else policy
    shards = source.shard_list()
    counts = shard_counts(source, shards)
    seed = source.shuffle_seed
    return EpochPlan(counts, ctx.world_size, quantum, effective, ctx.epoch,
                     lambda epoch: shard_order(len(shards), epoch, seed))


def batches_per_rank(source: Any, stages: Sequence[Any], policy: str, ctx: Any) -> int:
    """``len(pipeline)``: batches every rank yields in ``ctx.epoch``.

    Raises:
        TypeError: the number cannot be known (what ``len`` users expect).
    """
    from torchseq.batching import TokenBudgetBatch
    from torchseq.sources.base import ShardSource

    reason = None
    if policy == OFF:
        reason = "balancing is off (.balance('off')), so batch counts depend on how shards fall to workers"
    elif not isinstance(source, ShardSource):
        reason = f"the source {type(source).__name__} has no per-shard record counts"
    elif ctx.world_size == 1 and any(isinstance(s, TokenBudgetBatch) for s in stages):
        reason = ("batch_by_tokens makes as many batches as the token lengths need; the count is "
                  "planned from record counts only under DDP (world_size > 1)")
    if reason is not None:
        raise TypeError(f"len(pipeline) is unknown: {reason}")
    try:
        plan = plan_epoch(source, stages, policy, ctx)
    except ConfigError as exc:
        raise TypeError(f"len(pipeline) is unknown: {exc}") from exc
    return plan.layout.batches if plan is not None else 0
