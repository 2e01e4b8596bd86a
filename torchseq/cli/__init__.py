"""The ``torchseq`` command line. Each command lives in its own module here and
declares ``SUMMARY``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)``; the work
itself is in :mod:`torchseq.tools` and the library.

One exit-code rule for every command: 0 success; 1 a data or I/O error (the
message, naming the place, on stderr as ``torchseq COMMAND: ...``, no
traceback); 2 a usage error (argparse's, or :class:`UsageError`).
"""

from __future__ import annotations

import argparse
import importlib
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


class UsageError(Exception):
    """Arguments that parse but do not go together: exit code 2, like argparse's own errors."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchseq", description="Streaming text-pair pipelines for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.SUMMARY, description=module.DESCRIPTION)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from torchseq.errors import TorchseqError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args._run(args)
    except UsageError as exc:
        parser.exit(2, f"torchseq {args.command}: {exc}\n")
    except (TorchseqError, OSError) as exc:
        print(f"torchseq {args.command}: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
