"""The ``torchseq`` command line. Each command lives in its own module here and
registers itself through ``add_parser(subparsers)`` / ``run(args)``."""

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchseq", description="Streaming text-pair pipelines for PyTorch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        module = importlib.import_module(module_name)
        command = module.add_parser(sub)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args._run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
