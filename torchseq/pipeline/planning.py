"""Planning an epoch for a pipeline: counts, quantum and policy into each worker's plan, and ``len()``.

The arithmetic is in :mod:`torchseq.plan`; this module knows the layers it
needs the inputs from: the source (shard list, record counts from
:mod:`torchseq.sources.index`, shard shuffle seed) and the batching stage
(records per batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchseq.batching import TokenBudgetBatch
from torchseq.context import Context
from torchseq.errors import ConfigError
from torchseq.plan import OFF, EpochPlan, WorkerPlan, shard_order
from torchseq.sources.base import ShardSource
from torchseq.sources.index import shard_counts


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


def epoch_plan(
    source: Any, stages: Sequence[Any], policy: str, ctx: Context, *, settle: bool = False
) -> EpochPlan | None:
    """The plan of ``ctx.epoch`` for a pipeline; ``None`` when it is not balanced.

    Counts come from :mod:`torchseq.sources.index` (counted once, then cached);
    ``settle``: an iteration of ``ctx.epoch`` starts (see ``shard_counts``).
    """
    if policy == OFF or not isinstance(source, ShardSource):
        return None
    quantum, drop_last = batching_quantum(stages)
    effective = "drop" if drop_last and policy == "partial" else policy
    shards = source.shard_list()
    counts = shard_counts(source, shards, epoch=ctx.epoch, settle=settle)
    seed = source.shuffle_seed
    return EpochPlan(counts, ctx.world_size, quantum, effective, ctx.epoch,
                     lambda epoch: shard_order(len(shards), epoch, seed))


def worker_plan(source: Any, stages: Sequence[Any], policy: str, ctx: Context) -> WorkerPlan | None:
    """This worker's plan for ``ctx.epoch``; ``None`` when unbalanced or not needed.

    A single worker under ``"partial"`` reads every shard in order anyway, so
    it skips counting: the stream is the same either way.
    """
    if ctx.num_global_workers == 1 and policy == "partial":
        return None
    plan = epoch_plan(source, stages, policy, ctx, settle=True)
    return plan.worker_plan(ctx.rank, ctx.worker, ctx.num_workers) if plan is not None else None


def batches_per_rank(source: Any, stages: Sequence[Any], policy: str, ctx: Context) -> int:
    """``len(pipeline)``: batches every rank yields in ``ctx.epoch``.

    Raises:
        TypeError: the number cannot be known (what ``len`` users expect).
    """
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
        plan = epoch_plan(source, stages, policy, ctx)
    except ConfigError as exc:
        raise TypeError(f"len(pipeline) is unknown: {exc}") from exc
    return plan.layout.batches if plan is not None else 0
