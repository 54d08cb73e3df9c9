"""``npdecode compare``: the decoding strategies side by side on the trained name model."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from npdecode.cli.options import at_least, file_path
from npdecode.models.chars import EOS, VOCAB_SIZE, decode, encode
from npdecode.search.beam import batched_beam_search
from npdecode.search.sampling import greedy, sample
from npdecode.search.speculative import speculative_sample

DESCRIPTION = """\
Decode the CharGPT name model (the shipped one, or --target's) with every strategy and compare
them: greedy, sampling at temperature 0.8, top-k 5, top-p 0.9, beam search (width 3, alpha
0.6) and speculative sampling (4 draft tokens from the shipped draft model or --draft's,
temperature 1).

Three tables: each strategy's name for two prefixes, with the target model's log-probability
of the generated characters and the generated tokens per target-model call (the prompt's
prefill counts as a call); a diversity table over 20 prefixes (distinct continuations, mean
length, mean log-probability); and speculative-decoding statistics, with its wall time measured
against plain sampling at the same temperature (each prefix decoded alone, same seeds,
median of --repeats runs). A name ends with '.', which counts as a generated token.

The three sampling strategies give prefix i the same seed, so they draw the same random
numbers, and top-k and top-p sample at temperature 1: where their filters change the
distribution little they pick the same characters, and rows with the same name and
log-probability are expected.

--target and --draft each replace one shipped model by a CharGPT .npz written by 'npdecode
train'; the other stays the shipped one. Both must use the name vocabulary ('.' and a-z)."""

EPILOG = """\
examples:
  npdecode compare
  npdecode compare --prefixes al mar --seed 3"""

# Prefixes of the diversity and speculative tables: single letters and common starts.
DIVERSITY_PREFIXES = ("a", "b", "c", "d", "e", "g", "h", "j", "k", "l",
                      "m", "n", "r", "s", "t", "z", "al", "ma", "jo", "ch")
NUM_DRAFTS = 4
BEAM_WIDTH = 3
ALPHA = 0.6


class CallCounter:
    """A model wrapper that counts calls (forward, prefill, extend) and keeps the protocol."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.vocab_size, self.max_context = model.vocab_size, model.max_context

    def forward(self, ids):
        self.calls += 1
        return self.model.forward(ids)

    def new_cache(self, rows, slots):
        return self.model.new_cache(rows, slots)

    def prefill(self, prompts, cache):
        self.calls += 1
        return self.model.prefill(prompts, cache)

    def extend(self, tokens, cache):
        self.calls += 1
        return self.model.extend(tokens, cache)


@dataclass(frozen=True)
class Output:
    """One strategy's output for one prompt: generated tokens and their target logprob."""

    tokens: list[int]
    logprob: float


# A strategy: (target, draft, prompts, seeds, max_new_tokens) -> one Output per prompt.
Run = Callable[[object, object, list, list, int], list[Output]]


def _gens(gens) -> list[Output]:
    return [Output(g.tokens, g.logprob) for g in gens]


def sampler(**opts) -> Run:
    """Sampling with the given options (temperature, top_k, top_p), each prompt its seed."""
    return lambda t, d, ps, seeds, n: _gens(
        sample(t, ps, max_new_tokens=n, eos_token_id=EOS, seed=seeds, **opts))


def run_greedy(t, d, ps, seeds, n) -> list[Output]:
    return _gens(greedy(t, ps, max_new_tokens=n, eos_token_id=EOS))


def run_beam(t, d, ps, seeds, n) -> list[Output]:
    """Each prompt's best hypothesis."""
    hyps = batched_beam_search(t, ps, beam_width=BEAM_WIDTH, max_new_tokens=n, alpha=ALPHA,
                               eos_token_id=EOS)
    return [Output(h[0].tokens, h[0].logprob) for h in hyps]


def run_speculative(t, d, ps, seeds, n) -> list[Output]:
    return _gens(speculative_sample(t, d, ps, num_draft_tokens=NUM_DRAFTS, max_new_tokens=n,
                                    eos_token_id=EOS, seed=seeds).generations)


# Sampling at temperature 1 with no filter: the distribution speculative sampling reproduces.
plain_sampling = sampler()


def strategies() -> dict[str, Run]:
    """The compared strategies, by display name, in display order."""
    return {
        "greedy": run_greedy,
        "temperature 0.8": sampler(temperature=0.8),
        "top-k 5": sampler(top_k=5),
        "top-p 0.9": sampler(top_p=0.9),
        f"beam (width {BEAM_WIDTH})": run_beam,
        f"speculative ({NUM_DRAFTS} drafts)": run_speculative,
    }


def budget(model, prompts: Sequence[Sequence[int]]) -> int:
    """New tokens that fit the model's context after the longest prompt."""
    return model.max_context - max(len(p) for p in prompts)


def diversity(outputs: Sequence[Output]) -> tuple[int, float, float]:
    """(distinct continuations, mean generated tokens, mean logprob) of a strategy's outputs.

    Continuations (the generated tokens, without the prefix) are compared, since names with
    different prefixes always differ: a strategy that ends every prefix alike scores low.
    """
    distinct = {tuple(o.tokens) for o in outputs}
    return (len(distinct), float(np.mean([len(o.tokens) for o in outputs])),
            float(np.mean([o.logprob for o in outputs])))


def each_alone(run: Run, target, draft, prompts, seeds) -> list[Output]:
    """Decode every prompt in a batch of its own (as a single user would)."""
    return [run(target, draft, [p], [s], budget(target, [p]))[0] for p, s in zip(prompts, seeds)]


def timed(fn: Callable[[], object], repeats: int,
          done: Callable[[], object] = lambda: None) -> float:
    """Median wall time of ``repeats`` calls, in seconds; ``done()`` after each call."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        done()
    return float(np.median(times))


def load_models(args: argparse.Namespace):
    """The target and draft: each a given .npz file, or the shipped one."""
    from npdecode.models.chargpt import CharGPT
    from npdecode.models.pretrained import load_draft, load_target
    target = CharGPT.load(args.target) if args.target else load_target()
    draft = CharGPT.load(args.draft) if args.draft else load_draft()
    for option, path, model in (("--target", args.target, target),
                                ("--draft", args.draft, draft)):
        if model.vocab_size != VOCAB_SIZE:  # the shipped models' and the names' vocabulary
            raise ValueError(f"{option} {path} has a vocabulary of {model.vocab_size} tokens; "
                             f"compare decodes names, which need the {VOCAB_SIZE} tokens "
                             f"'.' and a-z")
    return target, draft


MODEL_FILE = "a CharGPT .npz (npdecode train writes one), or leave the option out"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = subparsers.add_parser(
        "compare", help="compare decoding strategies on the trained name model",
        description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--prefixes", nargs=2, default=["em", "jo"], metavar="PREFIX",
                   help="two name prefixes (lowercase a-z; '' for none) for the first table; "
                        "default: em jo")
    p.add_argument("--seed", type=at_least(0), default=0, metavar="N",
                   help="seed of prefix i is N + i, the same for every sampling strategy; "
                        "default: 0")
    p.add_argument("--repeats", type=at_least(1), default=3, metavar="N",
                   help="timing runs; the median is reported; default: 3")
    p.add_argument("--target", type=file_path(MODEL_FILE), metavar="PATH",
                   help="a CharGPT .npz to use as the target model; default: the shipped "
                        "target (with or without --draft)")
    p.add_argument("--draft", type=file_path(MODEL_FILE), metavar="PATH",
                   help="a CharGPT .npz to use as the draft model; default: the shipped draft "
                        "(with or without --target)")
    p.set_defaults(func=run)


def tokens(n: int) -> str:
    """'1 token', '16 tokens'."""
    return f"{n} token{'' if n == 1 else 's'}"


def letters(n: int) -> str:
    """'1 letter', '2 letters'."""
    return f"{n} letter{'' if n == 1 else 's'}"


def prefix_table(Table, target, draft, prefixes: Sequence[str], seed: int):
    """Table 1: every strategy on each prefix alone: name, log-prob, tokens per target call."""
    table = Table(title="Strategies on two prefixes (target model; a name ends with '.')")
    # On a narrow terminal every cell folds onto more lines rather than being cut: a cut name
    # would end in the same '…' as an unfinished one, a cut number would read as another.
    table.add_column("prefix", overflow="fold")
    table.add_column("strategy", overflow="fold")
    table.add_column("name", overflow="fold")
    table.add_column("log-prob", justify="right", overflow="fold")
    table.add_column("tokens / target call", justify="right", overflow="fold")
    for i, prefix in enumerate(prefixes):
        ids = encode(prefix)
        for name, fn in strategies().items():
            counted = CallCounter(target)
            out = fn(counted, draft, [ids], [seed + i], budget(target, [ids]))[0]
            text = prefix + decode([EOS] + out.tokens) + ("." if EOS in out.tokens else "…")
            table.add_row(prefix or "(empty)", name, text, f"{out.logprob:.2f}",
                          f"{len(out.tokens) / counted.calls:.2f}")
        table.add_section()
    return table


# Printed under the first table: identical sampling rows there are expected.
SHARED_SEEDS = ("The sampling rows give a prefix the same seed and one uniform draw per "
                "character, and top-k and top-p sample at temperature 1, so they often pick "
                "the same name.")


def diversity_table(Table, target, draft, prefixes: Sequence[str], seed: int):
    """Table 2: distinct names, mean length and mean log-prob over many prefixes (one batch)."""
    prompts = [encode(p) for p in prefixes]
    seeds = [seed + i for i in range(len(prompts))]
    table = Table(title=f"Diversity over {len(prompts)} prefixes (one batch)")
    table.add_column("strategy", overflow="fold")
    table.add_column("distinct continuations", justify="right", overflow="fold")
    table.add_column("mean tokens", justify="right", overflow="fold")
    table.add_column("mean log-prob", justify="right", overflow="fold")
    for name, fn in strategies().items():
        distinct, length, lp = diversity(fn(target, draft, prompts, seeds,
                                           budget(target, prompts)))
        table.add_row(name, f"{distinct} / {len(prompts)}", f"{length:.2f}", f"{lp:.2f}")
    return table


def speculative_table(Table, target, draft, prefixes: Sequence[str], seed: int, repeats: int,
                      console=None):
    """Table 3: speculative counts, and its wall time against plain sampling (each prefix
    decoded alone, same seeds and budgets, median of ``repeats`` runs of the whole set).
    On a terminal ``console`` shows the timing runs' progress (it vanishes when done)."""
    prompts = [encode(p) for p in prefixes]
    seeds = [seed + i for i in range(len(prompts))]
    proposed = accepted = tokens = 0
    spec_target = CallCounter(target)
    for ids, s in zip(prompts, seeds):
        res = speculative_sample(spec_target, draft, [ids], num_draft_tokens=NUM_DRAFTS,
                                 max_new_tokens=budget(target, [ids]), eos_token_id=EOS, seed=s)
        proposed, accepted = proposed + res.proposed, accepted + res.accepted
        tokens += len(res.generations[0].tokens)
    plain_target = CallCounter(target)
    plain_tokens = sum(len(o.tokens) for o in
                       each_alone(plain_sampling, plain_target, draft, prompts, seeds))
    from rich.progress import Progress
    with Progress(console=console, transient=True,
                  disable=console is None or not console.is_terminal) as progress:
        task = progress.add_task("timing", total=2 * repeats)

        def done():
            progress.advance(task)

        t_spec = timed(lambda: each_alone(run_speculative, target, draft, prompts, seeds),
                       repeats, done)
        t_plain = timed(lambda: each_alone(plain_sampling, target, draft, prompts, seeds),
                        repeats, done)

    table = Table(title="Speculative against plain sampling")
    table.add_column("measure", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("draft tokens proposed", str(proposed))
    table.add_row("draft tokens accepted", str(accepted))
    table.add_row("acceptance rate", f"{accepted / proposed:.1%}" if proposed else "-")
    table.add_row("tokens / target call, speculative", f"{tokens / spec_target.calls:.2f}")
    table.add_row("tokens / target call, plain sampling",
                  f"{plain_tokens / plain_target.calls:.2f}")
    table.add_row(f"wall time, speculative (median of {repeats})", f"{t_spec * 1e3:.1f} ms")
    table.add_row(f"wall time, plain sampling (median of {repeats})", f"{t_plain * 1e3:.1f} ms")
    table.add_row("wall-time ratio, speculative / plain", f"{t_spec / t_plain:.2f}")
    return table


def speculative_note(num_prefixes: int) -> str:
    """Printed under table 3: its settings, and how to read the wall-time ratio."""
    return (f"Both at temperature 1, {NUM_DRAFTS} draft tokens per round, {num_prefixes} "
            f"prefixes each decoded alone. A ratio above 1 means speculative sampling is "
            f"slower: each proposed token costs a draft call, and on models this small a "
            f"call's fixed cost is a large part of its time.")


def run(args: argparse.Namespace) -> int:
    """Print the three comparison tables."""
    from rich.console import Console  # (the command line refuses to start without rich)
    from rich.table import Table
    for prefix in args.prefixes:
        encode(prefix)  # ValueError naming a character outside a-z
    target, draft = load_models(args)
    if draft.max_context < target.max_context:
        raise ValueError(f"the draft's context ({tokens(draft.max_context)}) is shorter than "
                         f"the target's ({target.max_context}): speculative decoding runs the "
                         f"draft as far as the target; give a --draft with a context of at "
                         f"least {target.max_context}")
    longest = max(DIVERSITY_PREFIXES, key=len)
    if budget(target, [encode(longest)]) < 1:
        raise ValueError(f"the target's context of {tokens(target.max_context)} leaves no "
                         f"room to generate after the prefix {longest!r} of the diversity "
                         f"table ({tokens(len(encode(longest)))} with the start token); give a "
                         f"--target with a context of at least {len(encode(longest)) + 1}")
    for prefix in args.prefixes:
        if budget(target, [encode(prefix)]) < 1:
            raise ValueError(f"prefix {prefix!r} ({tokens(len(encode(prefix)))} with the start "
                             f"token) fills the target's context of "
                             f"{tokens(target.max_context)}; give one of at most "
                             f"{letters(target.max_context - 2)}")
    console = Console()
    # File names are printed as they are: no [brackets] read as rich markup.
    console.print(f"target: {args.target or 'the shipped target model'} "
                  f"({target.num_params:,} parameters, context {target.max_context})",
                  markup=False)
    console.print(f"draft:  {args.draft or 'the shipped draft model'} "
                  f"({draft.num_params:,} parameters, context {draft.max_context})",
                  markup=False)
    console.print(prefix_table(Table, target, draft, args.prefixes, args.seed))
    console.print(SHARED_SEEDS)
    console.print()
    console.print(diversity_table(Table, target, draft, DIVERSITY_PREFIXES, args.seed))
    console.print()
    console.print(speculative_table(Table, target, draft, DIVERSITY_PREFIXES, args.seed,
                                    args.repeats, console))
    console.print(speculative_note(len(DIVERSITY_PREFIXES)))
    return 0
