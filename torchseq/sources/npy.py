"""``.npy`` members: a strict reader (never unpickles) and a writer byte for byte like ``np.save``.

Pre-tokenized samples repeat a few hundred distinct headers (one per dtype
and length), so both directions cache headers: parsing one costs ~14 µs,
numpy's own ``np.load`` ~0.3 ms per array.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from torchseq.records import RecordFormatError

_MAX_CACHED_HEADERS = 4096

_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[iufb][1248])', 'fortran_order': (True|False), "
    rb"'shape': \(((?:\d+, )*\d+,?|)\), \} *\n"
)


_NpyLayout = tuple[np.dtype[Any], tuple[int, ...], int, str]
_NPY_LAYOUTS: dict[bytes, _NpyLayout] = {}


def decode_npy(data: bytes) -> np.ndarray:
    """A ``.npy`` member as an array, or :class:`RecordFormatError`; never unpickles.

    Only version 1/2 headers in the exact form ``numpy.save`` writes, with a
    plain numeric dtype, and a data length that matches the shape. A header
    is parsed once and its layout cached by its bytes: pre-tokenized shards
    repeat a few hundred distinct headers (one per dtype and length).
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10 or data[6] not in (1, 2):
        raise RecordFormatError("not an .npy array (bad magic or version)", "invalid npy")
    if data[6] == 1:
        body = 10 + int.from_bytes(data[8:10], "little")
    else:
        body = 12 + int.from_bytes(data[8:12], "little")
    header = data[:body]
    layout = _NPY_LAYOUTS.get(header)
    if layout is None:
        layout = _npy_layout(header, 10 if data[6] == 1 else 12)
        if len(_NPY_LAYOUTS) < _MAX_CACHED_HEADERS:
            _NPY_LAYOUTS[header] = layout
    dtype, shape, count, order = layout
    if len(data) - body != count * dtype.itemsize:
        raise RecordFormatError(
            f".npy data holds {len(data) - body} bytes, its header says {count * dtype.itemsize}",
            "invalid npy",
        )
    flat: np.ndarray = np.frombuffer(data, dtype=dtype, count=count, offset=body)
    return flat if len(shape) == 1 else flat.reshape(shape, order=order)  # type: ignore[call-overload]


def _npy_layout(header: bytes, start: int) -> _NpyLayout:
    """Dtype, shape, element count and order from a ``.npy`` header (magic and length included)."""
    match = _NPY_HEADER.fullmatch(header, start)
    if match is None:
        raise RecordFormatError("unsupported .npy header (plain numeric arrays only)", "invalid npy")
    dtype = np.dtype(match.group(1).decode())
    shape = tuple(int(n) for n in match.group(3).decode().replace(",", " ").split())
    count = 1
    for n in shape:
        count *= n
    return dtype, shape, count, "F" if match.group(2) == b"True" else "C"


_NPY_WRITE_HEADERS: dict[tuple[str, int], bytes] = {}


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """The ``.npy`` file of a 1-D array, byte for byte what ``np.save`` writes (header cached)."""
    key = (array.dtype.str, len(array))
    header = _NPY_WRITE_HEADERS.get(key)
    if header is None:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        full = buffer.getvalue()
        header = full[: len(full) - array.nbytes]
        if len(_NPY_WRITE_HEADERS) < _MAX_CACHED_HEADERS:
            _NPY_WRITE_HEADERS[key] = header
    return header + array.tobytes()
