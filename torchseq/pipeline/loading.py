"""How a pipeline meets the DataLoader that iterates it: two misuses it catches.

* **Batching again.** A pipeline that batches must be loaded with
  ``DataLoader(pipe, batch_size=None)``; the default ``batch_size=1`` would wrap
  each batch in another (``[1, B, L]`` tensors) and a larger one dies in
  ``torch.stack``. ``iter()`` and ``len()`` on the pipeline are called by the
  DataLoader's dataset fetcher (in the process that iterates: a worker, or the
  main process) and by ``DataLoader.__len__``; both hold the pipeline as
  ``dataset`` and say whether they batch (``auto_collation``, ``batch_size``).
  A ``collate_fn`` of the user's own with ``batch_size=None`` is not batching.
* **A forgotten ``set_epoch``.** A pipeline whose stream is seeded from the
  epoch repeats its previous pass exactly when iterated again at the same
  epoch; the shared pass marks (:mod:`torchseq.pipeline.shared`) tell.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import FrameType
from typing import Any

from torch.utils.data import DataLoader

from torchseq.batching import BucketBatch, TokenBudgetBatch
from torchseq.errors import ConfigError, RepeatedEpochWarning
from torchseq.pipeline.run import Description
from torchseq.pipeline.shared import SharedCell
from torchseq.sources.base import ShardSource
from torchseq.stages import BufferShuffle, SamplePairs

#: Stages whose output depends on the epoch (seeded from it).
EPOCH_SEEDED = (BufferShuffle, BucketBatch, TokenBudgetBatch, SamplePairs)


def epoch_seeded(source: Any, stages: Sequence[Any]) -> list[str]:
    """What makes the stream depend on the epoch: the shard order, seeded stages, a mixture's draws."""
    parts = [] if isinstance(source, ShardSource) and source.shuffle_seed is None else [
        "shard order" if isinstance(source, ShardSource) else f"{type(source).__name__} draws"
    ]
    return parts + [type(s).__name__ for s in stages if isinstance(s, EPOCH_SEEDED)]


def batching_stages(source: Any, stages: Sequence[Any]) -> list[str]:
    """The stages from the batching one on (``[]`` if the pipeline yields records)."""
    names = [type(s).__name__ for s in stages]
    for position, stage in enumerate(stages):
        if hasattr(stage, "balance_quantum"):
            return names[position:]
    children = getattr(source, "children", ())
    if any(batching_stages(child.source, child.stages) for child in children):
        return [f"{type(source).__name__} of batches", *names]
    return []


def refuse_rebatching(dataset: Description, caller: FrameType | None) -> None:
    """Refuse a DataLoader that would batch ``dataset``'s batches again.

    ``caller`` is the frame that called ``iter()`` or ``len()`` on the pipeline.

    Raises:
        ConfigError: the caller is a DataLoader (or its fetcher) with a
            ``batch_size`` over a pipeline that batches.
    """
    owner = caller.f_locals.get("self") if caller is not None else None
    if getattr(owner, "dataset", None) is not dataset:
        return
    if isinstance(owner, DataLoader):
        rebatching = owner.batch_size is not None
    else:
        rebatching = getattr(owner, "auto_collation", False) is True
    batching = batching_stages(dataset.source, dataset.stages) if rebatching else []
    if batching:
        raise ConfigError(
            f"DataLoader: the pipeline yields batches ({' -> '.join(batching)}), and the DataLoader "
            "would batch them again (its batch_size is not None; the default is 1), giving [1, B, L] "
            "tensors or a torch.stack error: pass DataLoader(pipe, batch_size=None, num_workers=...)"
        )


def note_pass(shared: SharedCell, source: Any, stages: Sequence[Any], epoch: int, resumed: bool) -> None:
    """A pass starts at ``epoch``: warn, once per pipeline, if it repeats the previous pass.

    A ``resumed`` pass continues an interrupted one (it never warns), but a pass after it at the
    same epoch repeats it.
    """
    seeded = epoch_seeded(source, stages)
    if seeded and shared.start_pass(epoch, resumed):
        warnings.warn(
            f"the pipeline was iterated again at epoch {epoch} with no set_epoch() since the previous "
            f"pass, so this pass repeats its order ({', '.join(seeded)}) exactly: call "
            "pipe.set_epoch(epoch) before each epoch, in the main process (warned once per pipeline)",
            RepeatedEpochWarning,
            stacklevel=3,
        )
