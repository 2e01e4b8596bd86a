"""Stage state encoding: exact round trips, compact token ids, and snapshots that reuse encodings."""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchseq.errors import StateError
from torchseq.state import SnapshotEncoder, decode_records, encode_records


def records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        tokens: dict[str, Any] = {"anchor": [rng.randrange(30_000) for _ in range(rng.randrange(1, 20))],
                                  "positive": [rng.randrange(30_000) for _ in range(rng.randrange(0, 40))]}
        if i % 3 == 0:
            tokens["negatives"] = [[rng.randrange(30_000) for _ in range(5)] for _ in range(2)]
        if i % 5 == 0:
            tokens["positive"] = np.arange(i % 7, dtype=np.uint16)  # pre-tokenized arrays stay arrays
        out.append({"anchor": f"a{i}", "positive": f"p{i}", "guid": i, "tokens": tokens,
                    "flags": [True, False, 1], "pair": (i, "x"), "big": [1, 2**40]})
    return out


def weights_only(state: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_records_round_trip_exactly_through_weights_only_load() -> None:
    original = records(60)
    encoded = weights_only(encode_records(original))
    assert same(decode_records(encoded), original)
    # Token id lists travel as bytes, not one int object per id.
    assert isinstance(encoded[1]["tokens"]["anchor"]["data"], bytes)
    # Other lists are left exactly as they are: bools stay bools, big ints stay ints.
    assert encoded[1]["flags"] == [True, False, 1] and encoded[1]["big"] == [1, 2**40]


def test_out_of_range_ids_fall_back_to_plain_lists() -> None:
    record = {"tokens": {"anchor": [1, 2**35], "positive": [3, "x"]}}
    assert same(decode_records(encode_records([record])), [record])


def test_snapshots_decode_to_the_collection_as_it_changes() -> None:
    pool = records(200, seed=1)
    encoder = SnapshotEncoder()
    rng = random.Random(2)
    extra = records(400, seed=3)
    for step in range(30):
        rng.shuffle(pool)
        del pool[: rng.randrange(10)]
        pool.extend(extra[step * 10 : step * 10 + rng.randrange(10)])
        ready = [pool[:5], pool[5:9]]
        state = weights_only({"pool": encoder.encode(pool), "ready": [encoder.encode(b) for b in ready]})
        encoder.done()
        assert same(decode_records(state["pool"]), pool), f"step {step}"
        assert same([decode_records(b) for b in state["ready"]], ready), f"step {step}"


def test_snapshot_encoder_encodes_each_record_once_and_forgets_what_left() -> None:
    pool = records(50)
    encoder = SnapshotEncoder()
    first = encoder.encode(pool)["__records__"]
    encoder.done()
    second = encoder.encode(pool[10:])["__records__"]
    encoder.done()
    assert all(a is b for a, b in zip(first[10:], second, strict=True))  # reused, not re-encoded
    assert len(encoder._kept) == 40  # the 10 that left are no longer held


def test_a_checkpoint_record_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = pickle.dumps(Touch(str(marker)))  # unpickling would run a shell command
    with pytest.raises(StateError, match="builtins only"):
        decode_records({"__records__": [evil]})
    assert not marker.exists()
    with pytest.raises(StateError, match="damaged"):
        decode_records({"__records__": [b"\x80\x05not a pickle"]})


class Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))
