"""The ``torchseq`` command line. Each command lives in its own module here and
declares ``SUMMARY``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)``; the work
itself is in :mod:`torchseq.tools` and the library.

One exit-code rule for every command (docs/cli.md): 0 success; 1 the data or
the file system stopped the command (the message, naming the place, on stderr
as ``torchseq COMMAND: ...``, no traceback); 2 the command line is wrong on its
face, found before any file is touched (argparse's errors, or
:class:`UsageError`: the usage line, then ``torchseq COMMAND: error: ...``);
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# command name -> module under torchseq.cli
COMMANDS = {
    "demo": "torchseq.cli.demo",
    "index": "torchseq.cli.index",
    "inspect": "torchseq.cli.inspect",
    "convert": "torchseq.cli.convert",
    "pretokenize": "torchseq.cli.pretokenize",
}
#: The exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


class UsageError(Exception):
    """Arguments that parse but do not go together: exit code 2, like argparse's own errors."""


def version() -> str:
    """The installed distribution's version (importlib.metadata)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("torchseq")
    except PackageNotFoundError:
        return "(version unknown: torchseq is not installed, only on the import path)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchseq", description="Streaming text-pair pipelines for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"torchseq {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.SUMMARY, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(_run=module.run, _parser=command)
    return parser


def describe(exc: BaseException) -> str:
    """An error as one line: torchseq's own messages as they are, an OS error as ``path: what``."""
    from torchseq.errors import TorchseqError

    if isinstance(exc, OSError) and not isinstance(exc, TorchseqError) and exc.filename and exc.strerror:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        return f"{where}: {exc.strerror}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    from torchseq.errors import TorchseqError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args._run(args)
    except UsageError as exc:
        args._parser.error(str(exc))  # exits 2
    except (TorchseqError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):  # the reader of stdout left (`| head`): not an error
            _silence_stdout()
            return 1
        print(f"torchseq {args.command}: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"torchseq {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return result


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (stdout replaced, e.g. under pytest)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
