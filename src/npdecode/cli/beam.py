"""``npdecode beam``: batched beam search on TinyLM, one table of hypotheses per prompt."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from npdecode.cli.options import at_least, finite, integer
from npdecode.cli.render import console, hypotheses_table, ids_text, stopped_early
from npdecode.memory import check_fits
from npdecode.models.tinylm import TinyLM
from npdecode.search.beam import batched_beam_search, count_hypotheses
from npdecode.search.validate import (check_length_penalty, check_request,
                                      length_penalty_limit)


def token_list(text: str) -> list[int]:
    """'3,14,159' -> [3, 14, 159], with an error that says what was wrong."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a prompt needs at least one token id, e.g. 3,14,159")
    try:
        return [integer(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of token ids (decimal digits, no empty "
            f"entries), e.g. 3,14,159") from None

# The library's argument names, as this command's options.
OPTIONS = {"beam_width": "--beam-width", "max_new_tokens": "--max-new-tokens",
           "eos_token_id": "--eos", "no_repeat_ngram_size": "--no-repeat-ngram-size",
           "alpha": "--alpha"}


def check_settings(args: argparse.Namespace) -> None:
    """The search's own checks of the request, made before the memory estimate and before
    TinyLM is built (they need only its vocabulary size)."""
    shape = SimpleNamespace(vocab_size=args.vocab_size)  # all the checks read off a model
    check_request(shape, args.prompt, args.max_new_tokens, args.eos)


def check_alpha(args: argparse.Namespace) -> None:
    """The search's length-penalty check, in this command's words."""
    try:
        check_length_penalty("alpha", args.alpha, args.max_new_tokens)
    except ValueError:
        limit = length_penalty_limit(args.max_new_tokens)
        raise ValueError(f"--alpha {args.alpha:g} makes the length penalty len ** alpha "
                         f"overflow or vanish in float64 for lengths up to --max-new-tokens "
                         f"{args.max_new_tokens}; use an --alpha between {-limit:.4g} and "
                         f"{limit:.4g}") from None


def check_memory(args: argparse.Namespace) -> None:
    """Refuse, before building anything, settings that need more memory than the machine has."""
    item = 4 if args.float32 else 8
    V, d, T = args.vocab_size, args.d_model, max(args.max_new_tokens, 1)
    rows = len(args.prompt) * count_hypotheses(V, T, cap=max(args.beam_width, 1))
    slots = max(len(p) for p in args.prompt) + T
    need = item * (2 * V * d + 12 * d * d        # TinyLM's weights
                   + 2 * rows * slots * d        # the KV cache
                   + 3 * rows * V) + 4 * rows * T  # a step's logits; the token histories
    check_fits(need, SIZE_OPTIONS)


SIZE_OPTIONS = "--max-new-tokens, --beam-width, --vocab-size or --d-model"


EPILOG = """\
output: a table per prompt, best hypothesis first, with the columns
  rank      place by score
  tokens    the generated token ids (the prompt not included; the EOS included when finished)
  score     logprob / len**alpha, len counting the generated tokens
  logprob   the summed log-probability of the generated tokens under the model
  finished  'yes' when the hypothesis ends with the --eos token; 'no*' when it stopped
            before --max-new-tokens without finishing: every next token would have
            repeated an n-gram (--no-repeat-ngram-size)

example:
  npdecode beam --prompt 3,14,159 --prompt 11,22,33 --beam-width 4 \\
      --max-new-tokens 12 --alpha 0.6 --eos 0"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "beam", help="batched beam search on TinyLM, printing each prompt's hypotheses",
        description="Run batched beam search (the pool policy: finished hypotheses keep "
                    "competing for their place, the length penalty counts generated tokens "
                    "only) on TinyLM, a random-weight seed model rebuilt exactly from its "
                    "seed, and print each prompt's hypotheses best first.",
        epilog=EPILOG)
    p.add_argument("--prompt", action="append", type=token_list, required=True,
                   metavar="IDS",
                   help="required: comma-separated token ids, each in [0, --vocab-size), "
                        "e.g. 3,14,159; repeat the option for a batch of prompts")
    p.add_argument("--beam-width", type=at_least(1), default=4, metavar="K",
                   help="hypotheses kept per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=at_least(0), default=12, metavar="T",
                   help="longest generation (default 12)")
    p.add_argument("--alpha", type=finite, default=0.6,
                   help="length penalty: score = logprob / len**alpha; a larger alpha "
                        "favours longer hypotheses, 0 ranks by logprob alone (default 0.6); "
                        "any number for which len**alpha stays within float64's range")
    p.add_argument("--eos", type=integer, default=None, metavar="ID",
                   help="end-of-sequence token id, in [0, --vocab-size) (default: none)")
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), default=0, metavar="N",
                   help="never repeat an n-gram of prompt + generation (default 0: off)")
    p.add_argument("--vocab-size", type=at_least(1), default=1000, metavar="V",
                   help="TinyLM vocabulary (default 1000)")
    p.add_argument("--d-model", type=at_least(1), default=64, metavar="D",
                   help="TinyLM width (default 64)")
    p.add_argument("--seed", type=at_least(0), default=0, metavar="S",
                   help="TinyLM weight seed (default 0)")
    p.add_argument("--float32", action="store_true",
                   help="run the model in float32 (default: float64)")
    p.set_defaults(func=run, size_options=SIZE_OPTIONS)


def run(args: argparse.Namespace) -> int:
    out = console()
    check_alpha(args)
    try:
        check_settings(args)
        check_memory(args)
        model = TinyLM(args.vocab_size, args.d_model, seed=args.seed,
                       dtype=np.float32 if args.float32 else np.float64)
        # A spinner while the search runs (shown on a terminal only; a long search can take
        # minutes, and the tables come at the end).
        with out.status(f"beam search: {len(args.prompt)} prompt(s), width {args.beam_width}, "
                        f"up to {args.max_new_tokens} new tokens"):
            results = batched_beam_search(model, args.prompt, beam_width=args.beam_width,
                                          max_new_tokens=args.max_new_tokens, alpha=args.alpha,
                                          eos_token_id=args.eos,
                                          no_repeat_ngram_size=args.no_repeat_ngram_size)
    except ValueError as err:  # phrased with this command's option names
        raise ValueError(_with_options(str(err), args.vocab_size)) from None
    dtype = "float32" if args.float32 else "float64"
    out.print(f"TinyLM(vocab_size={args.vocab_size}, d_model={args.d_model}, seed={args.seed}, "
              f"{dtype}); beam width {args.beam_width}, alpha {args.alpha}, "
              f"eos {args.eos if args.eos is not None else 'none'}", soft_wrap=True)
    for b, (prompt, hyps) in enumerate(zip(args.prompt, results)):
        # The prompt on a line of its own: a table's title wraps at the table's width.
        out.print(f"prompt {b}: {ids_text(prompt)}", soft_wrap=True)
        out.print(hypotheses_table(None, hyps, max_new_tokens=args.max_new_tokens))
    if any(stopped_early(hyps, args.max_new_tokens) for hyps in results):
        out.print(f"no*: stopped before --max-new-tokens {args.max_new_tokens} without "
                  f"finishing, because every next token would have repeated an n-gram "
                  f"(--no-repeat-ngram-size {args.no_repeat_ngram_size})")
    return 0


def _with_options(msg: str, vocab_size: int) -> str:
    """A library error phrased with this command's option names."""
    for name, option in OPTIONS.items():
        msg = msg.replace(name, option)
    vocab = f"(vocab size {vocab_size})"
    if vocab in msg:
        return msg.replace(vocab, f"(--vocab-size {vocab_size})")
    if "outside [0," in msg:
        return msg + f" (--vocab-size {vocab_size})"
    return msg
