"""PairDataModule with a real lightning.Trainer: epochs, exact resume (also under DDP), stats."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

import torchseq as ts
from tests.support.launch import torchrun
from torchseq.errors import StateError
from torchseq.lightning import EpochLoader, PairDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*callbacks used to create the checkpoint.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*Checkpoint directory.*exists and is not empty.*:UserWarning"),
    # Lightning distrusts any IterableDataset with __len__; a balanced pipeline's is exact.
    pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined:UserWarning"),
]


def make_pipeline(spec: list[str], tokenizer_file: str) -> ts.Pipeline:
    return (ts.read_jsonl(spec).shuffle(buffer_size=16, seed=0).tokenize(tokenizer_file, max_length=24)
            .bucket(8, pool_batches=2, unique=True).collate())


class Recorder(pl.LightningModule):
    """Trains a tiny embedding and records what each step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(30522, 4)
        self.seen: list[tuple[int, list[list[int]]]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch["anchor"]["input_ids"].tolist()))
        a = self.embed(batch["anchor"]["input_ids"])
        p = self.embed(batch["positive"]["input_ids"])
        return torch.nn.functional.cross_entropy(a @ p.T, torch.arange(len(a)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: PairDataModule, max_steps: int, root: Path, ckpt_path: str | None = None,
        every: int | None = None, logger: Any = False, **trainer_kwargs: Any) -> Recorder:
    callbacks = []
    if every:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every,
                                                      save_top_k=-1))
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=logger, callbacks=callbacks,
                         enable_checkpointing=bool(every), enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, log_every_n_steps=1,
                         **trainer_kwargs)
    model = Recorder()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


@pytest.fixture
def spec(make_shards: Any) -> list[str]:
    return make_shards([20, 20, 20, 20])  # 10 batches of 8 per epoch


@pytest.mark.parametrize(("num_workers", "persistent"), [(0, False), (2, True)])
def test_epochs_are_set_by_the_datamodule(spec: list[str], tokenizer_file: str, tmp_path: Path,
                                          num_workers: int, persistent: bool) -> None:
    dm = PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=num_workers,
                        persistent_workers=persistent)
    model = fit(dm, 30, tmp_path)
    epochs = [e for e, _ in model.seen]
    assert epochs == [0] * 10 + [1] * 10 + [2] * 10
    for epoch in range(3):
        pipe = make_pipeline(spec, tokenizer_file)
        pipe.set_epoch(epoch)
        loader = DataLoader(pipe, batch_size=None, num_workers=num_workers)
        expected = [b["anchor"]["input_ids"].tolist() for b in loader]
        assert [ids for e, ids in model.seen if e == epoch] == expected
    assert model.seen[0][1] != model.seen[10][1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_checkpoint_resume_continues_the_stream_exactly(spec: list[str], tokenizer_file: str, tmp_path: Path,
                                                        num_workers: int) -> None:
    full = fit(PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=num_workers), 16, tmp_path / "a")
    fit(PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=num_workers), 8, tmp_path / "b", every=7)
    ckpt = tmp_path / "b" / "ckpt" / "epoch=0-step=7.ckpt"
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=True)["PairDataModule"]
    assert state["world_size"] == 1
    resumed = fit(PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=num_workers), 16,
                  tmp_path / "c", ckpt_path=str(ckpt))
    assert len(resumed.seen) == 9
    assert resumed.seen == full.seen[7:]  # steps 7..15, across the epoch boundary at step 10


def test_stats_are_logged(spec: list[str], tokenizer_file: str, tmp_path: Path) -> None:
    logger = pl.loggers.CSVLogger(tmp_path, name="run")
    dm = PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=0, log_every_n_steps=2)
    fit(dm, 6, tmp_path, logger=logger)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("data/pairs")]
    assert [int(float(r["step"])) for r in logged] == [0, 2, 4]
    last = logged[-1]
    assert float(last["data/pairs"]) == 5 * 8
    assert 0 < float(last["data/padding_efficiency"]) <= 1
    assert float(last["data/negatives_per_anchor"]) == 7
    assert float(last["data/unique.records"]) > 0
    assert dm.stats()["data/pairs"] == 6 * 8


def test_world_size_mismatch_is_reported(spec: list[str], tokenizer_file: str) -> None:
    dm = PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=0)
    with pytest.raises(StateError, match="world_size: checkpoint has 2"):
        dm.load_state_dict({"world_size": 2, "train_loaders": [{}, {}]})


def test_epoch_loader_without_lightning(spec: list[str], tokenizer_file: str) -> None:
    loader = EpochLoader(make_pipeline(spec, tokenizer_file), num_workers=0)
    first = [b["anchor"]["input_ids"].tolist() for b in loader]
    second = [b["anchor"]["input_ids"].tolist() for b in loader]
    pipe = make_pipeline(spec, tokenizer_file)
    pipe.set_epoch(1)
    assert second == [b["anchor"]["input_ids"].tolist() for b in pipe] != first


DDP_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch.distributed as dist
from tests.test_lightning import PairDataModule, fit, make_pipeline

spec, tokenizer_file, _, root = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
runs = {}
def run(name, steps, **kw):
    dm = PairDataModule(make_pipeline(spec, tokenizer_file), num_workers=1)
    trainer_kw = dict(kw)
    model = fit(dm, steps, root / name, **trainer_kw)
    runs[name] = model.seen
run("full", 8)
run("part", 5, every=3)
run("resumed", 8, ckpt_path=str(root / "part" / "ckpt" / "epoch=0-step=3.ckpt"))
rank = dist.get_rank()
(root / f"rank{rank}.json").write_text(json.dumps(runs))
"""


def test_ddp_resume_under_torchrun(spec: list[str], tokenizer_file: str, tmp_path: Path,
                                   subprocess_env: dict[str, str]) -> None:
    script = tmp_path / "lightning_ddp.py"
    script.write_text(DDP_SCRIPT.replace("fit(dm, steps, root / name, **trainer_kw)",
                                         "fit(dm, steps, root / name, strategy='ddp', devices=2, **trainer_kw)"))
    tests_dir = str(Path(__file__).resolve().parent)
    done = torchrun(str(script), [json.dumps(spec), tokenizer_file, tests_dir, str(tmp_path)], subprocess_env,
                    timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank_runs in runs:
        assert len(rank_runs["full"]) == 8
        assert rank_runs["resumed"] == rank_runs["full"][3:]
    # The ranks trained on different records.
    assert runs[0]["full"][0][1] != runs[1]["full"][0][1]
