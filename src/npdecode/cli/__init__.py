"""The ``npdecode`` command. Each subcommand lives in its own module with a ``register``
function that adds its parser and sets ``func``; this file only assembles them."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import sys

import npdecode
from npdecode.cli.options import ParagraphFormatter

# Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ["beam", "demo", "compare", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npdecode",
        description="Decode autoregressive language models in NumPy: batched beam search with "
                    "correct end-of-sequence semantics, sampling, speculative decoding.",
        epilog="Run 'npdecode <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"npdecode {npdecode.__version__}")
    # No abbreviations: '--beam 3' is an error, not a silent '--beam-width 3'.
    sub = parser.add_subparsers(
        dest="command", metavar="<command>", required=True,
        parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False,
                                       formatter_class=ParagraphFormatter))
    for name in SUBCOMMANDS:
        importlib.import_module(f"npdecode.cli.{name}").register(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


# An option's value that argparse would take for an option itself: a negative number, or a
# list starting with one ('-1,2'), or -inf.
_NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf\b|nan\b)", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """``['--prompt', '-1,2']`` -> ``['--prompt=-1,2']``, so that such a value reaches the
    option's own check (and its clear message) instead of argparse's 'expected one argument'."""
    out: list[str] = []
    for arg in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1]
                and _NEGATIVE_VALUE.match(arg)):
            out[-1] += "=" + arg
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("rich") is None:
        print("npdecode: the command line needs the 'rich' package for its tables and progress "
              "bars; install it with: pip install rich (or, in a clone of npdecode: python -m "
              "pip install '.[cli]')", file=sys.stderr)
        return 2
    argv = attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # reported by the command's own parser, with its usage line
        args.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input or a bad file: one clear line
        print(f"npdecode {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        sizes = getattr(args, "size_options", None)
        print(f"npdecode {args.command}: error: not enough memory for these settings; lower "
              + (f"{sizes}" if sizes else "the sizes asked for"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"npdecode {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
