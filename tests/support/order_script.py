"""Print the batch sequence of a few runs as JSON, for ``test_determinism.py``.

Usage: ``python order_script.py CONFIG.json`` where CONFIG holds ``shards``,
``tokenizer`` and ``runs``: a list of ``{"epoch", "num_workers", "rank",
"world_size", "seed"}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch.utils.data import DataLoader

import torchseq as ts  # noqa: E402
from tests.support.resume import fingerprint


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    out = []
    for run in config["runs"]:
        pipe = (
            ts.read_jsonl(config["shards"])
            .shuffle(buffer_size=30, seed=run["seed"])
            .tokenize(config["tokenizer"], max_length=24)
            .bucket(8, pool_batches=3, seed=run["seed"])
            .collate()
            .with_topology(run["rank"], run["world_size"])
        )
        pipe.set_epoch(run["epoch"])
        loader = DataLoader(pipe, batch_size=None, num_workers=run["num_workers"])
        out.append([fingerprint(batch) for batch in loader])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
