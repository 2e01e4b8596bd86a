"""Records and token ids as builtins, and the bounded way back.

Records held in a stage's state (a shuffle buffer, a pool, a partial batch)
travel as a *collection*: ``{"__records__": [pickle, ...], "count": n}``
(``"sizes"`` too for a list of batches). Each pickle holds one record as
builtins (:func:`encode_record`) and is read back by an unpickler that looks
up no global, then walked once within bounds (:data:`MAX_DEPTH`,
:data:`MAX_NODES`, a bytes budget) that refuse a shared or self-containing
container (and a pickle of more than :data:`SCAN_BYTES` is first scanned
for more than :data:`MAX_NODES` opcodes), so a few hundred bytes cannot
decode into gigabytes, nor a large pickle into millions of objects, and a
damaged or tampered collection is a :class:`~torchseq.errors.StateError`
naming the field.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np

from torchseq.errors import StateError
from torchseq.state.checks import show

State = dict[str, Any]

_ARRAY_TAG = "__ndarray__"
_INTS_TAG = "__ints__"
_BLOBS_TAG = "__records__"
_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})
_BIG_ENDIAN = sys.byteorder == "big"  # packed token ids are stored little-endian

#: Nesting a held record may have (the decoder recurses that deep).
MAX_DEPTH = 100
#: Values (containers and leaves) one held record may hold, and pickle opcodes a large one may have.
MAX_NODES = 1 << 18
#: Pickles larger than this are scanned before they are unpickled (a smaller one builds few objects).
SCAN_BYTES = 1 << 16
#: Text and bytes one record may reference, at least; else 16 times its pickle (strings are shared by reference).
MIN_BYTES_BUDGET = 64 << 20


def _blob(data: bytes) -> bytes | str:
    """``data`` for a state: empty bytes as ``""``.

    ``torch.save`` pickles with protocol 2, where ``b""`` becomes a call to the
    global ``bytes``, which ``torch.load(weights_only=True)`` refuses (non-empty
    bytes go through an allowed codec call). Decoders read ``data or b""``.
    """
    return data if data else ""


def _pack_ids(value: Any) -> Any:
    """Token ids (a list of ints, or a list of such lists for negatives) as compact tagged bytes.

    Anything else, or ids out of int32 range, goes through :func:`encode_value`.
    """
    if type(value) is list and value:
        if type(value[0]) is list:
            return [_pack_ids(v) for v in value]
        if type(value[0]) is int:
            try:
                packed = array("i", value)
            except (TypeError, OverflowError):
                return encode_value(value)
            if _BIG_ENDIAN:
                packed.byteswap()
            return {_INTS_TAG: "i", "data": _blob(packed.tobytes())}
    return encode_value(value)


def _unpack_ints(value: dict[str, Any]) -> list[int]:
    packed = array(value[_INTS_TAG], value["data"] or b"")
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tolist()


def encode_record(record: Any) -> Any:
    """:func:`encode_value` of a record, its token ids packed as int32 bytes (see :func:`_pack_ids`)."""
    if type(record) is dict and type(record.get("tokens")) is dict:
        return {key: ({name: _pack_ids(ids) for name, ids in value.items()} if key == "tokens"
                      else encode_value(value))
                for key, value in record.items()}
    return encode_value(record)


def encode_value(value: Any) -> Any:
    """Turn numpy arrays inside builtins into tagged builtins (bytes + dtype + shape)."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: value.dtype.str, "shape": list(value.shape), "data": _blob(value.tobytes())}
    if isinstance(value, dict):
        return {k: encode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(encode_value(v) for v in value)
    return value


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` and :func:`encode_record` (for trees :func:`check_tree` accepted)."""
    if type(value) in _LEAVES:
        return value
    if isinstance(value, dict):
        if _ARRAY_TAG in value:
            flat = np.frombuffer(value["data"] or b"", dtype=np.dtype(value[_ARRAY_TAG]))
            if flat.dtype.hasobject:
                raise ValueError("an object array")
            return flat.reshape(value["shape"]).copy()
        if _INTS_TAG in value:
            return _unpack_ints(value)
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(decode_value(v) for v in value)
    return value


def check_tree(value: Any, budget: int) -> None:
    """Refuse what is not a bounded tree of builtins, without recursing.

    Raises:
        ValueError: a container reached twice (shared, or holding itself), too
            deep, too many values, more than ``budget`` bytes of text, or a
            type that is not a builtin.
    """
    seen: set[int] = set()
    pending = [(value, 1)]
    nodes = 0
    while pending:
        node, depth = pending.pop()
        nodes += 1
        kind = type(node)
        if kind in (str, bytes):
            budget -= len(node)
            if budget < 0:
                raise ValueError("it references more text than its pickle holds (shared strings)")
        elif kind in _CONTAINERS:
            if not node:
                continue  # empty ones may be shared (``()`` is a singleton) and hold nothing
            if id(node) in seen:
                raise ValueError("a container is shared or holds itself")
            seen.add(id(node))
            if depth > MAX_DEPTH:
                raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels")
            items = [*node.keys(), *node.values()] if kind is dict else node
            if nodes + len(items) > MAX_NODES:
                raise ValueError(f"it holds more than {MAX_NODES} values")
            pending.extend((item, depth + 1) for item in items)
        elif kind not in _LEAVES:
            raise ValueError(f"it holds a {kind.__name__}")


class _BuiltinsOnly(pickle.Unpickler):
    """Reads pickles of builtins only: no global is ever looked up, so a blob cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; states hold builtins only")


def _scan(blob: bytes) -> None:
    """Refuse a large pickle of more than :data:`MAX_NODES` opcodes before building its objects."""
    for count, _ in enumerate(pickletools.genops(blob)):
        if count > MAX_NODES:
            raise ValueError(f"its pickle has more than {MAX_NODES} opcodes")


def load_record(blob: Any, field: str, index: int) -> Any:
    """One held record from its pickle, or a :class:`StateError` naming ``field`` and the record."""
    if type(blob) is not bytes or not blob:
        raise StateError(f"{field}: record {index} is {show(blob)}, pipeline needs the bytes of a pickle")
    try:
        if len(blob) > SCAN_BYTES:
            _scan(blob)
        raw = _BuiltinsOnly(io.BytesIO(blob)).load()
        check_tree(raw, max(MIN_BYTES_BUDGET, 16 * len(blob)))
        return decode_value(raw)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged pickle raises, it is a damaged record
        raise StateError(f"{field}: record {index} is damaged ({type(exc).__name__}: {exc}); "
                         "the checkpoint was cut short or modified") from None


class SnapshotEncoder:
    """Collections of records for states that are snapshotted again and again.

    ``StatefulDataLoader`` takes a snapshot every step by default, and a
    shuffle buffer or bucket pool holds thousands of records, most of them
    unchanged since the last one: re-encoding them all cost ~120 ms per
    snapshot for a pool of 4,096 tokenized pairs, and pickling them through
    the worker queue (and unpickling in the main process) another ~14 ms.
    Here a record is encoded once, into one pickle of builtins, while it
    stays in the collections of one snapshot (records are never modified
    once they sit in a buffer or pool): a snapshot is a list of byte strings.
    Call :meth:`encode` / :meth:`encode_batches` for each collection of one
    snapshot, then :meth:`done`; read them back with :func:`decode_records` /
    :func:`decode_batches`.
    """

    __slots__ = ("_kept", "_used")

    def __init__(self) -> None:
        self._kept: dict[int, tuple[Any, bytes]] = {}
        self._used: dict[int, tuple[Any, bytes]] = {}

    def _blobs(self, records: Iterable[Any]) -> list[bytes]:
        kept, used = self._kept, self._used
        out = []
        for record in records:
            key = id(record)
            entry = used.get(key) or kept.get(key)
            if entry is None or entry[0] is not record:
                # The entry holds the record, so its id cannot be reused meanwhile.
                entry = (record, pickle.dumps(encode_record(record), protocol=pickle.HIGHEST_PROTOCOL))
            used[key] = entry
            out.append(entry[1])
        return out

    def encode(self, records: Iterable[Any]) -> State:
        blobs = self._blobs(records)
        return {_BLOBS_TAG: blobs, "count": len(blobs)}

    def encode_batches(self, batches: Iterable[list[Any]]) -> State:
        """A list of batches as one collection: the records in order, and each batch's size."""
        batches = list(batches)
        blobs = self._blobs(record for batch in batches for record in batch)
        return {_BLOBS_TAG: blobs, "count": len(blobs), "sizes": [len(b) for b in batches]}

    def done(self) -> None:
        """End a snapshot: forget the records it did not include."""
        self._kept, self._used = self._used, {}

    def __call__(self, records: Iterable[Any]) -> State:
        """A snapshot of one collection: :meth:`encode`, then :meth:`done`."""
        encoded = self.encode(records)
        self.done()
        return encoded


def _blobs_of(value: Any, field: str, keys: frozenset[str]) -> list[Any]:
    if type(value) is not dict or set(value) != keys:
        raise StateError(f"{field}: checkpoint has {show(value)}, pipeline needs a collection of records "
                         f"(a dict of {sorted(keys)})")
    blobs, count = value[_BLOBS_TAG], value["count"]
    if type(blobs) is not list:
        raise StateError(f"{field}: checkpoint has {show(blobs)} for its records, pipeline needs a list")
    if type(count) is not int or count != len(blobs):
        raise StateError(f"{field}: checkpoint holds {len(blobs)} records where its count says {show(count)}; "
                         "the checkpoint was cut short or modified")
    return blobs


_RECORDS_KEYS = frozenset({_BLOBS_TAG, "count"})
_BATCHES_KEYS = frozenset({_BLOBS_TAG, "count", "sizes"})


def decode_records(value: Any, field: str = "records") -> list[Any]:
    """The records of a collection (:meth:`SnapshotEncoder.encode`).

    Raises:
        StateError: naming ``field``, when the collection is malformed or a record damaged.
    """
    return [load_record(blob, field, i) for i, blob in enumerate(_blobs_of(value, field, _RECORDS_KEYS))]


def decode_batches(value: Any, field: str = "batches") -> list[list[Any]]:
    """The batches of a collection (:meth:`SnapshotEncoder.encode_batches`).

    Raises:
        StateError: naming ``field``, when the collection is malformed or a record damaged.
    """
    blobs = _blobs_of(value, field, _BATCHES_KEYS)
    sizes = value["sizes"]
    if (type(sizes) is not list or any(type(n) is not int or n < 1 for n in sizes)
            or sum(sizes) != len(blobs)):
        raise StateError(f"{field}: checkpoint has batch sizes {show(sizes)} for {len(blobs)} records")
    records = [load_record(blob, field, i) for i, blob in enumerate(blobs)]
    out, start = [], 0
    for size in sizes:
        out.append(records[start : start + size])
        start += size
    return out
