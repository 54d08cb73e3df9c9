"""The ``npdecode`` command. Each subcommand lives in its own module with a ``register``
function that adds its parser and sets ``func``; this file only assembles them."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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
    if importlib.util.find_spec("rich") is None:
        print("npdecode: the command line needs the 'rich' package for its tables and progress "
              "bars; install it with: pip install 'npdecode[cli]'", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input or a bad file: one clear line
        print(f"npdecode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"npdecode {args.command}: error: not enough memory for these settings; lower "
              f"the sizes asked for (--max-new-tokens, --beam-width, --vocab-size, --d-model, "
              f"--batch-size ...)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npdecode {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
