"""Lightning integration: :class:`PairDataModule`.

Three things a streaming pipeline needs from Lightning that Lightning does not
do by itself, and that this module does:

* **Epochs.** Lightning calls ``set_epoch`` on samplers only; an
  ``IterableDataset`` would see epoch 0 forever (the same shuffle every epoch).
  The train loader sets the pipeline's epoch to ``trainer.current_epoch``
  each time Lightning starts iterating it.
* **Exact resume.** Lightning fetches one batch ahead of the training step,
  so a loader's own state in a checkpoint is one batch past the last batch
  trained on, and resuming would skip a batch. The loader keeps the batches
  it handed out that training has not consumed yet, and puts them into its
  state; a resumed loader yields them first, then continues the stream.
* **DDP.** Lightning writes checkpoints from rank 0 only. The DataModule
  gathers every rank's loader state into its own ``state_dict`` and, on
  ``Trainer.fit(ckpt_path=...)``, gives each rank its own.

It also measures the batches training consumes (:class:`~torchseq.meter.BatchMeter`)
and logs them, with the stages' counters, every ``log_every_n_steps`` steps.

Needs ``lightning`` (``pip install 'torchseq[lightning]'``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "torchseq.lightning needs Lightning: pip install 'torchseq[lightning]' (or pip install lightning)"
    ) from exc
import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from torchseq.errors import StateError
from torchseq.meter import BatchMeter, deferral_rate, pipeline_counters
from torchseq.pipeline import Pipeline
from torchseq.state import check_field, show

__all__ = ["EpochLoader", "PairDataModule"]

_PENDING = "torchseq_pending"
_LOADER = "loader"


class EpochLoader(StatefulDataLoader):  # type: ignore[misc]  # torchdata ships no types
    """A ``StatefulDataLoader`` over a pipeline that sets the pipeline's epoch itself.

    Args:
        pipeline: the pipeline (batches itself: ``batch_size=None`` is implied).
        epoch: returns the epoch to produce when an iteration starts; ``None``
            counts iterations (0, 1, 2, ...).
        track_consumption: keep handed-out batches until :meth:`consumed` is
            called for them, and include those in :meth:`state_dict` (for
            loops that fetch ahead, such as Lightning's).
        **kwargs: passed to ``StatefulDataLoader`` (``num_workers``, ...).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        epoch: Callable[[], int] | None = None,
        *,
        track_consumption: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pipeline, batch_size=None, **kwargs)
        self._epoch_fn = epoch
        self._iterations = 0
        self._track = track_consumption
        self._pending: deque[Any] = deque()
        self._replay: list[Any] = []
        self._pinned = False
        self._live = False

    def __iter__(self) -> Iterator[Any]:
        epoch = self._epoch_fn() if self._epoch_fn is not None else self._iterations
        self._iterations += 1
        self.dataset.set_epoch(epoch)
        replay, self._replay = self._replay, []
        self._pinned = False
        self._pending.clear()
        return self._batches(replay, super().__iter__())

    def _batches(self, replay: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
        self._live = True
        try:
            for batch in replay:
                if self._track:
                    self._pending.append(batch)
                yield batch
            for batch in rest:
                if self._track:
                    self._pending.append(batch)
                yield batch
        finally:
            self._live = False

    @property
    def live(self) -> bool:
        """Whether an iteration is under way (its state is the data position, not a fresh start)."""
        return self._live

    def consumed(self) -> None:
        """The oldest handed-out batch has been trained on."""
        if self._pending:
            self._pending.popleft()

    def state_dict(self) -> dict[str, Any]:
        """The loader's state as of the last consumed batch.

        With consumption tracking, batches handed out but not consumed travel
        in the state and are yielded first after a resume.
        """
        state: dict[str, Any] = super().state_dict()
        if not self._track:
            return state
        return {_LOADER: state, _PENDING: list(self._pending)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._pinned:
            # The DataModule already loaded this rank's own state; Lightning's
            # fit loop then loads the loader state it saved, which is rank 0's.
            return
        if _LOADER in state_dict:
            pending = state_dict.get(_PENDING)
            if type(pending) is not list:
                raise StateError(f"{_PENDING}: checkpoint has {show(pending)}, pipeline needs the list of "
                                 "batches handed out but not trained on")
            self._replay = list(pending)
            super().load_state_dict(state_dict[_LOADER])
        else:
            super().load_state_dict(state_dict)

    def pin_state(self, state_dict: dict[str, Any]) -> None:
        """Load ``state_dict`` and ignore further loads until the next iteration starts."""
        self._pinned = False
        self.load_state_dict(state_dict)
        self._pinned = True


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PairDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` for torchseq pipelines.

    Args:
        train: the training pipeline (ending in ``collate()``).
        val: an optional validation pipeline (always produced as epoch 0).
        num_workers: DataLoader workers per rank.
        val_num_workers: workers for validation (default: ``num_workers``).
        log_every_n_steps: log data statistics this often (``0``: never).
        **loader_kwargs: more ``StatefulDataLoader`` arguments
            (``persistent_workers``, ``pin_memory``, ``prefetch_factor``, ...).

    The train loader is an :class:`EpochLoader`; its state (and every rank's,
    under DDP) is part of the DataModule's ``state_dict``, so
    ``Trainer.fit(ckpt_path=...)`` continues the stream where it stopped. Do
    not override ``on_before_batch_transfer`` in the LightningModule (Lightning
    would call that one instead, and consumption would not be tracked).
    """

    def __init__(
        self,
        train: Pipeline,
        val: Pipeline | None = None,
        *,
        num_workers: int = 2,
        val_num_workers: int | None = None,
        log_every_n_steps: int = 50,
        **loader_kwargs: Any,
    ) -> None:
        super().__init__()
        self.train_pipeline = train
        self.val_pipeline = val
        self.num_workers = num_workers
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        self.log_every_n_steps = log_every_n_steps
        self.loader_kwargs = loader_kwargs
        targets = getattr(train.source, "targets", None)
        self.meter = BatchMeter(targets=targets)
        self._train_loader: EpochLoader | None = None
        self._pending_state: dict[str, Any] | None = None
        self._counters: dict[str, int | float] = {}
        if val is None:
            # Lightning decides whether there is a validation loop by whether
            # the hook is overridden; without a val pipeline it must not be.
            self.val_dataloader = None  # type: ignore[assignment]

    # ----------------------------------------------------------- loaders
    def _current_epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def train_dataloader(self) -> EpochLoader:
        loader = EpochLoader(self.train_pipeline, self._current_epoch, track_consumption=True,
                             num_workers=self.num_workers, **self.loader_kwargs)
        if self._pending_state is not None:
            loader.pin_state(self._pending_state)
            self._pending_state = None
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> EpochLoader:
        assert self.val_pipeline is not None  # the hook is removed without one
        return EpochLoader(self.val_pipeline, lambda: 0, num_workers=self.val_num_workers, **self.loader_kwargs)

    # ----------------------------------------------------------- per batch
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is not None and trainer.training and self._train_loader is not None:
            self._train_loader.consumed()
            self.meter.update(batch)
            every = self.log_every_n_steps
            if every and trainer.logger is not None and trainer.global_step % every == 0:
                trainer.logger.log_metrics(self.stats(), step=trainer.global_step)
        return batch

    def stats(self) -> dict[str, float]:
        """Data statistics: the meter's summary plus this rank's stage counters, prefixed ``data/``.

        Counters are read from the live loader's state; after training, they
        are those of the last call during training (every log step).
        """
        out = {f"data/{k}": v for k, v in self.meter.summary().items()}
        loader = self._train_loader
        if loader is not None and loader.live:
            self._counters = pipeline_counters(loader.state_dict())
        counters = self._counters
        out.update({f"data/{k}": float(v) for k, v in counters.items()})
        if "unique.records" in counters:
            out["data/unique.deferral_rate"] = deferral_rate(counters)
        return out

    # ----------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Every rank's train-loader state (a collective under DDP: Lightning calls it on all ranks)."""
        if self._train_loader is None:
            return {}
        mine = self._train_loader.state_dict()
        rank, world_size = _rank_and_world()
        states: list[Any] = [None] * world_size
        if world_size > 1:
            dist.all_gather_object(states, mine)
        else:
            states[0] = mine
        return {"world_size": world_size, "train_loaders": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        rank, world_size = _rank_and_world()
        check_field("world_size", state_dict.get("world_size"), world_size)
        loaders = state_dict.get("train_loaders")
        if type(loaders) is not list or len(loaders) != world_size or not isinstance(loaders[rank], dict):
            raise StateError(f"train_loaders: checkpoint has {show(loaders)}, pipeline needs one loader state "
                             f"(a dict) per rank, {world_size} in all")
        mine = loaders[rank]
        if self._train_loader is not None:
            self._train_loader.pin_state(mine)
        else:
            self._pending_state = mine
