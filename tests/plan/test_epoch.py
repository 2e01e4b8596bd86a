"""The assignment logic on paper: who reads which records, for any topology.

No processes: :class:`~torchseq.plan.EpochPlan` is pure arithmetic over
per-shard record counts, so it is checked here for up to 1,024 ranks x 8
workers and 100,000 shards, with an independent coverage sweep.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchseq.context import Context
from torchseq.errors import RecordLevelSplitWarning
from torchseq.plan import POLICIES, EpochPlan, assign_shards, layout, shard_order, worker_slice


def make_plan(
    counts: list[int], world_size: int, quantum: int, policy: str, epoch: int = 0, seed: int | None = 7
) -> EpochPlan:
    return EpochPlan(counts, world_size, quantum, policy, epoch, lambda e: shard_order(len(counts), e, seed))


def all_shares(plan: EpochPlan, num_workers: int) -> list[list]:
    return [[plan.worker_plan(r, w, num_workers) for w in range(num_workers)] for r in range(plan.layout.world_size)]


def batches_made(records: int, quantum: int) -> int:
    """What a batching stage without drop_last makes of ``records`` records."""
    return -(-records // quantum)


def coverage(counts: list[int], ranges: list[tuple[int, int, int]]) -> tuple[int, int]:
    """``(records never covered, extra coverings)`` by an event sweep, independent of the plan."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if not ranges:
        return int(offsets[-1]), 0
    arr = np.asarray(ranges, dtype=np.int64)
    shard, start, end = arr[:, 0], arr[:, 1], arr[:, 2]
    assert (start >= 0).all() and (end > start).all(), "empty or inverted range"
    assert (end <= np.asarray(counts, dtype=np.int64)[shard]).all(), "range past the end of its shard"
    begin, stop = offsets[shard] + start, offsets[shard] + end
    points = np.concatenate([begin, stop, [0, offsets[-1]]])
    deltas = np.concatenate([np.ones_like(begin), -np.ones_like(stop), [0, 0]])
    order = np.argsort(points, kind="stable")
    points, depth = points[order], np.cumsum(deltas[order])
    lengths = np.diff(points)
    depth = depth[:-1]
    missing = int(lengths[depth == 0].sum())
    extra = int((lengths * np.maximum(depth - 1, 0)).sum())
    return missing, extra


def check_plan(counts: list[int], world_size: int, num_workers: int, quantum: int, policy: str) -> dict:
    """Every invariant of one epoch's plan; returns its report."""
    plan = make_plan(counts, world_size, quantum, policy)
    lay = plan.layout
    shares = all_shares(plan, num_workers)
    per_rank_records = []
    ranges = []
    for rank_shares in shares:
        # The rank yields what its workers yield; DataLoader round-robins them.
        assert sum(batches_made(s.num_records, quantum) for s in rank_shares) == lay.batches
        assert sum(s.num_batches for s in rank_shares) == lay.batches
        short = [s for s in rank_shares if s.num_records % quantum]
        assert len(short) <= 1, "more than one partial batch on a rank"
        for s in rank_shares:
            assert sum(e - b for _, b, e in s.ranges) == s.num_records
            assert batches_made(s.num_records, quantum) == s.num_batches
            ranges.extend(s.ranges)
        per_rank_records.append(sum(s.num_records for s in rank_shares))
    report = plan.report()
    assert report["records_per_rank"] == sorted(per_rank_records, reverse=True)
    assert report["imbalance"] == max(per_rank_records) - min(per_rank_records) <= 1
    missing, extra = coverage(counts, ranges)
    total = sum(counts)
    step = world_size * quantum
    if policy == "partial":
        assert missing == 0 and extra == lay.repeated < world_size
        assert lay.batches == math.ceil(total / step)
        assert extra == 0 or total - (lay.batches - 1) * step < world_size
    elif policy == "drop":
        assert extra == 0 and missing == lay.dropped < step
        assert all(n == lay.batches * quantum for n in per_rank_records)
    elif policy == "pad":
        assert missing == 0 and extra == lay.repeated < step
        assert all(n == lay.batches * quantum for n in per_rank_records)
    return report


sizes = st.lists(st.integers(0, 300), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    counts=sizes,
    world_size=st.integers(1, 9),
    num_workers=st.integers(1, 5),
    quantum=st.integers(1, 70),
    policy=st.sampled_from(["partial", "drop", "pad"]),
)
def test_every_record_once_and_equal_batches(counts, world_size, num_workers, quantum, policy):
    check_plan(counts, world_size, num_workers, quantum, policy)


@settings(max_examples=100, deadline=None)
@given(
    counts=sizes,
    world_size=st.integers(1, 6),
    num_workers=st.integers(1, 4),
    quantum=st.integers(1, 50),
    epochs=st.integers(1, 5),
)
def test_wrap_loses_and_repeats_nothing_over_epochs(counts, world_size, num_workers, quantum, epochs):
    total = sum(counts)
    seen: Counter[tuple[int, int]] = Counter()
    delivered = 0
    for epoch in range(epochs):
        plan = make_plan(counts, world_size, quantum, "wrap", epoch)
        for rank_shares in all_shares(plan, num_workers):
            assert sum(batches_made(s.num_records, quantum) for s in rank_shares) == plan.layout.batches
            for s in rank_shares:
                assert s.num_records % quantum == 0
                for shard, b, e in s.ranges:
                    seen.update((shard, i) for i in range(b, e))
                    delivered += e - b
    step = world_size * quantum
    assert delivered == step * (epochs * total // step)
    # Over the run every record was delivered floor or ceil(delivered / total) times.
    if total:
        low, high = delivered // total, -(-delivered // total)
        assert all(low <= seen[(s, i)] <= high for s, c in enumerate(counts) for i in range(c))


@pytest.mark.parametrize("policy", ["partial", "drop", "pad"])
@pytest.mark.parametrize(
    ("world_size", "num_workers", "num_shards", "sizes"),
    [
        (1024, 8, 100_000, "skewed"),
        (1024, 8, 1, "even"),
        (1024, 8, 7, "skewed"),
        (1000, 3, 100_000, "even"),
        (1, 1, 100_000, "skewed"),
        (8, 8, 50_000, "empty-ish"),
    ],
)
def test_scale_on_paper(policy, world_size, num_workers, num_shards, sizes):
    rng = random.Random(num_shards * world_size)
    if sizes == "even":
        counts = [rng.randint(900, 1100) for _ in range(num_shards)]
        if num_shards == 1:
            counts = [5_000_003]
    elif sizes == "skewed":  # heavy-tailed: most shards small, a few huge
        counts = [int(rng.paretovariate(1.2) * 50) for _ in range(num_shards)]
    else:  # most shards empty
        counts = [rng.choice([0] * 9 + [rng.randint(1, 5000)]) for _ in range(num_shards)]
    report = check_plan(counts, world_size, num_workers, 64, policy)
    assert report["records"] == sum(counts)
    assert report["imbalance"] <= 1


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("records", [0, 1, 5, 127, 128, 129, 1000, 61_750])
def test_layout_bounds(policy, records):
    world_size, quantum = 2, 64
    lay = layout(records, world_size, quantum, policy)
    step = world_size * quantum
    assert lay.dropped < step and lay.repeated < step and lay.carried_out < step
    assert lay.delivered == records - lay.dropped + lay.repeated - lay.carried_out + lay.carried_in
    assert all(lay.rank_records(r) <= lay.batches * quantum for r in range(world_size))
    assert all(lay.rank_records(r) > (lay.batches - 1) * quantum for r in range(world_size) if lay.batches)


def test_partial_repeats_only_when_a_rank_would_get_nothing():
    # 129 records, 2 ranks x 64: one record for the second step -> one repeated.
    lay = layout(129, 2, 64, "partial")
    assert (lay.batches, lay.repeated) == (2, 1)
    lay = layout(130, 2, 64, "partial")
    assert (lay.batches, lay.repeated, lay.rank_records(0), lay.rank_records(1)) == (2, 0, 65, 65)


@pytest.mark.parametrize("num_workers", [1, 2, 3, 8])
def test_worker_slices_tile_the_rank(num_workers):
    for records in range(1, 200):
        batches = -(-records // 16)
        slices = [worker_slice(records, batches, 16, num_workers, w) for w in range(num_workers)]
        assert sum(n for _, n, _ in slices) == records
        assert [o for o, _, _ in slices] == list(np.cumsum([0] + [n for _, n, _ in slices[:-1]]))
        assert sum(b for _, _, b in slices) == batches


def test_rank_record_sets_do_not_depend_on_num_workers():
    counts = [random.Random(i).randint(0, 400) for i in range(30)]
    plan = make_plan(counts, 4, 32, "partial")

    def rank_records(rank: int, k: int) -> set[tuple[int, int]]:
        return {(s, i) for w in range(k) for s, b, e in plan.worker_plan(rank, w, k).ranges for i in range(b, e)}

    for rank in range(4):
        assert rank_records(rank, 1) == rank_records(rank, 3) == rank_records(rank, 8)


def test_unbalanced_shard_split_is_exactly_once():
    ctxs = [Context(r, 2, w, 3) for r in range(2) for w in range(3)]
    shards = [s for ctx in ctxs for s in assign_shards(11, ctx, 5).shards]
    assert sorted(shards) == list(range(11))


def test_unbalanced_record_split_warns_once():
    with pytest.warns(RecordLevelSplitWarning):
        plan = assign_shards(2, Context(0, 2, 0, 2), None)
    assert plan.record_level and plan.stride == 4
