"""The ``npdecode`` command. Each subcommand lives in its own module with a ``register``
function that adds its parser and sets ``func``; this file only assembles them."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ["beam", "demo", "compare", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npdecode",
        description="Decode autoregressive language models in NumPy: batched beam search with "
                    "correct end-of-sequence semantics, sampling, speculative decoding.",
        epilog="Run 'npdecode <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"npdecode.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"npdecode {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
