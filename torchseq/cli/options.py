"""Command-line options shared by the commands that read corpora."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from torchseq.errors import ConfigError


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``, else a usage error (exit 2) naming the option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def add_reader_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", dest="reader", choices=["auto", "jsonl", "webdataset"], default="auto",
                        help="shard format (auto: tar names and directories are WebDataset, the rest JSON Lines)")
    parser.add_argument("--fields", metavar="TARGET=KEY,...",
                        help="map record fields to keys, e.g. anchor=question,positive=answer")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for URLs (repeatable; VALUE may be JSON)")


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what}: expected KEY=VALUE, got {part!r}")
        out[key.strip()] = value.strip()
    return out


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """``reader``, ``fields`` and ``storage_options`` from the parsed arguments."""
    options: dict[str, Any] = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--storage-option: expected KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return {
        "reader": args.reader,
        "fields": _pairs(args.fields, "--fields") if args.fields else None,
        "storage_options": options or None,
    }
