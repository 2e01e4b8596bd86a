"""The systems compared, each written the way its users write it.

Every ``make_*`` returns an iterable of batches for ``num_workers`` DataLoader
(or ParallelMapper) workers; :func:`rows_of` turns any system's batch into
(anchor ids, positive ids) rows for the exactly-once / identical-ids check.
All use the same ``tokenizer.json``, batch 64, max_length 128. The peers load
it the way their users do, through ``transformers.AutoTokenizer`` (a
``PreTrainedTokenizerFast``), and pad each batch to its longest row.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data.datapipes.datapipe import IterDataPipe

from benchmarks.common import (
    BATCH_SIZE,
    JSONL_SHARDS,
    MAX_LENGTH,
    TOKENIZER,
    TOKENIZER_DIR,
    WDS_SHARDS,
    Row,
    masked_rows,
    pretokenized_dir,
    read_pairs,
)

Pair = tuple[str, str]


def hf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


class PairCollate:
    """The usual ``collate_fn``: tokenize both sides of a list of pairs with the HF tokenizer."""

    def __init__(self) -> None:
        self.tok: Any = None

    def __call__(self, pairs: list[Pair]) -> dict[str, Any]:
        if self.tok is None:  # built in the worker, once
            self.tok = hf_tokenizer()
        anchors, positives = zip(*pairs, strict=True)
        kw = {"padding": True, "truncation": True, "max_length": MAX_LENGTH, "return_tensors": "pt"}
        return {"anchor": dict(self.tok(list(anchors), **kw)), "positive": dict(self.tok(list(positives), **kw))}


def iter_pairs(shards: list[str]) -> Iterator[Pair]:
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                anchor, positive = json.loads(line)[:2]
                yield anchor, positive


# ----------------------------------------------------------------- torchseq
def make_torchseq(shards: list[str], num_workers: int) -> Iterable[Any]:
    import torchseq as ts

    # The recommended pipeline: length-bucketed batches of 64 (padding 0.92
    # instead of the peers' ~0.52), at the cost of filling a pool first.
    pipe = ts.read_jsonl(shards).tokenize(TOKENIZER, max_length=MAX_LENGTH).bucket(BATCH_SIZE).collate()
    return DataLoader(pipe, batch_size=None, num_workers=num_workers)


def make_torchseq_pretokenized(shards: list[str], num_workers: int) -> Iterable[Any]:
    import torchseq as ts
    from torchseq.sources.manifest import manifest_shards as index_shards

    listed = index_shards(pretokenized_dir(JSONL_SHARDS))
    assert listed is not None
    names = {s.rsplit("/", 1)[-1].split(".")[0].removeprefix("train-") for s in shards}
    chosen = [p for p in listed if p.rsplit("/", 1)[-1].split(".")[0].removeprefix("shard-") in names]
    pipe = ts.read_webdataset(chosen).bucket(BATCH_SIZE).collate()
    return DataLoader(pipe, batch_size=None, num_workers=num_workers)


# ----------------------------------------------------------------- peers
class HandWrittenPairs(IterableDataset[Pair]):
    """What people write by hand: shards split over workers, one JSON list per line."""

    def __init__(self, shards: list[str]) -> None:
        self.shards = shards

    def __iter__(self) -> Iterator[Pair]:
        info = get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        return iter_pairs(shards)


def make_handwritten(shards: list[str], num_workers: int) -> Iterable[Any]:
    return DataLoader(HandWrittenPairs(shards), batch_size=BATCH_SIZE, num_workers=num_workers,
                      collate_fn=PairCollate())


def _hf_map(batch: dict[str, list[str]], tok: Any) -> dict[str, Any]:
    pairs = [json.loads(line) for line in batch["text"]]
    anchors = tok([p[0] for p in pairs], truncation=True, max_length=MAX_LENGTH)
    positives = tok([p[1] for p in pairs], truncation=True, max_length=MAX_LENGTH)
    return {"anchor_input_ids": anchors["input_ids"], "positive_input_ids": positives["input_ids"]}


class PadCollate:
    """Pad the two tokenized columns of a list of dataset rows with ``tokenizer.pad``."""

    def __init__(self) -> None:
        self.tok: Any = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.tok is None:
            self.tok = hf_tokenizer()
        out = {}
        for name in ("anchor", "positive"):
            features = [{"input_ids": r[f"{name}_input_ids"]} for r in rows]
            out[name] = dict(self.tok.pad(features, return_tensors="pt"))
        return out


def make_hf_datasets(shards: list[str], num_workers: int) -> Iterable[Any]:
    import datasets

    datasets.disable_progress_bars()
    # JSON lists per line are not what the "json" builder reads: text + json.loads it is.
    ds = datasets.load_dataset("text", data_files=shards, split="train", streaming=True)
    ds = ds.map(_hf_map, batched=True, batch_size=BATCH_SIZE, remove_columns=["text"],
                fn_kwargs={"tok": hf_tokenizer()})
    return DataLoader(ds, batch_size=BATCH_SIZE, num_workers=num_workers, collate_fn=PadCollate())


def _wds_pair(sample: dict[str, Any]) -> Pair:
    return sample["json"]["anchor"], sample["json"]["positive"]


def make_webdataset(shards: list[str], num_workers: int) -> Iterable[Any]:
    import webdataset as wds

    names = {s.rsplit("/", 1)[-1].split(".")[0] for s in shards}
    urls = [u for u in WDS_SHARDS if u.rsplit("/", 1)[-1].split(".")[0] in names]
    dataset = (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode()
        .map(_wds_pair)
        .batched(BATCH_SIZE, collation_fn=list, partial=True)
        .map(PairCollate())
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)


class JsonlGzPairs(IterDataPipe[Pair]):  # torch core has no line reader / decompressor
    """Pairs of the shards a DataPipe yields (module level: DataLoader pickles the graph for its workers)."""

    def __init__(self, source: IterDataPipe[str]) -> None:
        self.source = source

    def __iter__(self) -> Iterator[Pair]:
        for shard in self.source:
            yield from iter_pairs([shard])


def make_datapipes(shards: list[str], num_workers: int) -> Iterable[Any]:
    from torch.utils.data.datapipes.iter import IterableWrapper

    pipe = JsonlGzPairs(IterableWrapper(shards).sharding_filter()).batch(BATCH_SIZE).map(PairCollate())
    return DataLoader(pipe, batch_size=None, num_workers=num_workers)


def make_nodes(shards: list[str], num_workers: int) -> Iterable[Any]:
    from torchdata import nodes

    node: Any = nodes.Batcher(nodes.IterableWrapper(iter_pairs(shards)), batch_size=BATCH_SIZE, drop_last=False)
    if num_workers:
        node = nodes.ParallelMapper(node, map_fn=PairCollate(), num_workers=num_workers, method="process")
    else:
        node = nodes.Mapper(node, map_fn=PairCollate())
    return nodes.Loader(node)


# ----------------------------------------------------------------- baseline
def make_tokenizer_alone(shards: list[str], num_workers: int) -> Iterable[Any]:
    """The fast tokenizer alone on texts already in memory (single process, one thread)."""
    import tokenizers

    pairs = read_pairs(shards)
    tok = tokenizers.Tokenizer.from_file(TOKENIZER)
    tok.enable_truncation(MAX_LENGTH)

    def batches() -> Iterator[Any]:
        for start in range(0, len(pairs), BATCH_SIZE):
            chunk = pairs[start : start + BATCH_SIZE]
            anchors = [e.ids for e in tok.encode_batch([a for a, _ in chunk])]
            positives = [e.ids for e in tok.encode_batch([p for _, p in chunk])]
            yield list(zip(anchors, positives, strict=True))

    return _Lazy(batches)


class _Lazy:
    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return self.make()


SYSTEMS: dict[str, Callable[[list[str], int], Iterable[Any]]] = {
    "tokenizer alone": make_tokenizer_alone,
    "torchseq": make_torchseq,
    "torchseq pretokenized": make_torchseq_pretokenized,
    "hand-written": make_handwritten,
    "hf datasets": make_hf_datasets,
    "webdataset": make_webdataset,
    "datapipes": make_datapipes,
    "torchdata.nodes": make_nodes,
}
PEERS = ("hand-written", "hf datasets", "webdataset", "datapipes", "torchdata.nodes")


def rows_of(batch: Any) -> list[Row]:
    if isinstance(batch, list):  # the tokenizer-alone baseline yields id rows directly
        return [(tuple(a), tuple(p)) for a, p in batch]
    return masked_rows(batch)


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, list):
        return len(batch)
    return int(batch["anchor"]["input_ids"].shape[0])


