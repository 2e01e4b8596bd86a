"""Output files that appear whole or not at all (``convert``, ``pretokenize``).

Each output is written under a temporary name beside it, ``DIR/.NAME.tmp-PID``,
and renamed to ``NAME`` when complete: ``os.replace`` is atomic, so a reader
sees the old file or the new one, never a part. Temporaries are hidden, so
globs such as ``DIR/*.tar`` never match them, and carry the writer's process
id, so a later run removes what a killed run left (:func:`remove_stale`)
without touching the files of a run that is still writing.
"""

from __future__ import annotations

import glob
import os
from typing import IO

TMP_MARK = ".tmp-"


def temporary_name(path: str) -> str:
    """The name ``path`` is written under until it is complete."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{TMP_MARK}{os.getpid()}")


def is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temporaries(directory: str, name: str = "*") -> list[tuple[str, int]]:
    """``(path, pid)`` of the temporaries of outputs named ``name`` (a glob) in ``directory``."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), f".{name}{TMP_MARK}*")):
        pid = path.rpartition(TMP_MARK)[2]
        if pid.isdigit():
            found.append((path, int(pid)))
    return sorted(found)


def remove_stale(directory: str, name: str = "*") -> list[tuple[str, int]]:
    """Remove the temporaries that killed runs left; return those of runs still writing."""
    live = []
    for path, pid in temporaries(directory, name):
        if is_running(pid):
            live.append((path, pid))
        else:
            os.remove(path)
    return live


def cannot_write(path: str, exc: OSError) -> OSError:
    """``exc`` (raised for a temporary or a directory) restated for the output the user named."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):  # from makedirs / open below a file
        reason = "a part of its directory path is a file"
    else:
        reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot write the output ({reason}); check that its directory can be "
                   "created and written", path)


def open_temporary(path: str) -> tuple[str, IO[bytes]]:
    """Create ``path``'s directory if needed and open its temporary for writing.

    Raises:
        OSError: naming ``path`` (not the temporary) when either cannot be made.
    """
    tmp = temporary_name(path)
    try:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return tmp, open(tmp, "wb")  # noqa: SIM115 - the caller closes it, then commits or removes it
    except OSError as exc:
        raise cannot_write(path, exc) from None
