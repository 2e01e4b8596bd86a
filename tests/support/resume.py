"""The one resume-test helper every stateful stage goes through.

``check_resume(make, num_workers, cuts)`` runs the pipeline built by ``make``
uninterrupted under ``StatefulDataLoader``, then for each cut takes
``state_dict()`` after ``cut`` batches, round-trips it through
``torch.save``/``torch.load(weights_only=True)`` and a pickle of the pipeline,
resumes in a fresh loader and checks that the rest equals the uninterrupted
tail exactly (ids and order).
"""

from __future__ import annotations

import io
import itertools
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader


def fingerprint(batch: Any) -> Any:
    """A comparable, exact summary of a batch (tensors -> nested lists)."""
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: fingerprint(v) for k, v in sorted(batch.items())}
    if isinstance(batch, (list, tuple)):
        return [fingerprint(v) for v in batch]
    if hasattr(batch, "tolist"):
        return batch.tolist()
    return batch


def weights_only_roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, Any] = torch.load(buffer, weights_only=True)
    return loaded


def run(make: Callable[[], Any], num_workers: int, epoch: int = 0, limit: int | None = None) -> list[Any]:
    """The batches of an uninterrupted run (the first ``limit`` of them, for endless pipelines)."""
    pipe = make()
    pipe.set_epoch(epoch)
    loader = StatefulDataLoader(pipe, batch_size=None, num_workers=num_workers)
    return [fingerprint(b) for b in itertools.islice(loader, limit)]


def resume_after(
    make: Callable[[], Any], num_workers: int, cut: int, epoch: int = 0, limit: int | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Batches delivered after resuming from a state taken at ``cut`` batches (at most ``limit``)."""
    pipe = make()
    pipe.set_epoch(epoch)
    loader = StatefulDataLoader(pickle.loads(pickle.dumps(pipe)), batch_size=None, num_workers=num_workers)
    iterator = iter(loader)
    for _ in range(cut):
        next(iterator)
    state = weights_only_roundtrip(loader.state_dict())
    del iterator, loader
    fresh = StatefulDataLoader(make(), batch_size=None, num_workers=num_workers)
    fresh.load_state_dict(state)
    return [fingerprint(b) for b in itertools.islice(fresh, limit)], state


def check_resume(
    make: Callable[[], Any], num_workers: int, cuts: Sequence[str | int] = ("0", "1", "mid", "end")
) -> list[Any]:
    """Assert exact resume at each cut; returns the uninterrupted batches."""
    full = run(make, num_workers)
    assert full, "pipeline produced no batches"
    named = {"0": 0, "1": 1, "mid": len(full) // 2, "end": len(full) - 1, "last": len(full)}
    for cut in cuts:
        n = named[cut] if isinstance(cut, str) else cut
        rest, _ = resume_after(make, num_workers, n)
        assert len(rest) == len(full) - n, f"cut {cut}: {len(rest)} batches after resume, expected {len(full) - n}"
        assert rest == full[n:], f"cut {cut}: resumed batches differ from the uninterrupted run"
    return full
