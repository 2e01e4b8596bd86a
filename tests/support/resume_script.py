"""Save and resume in separate processes, for ``test_resume.py``.

``save CONFIG``: run one epoch through ``StatefulDataLoader``; after ``cut``
batches (for each cut) write ``loader.state_dict()`` with ``torch.save``; write
every batch's fingerprint. ``resume CONFIG``: for each cut, in this new
process, build a fresh pipeline and loader, load the state with
``torch.load(weights_only=True)`` and write the batches that follow.

The tokenizer is a callable that logs every text it encodes, so the test can
check that resuming never tokenizes a record that was already delivered.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

import torchseq as ts  # noqa: E402
from tests.support.resume import fingerprint


class LoggingTokenizer:
    """Encode with the real tokenizer; append each text to ``log`` (one file per process)."""

    def __init__(self, tokenizer_file: str, max_length: int, log: str) -> None:
        self.tokenizer_file = tokenizer_file
        self.max_length = max_length
        self.log = log
        self._tok: Any = None

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self._tok is None:
            import tokenizers

            self._tok = tokenizers.Tokenizer.from_file(self.tokenizer_file)
            self._tok.enable_truncation(self.max_length)
        with open(f"{self.log}.{os.getpid()}", "a") as f:
            f.writelines(json.dumps(t) + "\n" for t in texts)
        return [e.ids for e in self._tok.encode_batch(texts)]


def make(config: dict[str, Any], log: str) -> ts.Pipeline:
    tokenizer = LoggingTokenizer(config["tokenizer"], 32, log)
    return (
        ts.read_jsonl(config["shards"])
        .shuffle(buffer_size=40, seed=5)
        .tokenize(tokenizer, max_length=32, chunk_size=16)
        .bucket(8, pool_batches=4, seed=2)
        .collate()
        .with_topology(1, 2)  # rank 1 of 2: the balanced plan and the step guard are on
    )


def save(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    pipe = make(config, str(out / "tok-save"))
    total = len(pipe)
    cuts = sorted({0, 1, total // 2, total - 1, total})
    loader = StatefulDataLoader(pipe, batch_size=None, num_workers=config["num_workers"])
    batches = []
    if 0 in cuts:
        torch.save(loader.state_dict(), out / "state-0.pt")
    for batch in loader:
        batches.append(fingerprint(batch))
        if len(batches) in cuts:
            torch.save(loader.state_dict(), out / f"state-{len(batches)}.pt")
    (out / "full.json").write_text(json.dumps({"len": total, "cuts": cuts, "batches": batches}))


def resume(config: dict[str, Any]) -> None:
    out = Path(config["out"])
    cuts = json.loads((out / "full.json").read_text())["cuts"]
    for cut in cuts:
        state = torch.load(out / f"state-{cut}.pt", weights_only=True)
        loader = StatefulDataLoader(
            make(config, str(out / f"tok-resume-{cut}")), batch_size=None, num_workers=config["num_workers"]
        )
        loader.load_state_dict(state)
        rest = [fingerprint(batch) for batch in loader]
        (out / f"rest-{cut}.json").write_text(json.dumps(rest))


if __name__ == "__main__":
    mode, config_path = sys.argv[1], sys.argv[2]
    {"save": save, "resume": resume}[mode](json.loads(Path(config_path).read_text()))
