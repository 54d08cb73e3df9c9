"""Beam search speed: npdecode against transformers and CTranslate2 on the same random GPT-2.

One random-weight GPT-2 is built with transformers (seeded, no download), saved in the
HuggingFace layout to a temporary directory, converted for CTranslate2, and loaded by npdecode
(``GPT2.from_pretrained``, float32). For each standard configuration (B, K, T) the three
engines decode the same prompts (4-16 tokens, ragged) with beam width K, T new tokens,
length penalty 0.6 and EOS 0, float32, on one thread:

- npdecode ``batched_beam_search`` (the pool policy);
- transformers ``model.generate(num_beams=K, ...)`` on the left-padded batch with its
  attention mask (K = 1 is greedy search there);
- CTranslate2 ``Generator.generate_batch(beam_size=K, max_length=T, ...)`` with
  ``include_prompt_in_result=False`` (then ``max_length`` counts generated tokens only) and
  ``return_end_token=True`` (so that the EOS counts in the length penalty, as in the others).

Work is B*K*T generated tokens; each engine's time is the median of several rounds, and each
round runs the engines one after the other, so a change of machine load affects them alike.
The EOS token's embedding row (tied to the head) is scaled down so that the random model
practically never picks it: every engine then generates all T tokens for every hypothesis,
and the printed counts of generated tokens show that it did.

A second table checks the top hypotheses: npdecode's ``beam_search(policy="hf")`` against
transformers token for token, and the pool policy and CTranslate2 against the same, with the
benchmark's rare EOS and with a frequent one (where the policies differ; see peers.md).

Run with one thread (peers.md has the exact command; needs ctranslate2 and matplotlib):

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \\
    python benchmarks/bench_peers.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from random_gpt2 import left_padded, random_gpt2  # noqa: E402  (shared with the tests)
from bench_beam import blas_description, warn_if_threaded  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = [(1, 1, 32), (8, 4, 32), (32, 8, 64), (8, 4, 256)]
ALPHA = 0.6
EOS = 0


def token_name(i: int) -> str:
    """The string CTranslate2 knows token id i by (its vocabulary is a list of strings)."""
    return f"t{i}"


def build_checkpoint(path: Path, *, vocab: int, n_embd: int, n_layer: int, n_head: int,
                     n_positions: int, seed: int, eos_scale: float):
    """Save a random GPT-2 and a word-level tokenizer over its ids to ``path``.

    Weights are drawn wider than transformers' init (std 0.3, LayerNorm gains 1 +- 0.2) so that
    next-token distributions are peaked and near-ties between engines are rare. The EOS row
    of the tied embedding is multiplied by ``eos_scale``: with a small scale its logit stays
    near 0 while the best tokens' logits are several units up, so EOS is almost never chosen.
    Returns the transformers model (float32, eval mode).
    """
    import transformers
    from tokenizers import Tokenizer, models

    model = random_gpt2(path, vocab=vocab, positions=n_positions, seed=seed, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, special_id=EOS,
                        special_scale=eos_scale)
    # CTranslate2's converter reads the vocabulary from a tokenizer: one word per id.
    words = {token_name(i): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token=token_name(EOS)))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=token_name(EOS), eos_token=token_name(EOS),
        unk_token=token_name(EOS), pad_token=token_name(EOS))
    fast.save_pretrained(path)
    return model


def convert_for_ctranslate2(hf_dir: Path, out_dir: Path) -> None:
    from ctranslate2.converters import TransformersConverter
    TransformersConverter(str(hf_dir)).convert(str(out_dir), quantization="float32",
                                               force=True)


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``batch`` prompts of 4-16 tokens drawn from 1..V-1 (never the EOS)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=rng.integers(4, 17)).tolist() for _ in range(batch)]


def generated_length(tokens, eos: int | None) -> int:
    """Tokens up to and including the first EOS (all of them if there is none)."""
    tokens = list(tokens)
    return tokens.index(eos) + 1 if eos is not None and eos in tokens else len(tokens)


# -- the three engines: each returns, per prompt, K hypotheses' generated tokens, best first --

class Engines:
    def __init__(self, np_model, hf_model, ct2_generator):
        self.np_model = np_model
        self.hf_model = hf_model
        self.ct2 = ct2_generator

    def npdecode(self, prompts, K, T, eos=EOS):
        from npdecode import batched_beam_search
        res = batched_beam_search(self.np_model, prompts, beam_width=K, max_new_tokens=T,
                                  alpha=ALPHA, eos_token_id=eos)
        return [[h.tokens for h in hyps] for hyps in res]

    def npdecode_hf(self, prompts, K, T, eos=EOS):
        """npdecode's reproduction of transformers' beam search (``policy="hf"``)."""
        from npdecode.search.beam_search import beam_search
        res = beam_search(self.np_model, prompts, num_beams=K, max_new_tokens=T,
                          eos_token_id=eos, length_penalty=ALPHA, early_stopping=True,
                          num_return_sequences=K, policy="hf", pad_token_id=eos)
        return [[h.tokens for h in hyps] for hyps in res]

    def transformers(self, prompts, K, T, eos=EOS):
        import torch
        ids, mask = left_padded(prompts, pad=eos)
        with torch.inference_mode():
            out = self.hf_model.generate(
                ids, attention_mask=mask, num_beams=K, do_sample=False, max_new_tokens=T,
                min_new_tokens=0, length_penalty=ALPHA, eos_token_id=eos,
                pad_token_id=eos, early_stopping=True, num_return_sequences=K,
                repetition_penalty=1.0, no_repeat_ngram_size=0, temperature=None,
                top_k=None, top_p=None)
        rows = out[:, ids.shape[1]:].tolist()     # generated part, padded with EOS after it
        return [[r[:generated_length(r, eos)] for r in rows[i * K:(i + 1) * K]]
                for i in range(len(prompts))]

    def ctranslate2(self, prompts, K, T, eos=EOS):
        res = self.ct2.generate_batch(
            [[token_name(t) for t in p] for p in prompts], max_batch_size=0, beam_size=K,
            patience=1, num_hypotheses=K, length_penalty=ALPHA, max_length=T, min_length=0,
            end_token=[eos], return_end_token=True, include_prompt_in_result=False,
            sampling_topk=1)
        return [list(r.sequences_ids) for r in res]


ENGINES = ("npdecode", "transformers", "ctranslate2")


class TimedModel:
    """Wraps the npdecode model; accumulates time in its calls, in ``GPT2.extend`` split into
    attention over the cache and the rest, and in the cache's fork by beam parent."""

    def __init__(self, model):
        self.model = model
        self.vocab_size = model.vocab_size
        self.max_context = model.max_context
        self.reset()

    def reset(self):
        self.model_s = self.fork_s = self.attend_s = 0.0

    def _clock(self, attr, fn):
        def timed(*args, **kw):
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            setattr(self, attr, getattr(self, attr) + time.perf_counter() - t0)
            return out
        return timed

    def new_cache(self, rows, slots):
        cache = self.model.new_cache(rows, slots)
        cache.fork = self._clock("fork_s", cache.fork)
        cache.attend = self._clock("attend_s", cache.attend)
        return cache

    def forward(self, ids):
        return self._clock("model_s", self.model.forward)(ids)

    def prefill(self, prompts, cache):
        return self._clock("model_s", self.model.prefill)(prompts, cache)

    def extend(self, tokens, cache):
        return self._clock("model_s", self.model.extend)(tokens, cache)


def npdecode_split(model, prompts, K, T, runs: int) -> dict[str, float]:
    """Median shares of npdecode's wall time: model (attention / rest), cache fork, search."""
    from npdecode import batched_beam_search
    timed = TimedModel(model)
    shares = {"attention": [], "model_rest": [], "fork": [], "search": []}
    for _ in range(runs):
        timed.reset()
        t0 = time.perf_counter()
        batched_beam_search(timed, prompts, beam_width=K, max_new_tokens=T, alpha=ALPHA,
                            eos_token_id=EOS)
        total = time.perf_counter() - t0
        shares["attention"].append(timed.attend_s / total)
        shares["model_rest"].append((timed.model_s - timed.attend_s) / total)
        shares["fork"].append(timed.fork_s / total)
        shares["search"].append(1 - (timed.model_s + timed.fork_s) / total)
    return {k: statistics.median(v) for k, v in shares.items()}


def median_times(fns: dict, rounds: int) -> dict[str, float]:
    """Median wall time of each function; every round runs each once, in turn."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():  # warm-up (first calls allocate, import, build caches)
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def length_summary(hyps: list[list[list[int]]], eos: int) -> str:
    """'min-max' generated tokens over all returned hypotheses, and how many ended with EOS."""
    lengths = [len(h) for item in hyps for h in item]
    ended = sum(1 for item in hyps for h in item if h and h[-1] == eos)
    span = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}-{max(lengths)}"
    return f"{span} ({ended} EOS)"


def likely_token(model, vocab: int, seed: int = 0) -> int:
    """The token most often chosen greedily after random contexts (a frequent EOS)."""
    contexts = np.random.default_rng(seed).integers(1, vocab, (256, 8))
    best = model.forward(contexts).argmax(axis=1)
    return int(np.bincount(best, minlength=vocab)[1:].argmax()) + 1


def parity_rows(engines: Engines, vocab: int, frequent_eos: int):
    """Top hypotheses of each engine against transformers, item by item."""
    cases = [(B, K, T, EOS, "rare") for B, K, T in CONFIGS[:3]]
    cases += [(8, 4, 32, frequent_eos, "frequent"), (16, 4, 64, frequent_eos, "frequent"),
              (8, 8, 32, frequent_eos, "frequent")]
    rows = []
    for B, K, T, eos, kind in cases:
        prompts = prompts_for(B, vocab, seed=1)
        want = engines.transformers(prompts, K, T, eos)
        got = {"npdecode hf policy": engines.npdecode_hf(prompts, K, T, eos),
               "npdecode pool": engines.npdecode(prompts, K, T, eos),
               "ctranslate2": engines.ctranslate2(prompts, K, T, eos)}
        same_top = {name: sum(g[0] == w[0] for g, w in zip(hyps, want))
                    for name, hyps in got.items()}
        same_all = {name: sum(g == w for g, w in zip(hyps, want)) for name, hyps in got.items()}
        rows.append(((B, K, T), eos, kind, length_summary(want, eos), same_top, same_all))
    return rows


def load_gpt2_class(path: Path):
    """The GPT2 class of another version of gpt2.py (importing the same npdecode package)."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("gpt2_other", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module.GPT2


def compare_gpt2(path: Path, other_model, model, vocab: int, rounds: int) -> None:
    """npdecode tokens/s with another gpt2.py's model against the current one, same prompts."""
    from npdecode import batched_beam_search
    print(f"| (B, K, T) | {path.name} tok/s | current gpt2.py tok/s | speed-up | same hypotheses |")
    print("|---|---:|---:|---:|---|")
    for B, K, T in CONFIGS:
        prompts = prompts_for(B, vocab)
        kw = dict(beam_width=K, max_new_tokens=T, alpha=ALPHA, eos_token_id=EOS)
        run = {"other": lambda: batched_beam_search(other_model, prompts, **kw),
               "current": lambda: batched_beam_search(model, prompts, **kw)}
        secs = median_times(run, rounds)
        same = [[h.tokens for h in r] for r in run["other"]()] == \
               [[h.tokens for h in r] for r in run["current"]()]
        work = B * K * T
        print(f"| ({B}, {K}, {T}) | {work / secs['other']:,.0f} | {work / secs['current']:,.0f} | "
              f"{secs['other'] / secs['current']:.2f}x | {'yes' if same else 'NO'} |", flush=True)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"({r['B']}, {r['K']}, {r['T']})" for r in results]
    x = np.arange(len(results))
    width = 0.27
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(ENGINES):
        vals = [r["tok_s"][name] for r in results]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=name)
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" if v < 10_000 else f"{v / 1000:.0f}k"
                                  for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, labels)
    ax.set_xlabel("(B, K, T): prompts, beam width, new tokens")
    ax.set_ylabel("generated tokens / s (B*K*T / wall time)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=2)
    parser.add_argument("--n-positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eos-scale", type=float, default=0.05,
                        help="factor on the EOS embedding row (small: EOS is rarely chosen)")
    parser.add_argument("--plot", type=Path, default=HERE / "peers.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--compare-gpt2", type=Path, metavar="FILE",
                        help="only time npdecode with the GPT2 of FILE (e.g. an older gpt2.py "
                             "from git show) against the current one, interleaved, and exit")
    args = parser.parse_args()

    warn_if_threaded()
    import ctranslate2
    import torch
    import transformers
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    from npdecode.models.gpt2 import GPT2

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, ct2_dir = Path(tmp) / "hf", Path(tmp) / "ct2"
        hf_model = build_checkpoint(hf_dir, vocab=args.vocab, n_embd=args.n_embd,
                                    n_layer=args.n_layer, n_head=args.n_head,
                                    n_positions=args.n_positions, seed=args.seed,
                                    eos_scale=args.eos_scale)
        convert_for_ctranslate2(hf_dir, ct2_dir)
        generator = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type="float32",
                                          intra_threads=1, inter_threads=1)
        np_model = GPT2.from_pretrained(hf_dir, dtype=np.float32)
        other_model = None
        if args.compare_gpt2:
            other = load_gpt2_class(args.compare_gpt2)
            other_model = other.from_pretrained(hf_dir, dtype=np.float32)
    engines = Engines(np_model, hf_model, generator)
    if args.compare_gpt2:
        compare_gpt2(args.compare_gpt2, other_model, np_model, args.vocab, args.rounds)
        return

    size = (f"GPT-2 vocab {args.vocab}, n_embd {args.n_embd}, {args.n_layer} layers, "
            f"{args.n_head} heads, n_positions {args.n_positions}")
    print(f"{size}; random weights (seed {args.seed}), float32, one thread; alpha {ALPHA}, "
          f"EOS {EOS} (embedding row x{args.eos_scale}); prompts of 4-16 tokens; "
          f"median of {args.rounds} rounds")
    print(f"numpy {np.__version__} ({blas_description()}), torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()}), transformers "
          f"{transformers.__version__}, ctranslate2 {ctranslate2.__version__}; "
          f"load average before: {os.getloadavg()[0]:.2f}\n")

    print("| (B, K, T) | npdecode tok/s | transformers tok/s | CTranslate2 tok/s | "
          "npdecode / transformers | npdecode / CTranslate2 | generated per hypothesis "
          "(npdecode / transformers / CTranslate2) | npdecode time: attention / rest of model "
          "/ cache fork / search |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    results = []
    for B, K, T in CONFIGS:
        prompts = prompts_for(B, args.vocab)
        fns = {name: (lambda f=getattr(engines, name): f(prompts, K, T)) for name in ENGINES}
        counts = " / ".join(length_summary(fns[name](), EOS) for name in ENGINES)
        secs = median_times(fns, args.rounds)
        split = npdecode_split(np_model, prompts, K, T, max(3, args.rounds // 2))
        work = B * K * T
        tok_s = {name: work / s for name, s in secs.items()}
        results.append(dict(B=B, K=K, T=T, tok_s=tok_s))
        print(f"| ({B}, {K}, {T}) | {tok_s['npdecode']:,.0f} | {tok_s['transformers']:,.0f} | "
              f"{tok_s['ctranslate2']:,.0f} | "
              f"{secs['transformers'] / secs['npdecode']:.2f}x | "
              f"{secs['ctranslate2'] / secs['npdecode']:.2f}x | {counts} | "
              f"{split['attention']:.0%} / {split['model_rest']:.0%} / {split['fork']:.0%} / "
              f"{split['search']:.0%} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")

    if not args.no_plot:
        plot(results, args.plot, f"Beam search, {size}, float32, one thread\n"
                                 f"numpy: {blas_description()}")
        print(f"plot: {args.plot}")

    if args.skip_parity:
        return
    frequent = likely_token(np_model, args.vocab)
    print(f"\nTop hypotheses against transformers (items whose best hypothesis is equal / "
          f"whose K hypotheses are all equal); prompts seed 1; frequent EOS = token "
          f"{frequent}\n")
    print("| (B, K, T) | EOS | transformers generated (EOS-ended) | npdecode hf policy | "
          "npdecode pool | CTranslate2 |")
    print("|---|---|---|---|---|---|")
    for cfg, eos, kind, lengths, top, allk in parity_rows(engines, args.vocab, frequent):
        cells = " | ".join(f"{top[n]}/{cfg[0]} top, {allk[n]}/{cfg[0]} all"
                           for n in ("npdecode hf policy", "npdecode pool", "ctranslate2"))
        print(f"| {cfg} | {eos} ({kind}) | {lengths} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
