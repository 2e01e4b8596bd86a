"""Padding efficiency on the dev corpus: real tokens / padded tokens over both columns.

    python -m benchmarks.padding

Streams ../shared/data/debian-pairs (pre-tokenized once with ``torchseq
pretokenize``, max_length 128: the ids are those of on-the-fly tokenization) in
file order through fixed batches, ``bucket()`` and ``batch_by_tokens()``, and
prints efficiency and mean batch size (the number of in-batch negatives per
step) for each.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import JSONL_SHARDS, pretokenized_dir


def main() -> None:
    import torchseq as ts
    from torchseq.batching.lengths import padded_tokens, real_tokens

    directory = pretokenized_dir(JSONL_SHARDS)
    rows = []
    setups = [("batch(64)", lambda p: p.batch(64))]
    setups += [(f"bucket(64, pool_batches={n})", lambda p, n=n: p.bucket(64, pool_batches=n)) for n in (16, 64, 128)]
    setups += [(f"batch_by_tokens({t})", lambda p, t=t: p.batch_by_tokens(t)) for t in (4096, 6144, 8192, 16384)]
    for name, make in setups:
        batches = list(make(ts.read_webdataset(directory)))
        real = sum(map(real_tokens, batches))
        padded = sum(map(padded_tokens, batches))
        pairs = sum(map(len, batches))
        rows.append({"setup": name, "efficiency": real / padded, "batches": len(batches),
                     "mean_batch_size": pairs / len(batches), "pairs": pairs})
        print(f"{name:>32}: efficiency {real / padded:.3f}, {len(batches)} batches, "
              f"mean batch size {pairs / len(batches):.1f}", flush=True)
    Path(__file__).resolve().parent.joinpath("padding.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
