"""Stage state encoding: exact round trips, compact token ids, and snapshots that reuse encodings."""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchseq.errors import StateError
from torchseq.state import SnapshotEncoder, decode_batches, decode_records, encode_record


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
    encoded = weights_only(SnapshotEncoder()(original))
    assert encoded["count"] == 60 and all(isinstance(blob, bytes) for blob in encoded["__records__"])
    assert same(decode_records(encoded), original)
    # Token id lists are packed into bytes, not one int object per id.
    assert isinstance(encode_record(original[1])["tokens"]["anchor"]["data"], bytes)
    # Other lists are left exactly as they are: bools stay bools, big ints stay ints.
    assert encode_record(original[1])["flags"] == [True, False, 1] and encode_record(original[1])["big"] == [1, 2**40]


def test_out_of_range_ids_fall_back_to_plain_lists() -> None:
    record = {"tokens": {"anchor": [1, 2**35], "positive": [3, "x"]}}
    assert same(decode_records(SnapshotEncoder()([record])), [record])


def test_batches_round_trip_with_their_sizes() -> None:
    batches = [records(4, seed=1), records(1, seed=2), records(3, seed=3)]
    encoder = SnapshotEncoder()
    encoded = weights_only(encoder.encode_batches(batches))
    encoder.done()
    assert encoded["sizes"] == [4, 1, 3] and encoded["count"] == 8
    assert same(decode_batches(encoded), batches)


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
        state = weights_only({"pool": encoder.encode(pool), "ready": encoder.encode_batches(ready)})
        encoder.done()
        assert same(decode_records(state["pool"]), pool), f"step {step}"
        assert same(decode_batches(state["ready"]), ready), f"step {step}"


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
    with pytest.raises(StateError, match="^pool: record 0 is damaged .*builtins only"):
        decode_records({"__records__": [evil], "count": 1}, "pool")
    assert not marker.exists()
    with pytest.raises(StateError, match="^pool: record 1 is damaged"):
        decode_records({"__records__": [pickle.dumps("ok"), b"\x80\x05not a pickle"], "count": 2}, "pool")


@pytest.mark.parametrize(("collection", "message"), [
    ({"__records__": [pickle.dumps(1)], "count": 2}, "pool: checkpoint holds 1 records where its count says 2"),
    ({"__records__": [pickle.dumps(1)]}, "pool: checkpoint has .*pipeline needs a collection of records"),
    ([pickle.dumps(1)], "pool: checkpoint has .*pipeline needs a collection of records"),
    ({"__records__": [7], "count": 1}, "pool: record 0 is 7, pipeline needs the bytes of a pickle"),
])
def test_a_malformed_collection_names_its_field(collection: Any, message: str) -> None:
    with pytest.raises(StateError, match=f"^{message}"):
        decode_records(collection, "pool")


def test_shared_strings_and_empty_tuples_are_records_too() -> None:
    """The memo shares strings (and ``()``) legitimately; only shared containers are refused."""
    text = "the same negative"
    record = {"anchor": "a", "negatives": [text, text, text], "pair": (), "other": ()}
    assert decode_records(SnapshotEncoder()([record])) == [record]


class Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


# ------------------------------------------------------------------ bounded decoding
BOMB_CHILD = r"""
import gc, pickle, resource, sys, time
import torchseq.state as state

kind = sys.argv[1]
if kind == "shared":
    # A billion laughs: each level holds its predecessor 8 times over, so the pickle
    # is a few hundred bytes (the memo shares every level) and the tree 8**20 lists.
    node = []
    for _ in range(20):
        node = [node] * 8
elif kind == "cycle":
    node = []
    node.append(node)
if kind == "deep":  # lists nested far deeper than Python's recursion limit: push, then append
    blob = b"\x80\x04" + b"]" * 20_000 + b"a" * 19_999 + b"."
elif kind == "many":  # 6 MB of pickle building 3 million empty lists
    blob = b"\x80\x04]" + b"]a" * 3_000_000 + b"."
else:
    blob = pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL)
print(len(blob), flush=True)
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (256 << 20), resource.RLIM_INFINITY))
gc.freeze()  # time the decoder, not a first full collection of the objects torch made at import
start = time.perf_counter()
try:
    state.decode_records({"__records__": [blob], "count": 1}, "buffer")
except BaseException as exc:
    print(f"{type(exc).__name__} {time.perf_counter() - start:.3f} {str(exc)[:300]}", flush=True)
else:
    print(f"accepted {time.perf_counter() - start:.3f}", flush=True)
"""


@pytest.mark.parametrize("kind", ["shared", "cycle", "deep", "many"])
def test_a_pickle_bomb_in_a_checkpoint_is_refused_fast(kind: str, tmp_path: Path) -> None:
    """Shared nested lists (374 bytes of pickle), a list holding itself, 20,000 levels, 3 million lists.

    Each is a StateError within half a second; the last one's opcodes are counted before any list is
    built (seconds, not the minutes and gigabytes of building them).

    Run in a child whose address space is capped 256 MB above its size after imports.
    """
    script = tmp_path / "bomb.py"
    script.write_text(BOMB_CHILD)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    try:
        done = subprocess.run([sys.executable, str(script), kind], env=env, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{kind}: decoding did not finish in 60 s")
    lines = done.stdout.splitlines()
    assert len(lines) == 2, f"{kind}: the child died ({done.returncode}):\n{done.stderr[-2000:]}"
    if kind == "shared":
        assert int(lines[0]) < 400  # the bomb of the report was 374 bytes
    outcome, elapsed, message = (lines[1].split(" ", 2) + [""])[:3]
    assert outcome == "StateError", lines[1]
    assert float(elapsed) < (5.0 if kind == "many" else 0.5), lines[1]
    assert message.startswith("buffer: record 0 "), message
