"""Seeds and random-generator state: stable across processes, machines and checkpoints."""

from __future__ import annotations

import hashlib
import random
from typing import Any


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any parts, stable across processes and machines.

    Python's ``hash`` is salted per process, so a cryptographic digest of the
    parts' reprs is used instead.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def seeded_random(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from :func:`derive_seed` of ``parts``."""
    return random.Random(derive_seed(*parts))


def restore_rng(rng: random.Random, state: Any) -> None:
    """Load a ``random.Random`` state that went through builtins (lists for tuples)."""
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))
