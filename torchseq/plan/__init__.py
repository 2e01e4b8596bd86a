"""Pure arithmetic of epochs: rank layouts, worker plans, shard order (imports only leaves)."""

from torchseq.plan.epoch import EpochPlan, Range, WorkerPlan
from torchseq.plan.layout import OFF, POLICIES, Layout, check_policy, layout, worker_slice
from torchseq.plan.order import assign_shards, check_plan_shards, shard_order

__all__ = [
    "OFF",
    "POLICIES",
    "EpochPlan",
    "Layout",
    "Range",
    "WorkerPlan",
    "assign_shards",
    "check_plan_shards",
    "check_policy",
    "layout",
    "shard_order",
    "worker_slice",
]
