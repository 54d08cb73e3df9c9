"""Beam search speed: npdecode against the slow per-beam reference, on TinyLM.

Run with one BLAS thread (see benchmarks/README.md for the exact command). For each standard
configuration (B, K, T) it prints tokens/s (B*K*T generated tokens over
wall time, median of several runs) for npdecode and the reference, their ratio, and how
npdecode's time splits between the model's forward calls, the KV cache (its allocation and its
reordering by beam parent), and the search's own bookkeeping (log-softmax, candidate
selection, pool updates).
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
from reference_beam import reference_beam_search  # noqa: E402

from npdecode import TinyLM, batched_beam_search  # noqa: E402

CONFIGS = [(1, 1, 32), (8, 4, 32), (32, 8, 64), (8, 4, 256)]
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def warn_if_threaded() -> None:
    """Say so when BLAS may run on several threads: figures here are for one."""
    missing = [v for v in THREAD_VARS if os.environ.get(v) != "1"]
    if missing:
        print(f"warning: {', '.join(missing)} not set to 1; BLAS may use several threads "
              "(see benchmarks/README.md for the command)\n")


def blas_description() -> str:
    """NumPy's BLAS as it runs: library, version, the kernels it chose, threads.

    OpenBLAS picks its kernels for the processor when NumPy loads it, unless the
    environment's OPENBLAS_CORETYPE names them; matrix products, and so every figure here,
    depend on that choice.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # part of the bench extra
        return "BLAS: unknown (install threadpoolctl)"
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not blas:
        return "BLAS: none found"
    return "; ".join(f"{p.get('internal_api')} {p.get('version')}, {p.get('architecture')} "
                     f"kernels, threads: {p.get('num_threads')}" for p in blas)


class Timed:
    """Wraps a cached model; accumulates the wall time spent in its calls (``seconds``) and in
    its KV cache's allocation and beam reordering (``cache_seconds``)."""

    def __init__(self, model):
        self.model = model
        self.vocab_size = model.vocab_size
        self.max_context = model.max_context
        self.seconds = 0.0
        self.cache_seconds = 0.0

    def new_cache(self, rows, slots):
        t0 = time.perf_counter()
        cache = self.model.new_cache(rows, slots)
        self.cache_seconds += time.perf_counter() - t0
        fork = cache.fork

        def timed_fork(*args):
            t0 = time.perf_counter()
            out = fork(*args)
            self.cache_seconds += time.perf_counter() - t0
            return out

        cache.fork = timed_fork
        return cache

    def forward(self, ids):
        return self._timed(self.model.forward, ids)

    def prefill(self, prompts, cache):
        return self._timed(self.model.prefill, prompts, cache)

    def extend(self, tokens, cache):
        return self._timed(self.model.extend, tokens, cache)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.seconds += time.perf_counter() - t0
        return out


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=rng.integers(4, 17)).tolist() for _ in range(batch)]


def median_time(fn, runs: int, before=None) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls (each after ``before()``, if given)."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    parser.add_argument("--reference-runs", type=int, default=3,
                        help="runs of the slow reference (median)")
    parser.add_argument("--model", choices=["tinylm", "gpt2"], default="tinylm",
                        help="TinyLM(vocab, d_model), or the random GPT-2 of bench_peers.py "
                             "(vocab, n_embd d_model, 2 layers, 2 heads; needs the parity "
                             "extra to build it)")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--config", action="append", metavar="B,K,T",
                        help="run only this configuration (repeatable; default: the standard "
                             "four)")
    parser.add_argument("--dtype", choices=["float64", "float32"], action="append",
                        help="run only this dtype (repeatable; default: both)")
    args = parser.parse_args()
    warn_if_threaded()

    with tempfile.TemporaryDirectory() as tmp:
        models = build_models(args, Path(tmp))
        print(f"{models['name']}; alpha=0.6, eos=0; prompts of 4-16 tokens; median of "
              f"{args.runs} runs ({args.reference_runs} for the reference)")
        print(f"numpy {np.__version__}, {blas_description()}\n")
        run_table(args, models)


def build_models(args, tmp: Path) -> dict:
    """The benchmark model in float64 and float32, and its description."""
    if args.model == "tinylm":
        return {"name": f"TinyLM(vocab_size={args.vocab}, d_model={args.d_model})",
                np.float64: TinyLM(args.vocab, args.d_model, seed=0),
                np.float32: TinyLM(args.vocab, args.d_model, seed=0, dtype=np.float32)}
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from bench_peers import build_checkpoint  # the same random GPT-2 as the peers benchmark

    from npdecode.models.gpt2 import GPT2
    build_checkpoint(tmp, vocab=args.vocab, n_embd=args.d_model, n_layer=2, n_head=2,
                     n_positions=512, seed=0, eos_scale=0.05)
    return {"name": f"random GPT-2 (vocab {args.vocab}, n_embd {args.d_model}, 2 layers, "
                    f"2 heads)",
            np.float64: GPT2.from_pretrained(tmp, dtype=np.float64),
            np.float32: GPT2.from_pretrained(tmp, dtype=np.float32)}


def run_table(args, models: dict) -> None:
    print("| dtype | (B, K, T) | npdecode tok/s | reference tok/s | speed-up | model forward | "
          "KV cache | search bookkeeping |")
    print("|---|---|---|---|---|---|---|---|")
    configs = CONFIGS
    if args.config:
        try:
            configs = [tuple(int(v) for v in c.split(",")) for c in args.config]
        except ValueError:
            sys.exit(f"--config takes B,K,T (three integers), got {args.config}")
        if any(len(c) != 3 or min(c) < 1 for c in configs):
            sys.exit(f"--config takes B,K,T (three integers >= 1), got {args.config}")
    dtypes = [np.dtype(d).type for d in args.dtype] if args.dtype else [np.float64, np.float32]
    for dtype in dtypes:
        model = models[dtype]
        for B, K, T in configs:
            prompts = prompts_for(B, args.vocab)
            kw = dict(beam_width=K, max_new_tokens=T, alpha=0.6, eos_token_id=0)
            fast = median_time(lambda: batched_beam_search(model, prompts, **kw), args.runs)
            timed = Timed(model)
            model_shares, cache_shares = [], []
            for _ in range(args.runs):
                timed.seconds = timed.cache_seconds = 0.0
                t0 = time.perf_counter()
                batched_beam_search(timed, prompts, **kw)
                total = time.perf_counter() - t0
                model_shares.append(timed.seconds / total)
                cache_shares.append(timed.cache_seconds / total)
            model_share = statistics.median(model_shares)
            cache_share = statistics.median(cache_shares)
            work = B * K * T
            if args.skip_reference:
                ref_s, ratio = "-", "-"
            else:
                slow = median_time(lambda: reference_beam_search(model, prompts, **kw),
                                   args.reference_runs)
                ref_s, ratio = f"{work / slow:,.0f}", f"{slow / fast:,.1f}x"
            print(f"| {np.dtype(dtype).name} | ({B}, {K}, {T}) | {work / fast:,.0f} | {ref_s} | "
                  f"{ratio} | {model_share:.0%} | {cache_share:.0%} | "
                  f"{1 - model_share - cache_share:.0%} |", flush=True)


if __name__ == "__main__":
    main()
