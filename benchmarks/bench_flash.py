"""Time and peak memory of flash attention against dense (naive) attention.

Causal self-attention (``--non-causal`` for full attention), float32, (B, H, N, D) =
(1, 8, N, 64) by default. Prints a markdown
table and writes a PNG plot next to this file. Times are medians of several interleaved
runs, measured without tracing; peak memory is measured in a separate traced call
(tracemalloc, started after the inputs are built, so it counts the output and every
temporary). Dense attention is skipped where its (B, H, N, N) float32 score matrix alone
would exceed ``--naive-max-gib``.

Run single-threaded for stable figures (see flash_attention.md for the exact command):

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 \\
    python benchmarks/bench_flash.py

Needs matplotlib (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

from npdecode.attention import flash_attention_fwd

HERE = Path(__file__).resolve().parent
MIB = 2**20


def naive_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                    causal: bool = True) -> np.ndarray:
    """Dense softmax attention (B, H, N, D) -> (B, H, N, D), in the input dtype.

    The usual way, with in-place operations so it is not a straw man: it still holds the
    whole (B, H, N, N) score matrix.
    """
    N, D = Q.shape[2], Q.shape[3]
    scores = Q @ K.transpose(0, 1, 3, 2)                            # [B, H, N, N]
    scores *= Q.dtype.type(1 / np.sqrt(D))
    if causal:
        future = np.triu(np.ones((N, N), dtype=bool), k=1)          # [N, N]
        np.copyto(scores, -np.inf, where=future)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ V                                               # [B, H, N, D]


def flash(Q: np.ndarray, K: np.ndarray, V: np.ndarray, tile: int,
          causal: bool = True) -> np.ndarray:
    """Flash attention with the given tile."""
    return flash_attention_fwd(Q, K, V, tile, causal=causal)


def median_times(fns: list, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) median seconds of each function over ``repeats`` rounds.

    Every function is called once to warm up; then each round calls every function once, so
    that a change in machine load during the run affects all of them alike. The process CPU
    time is reported too: on a shared machine it is less disturbed by other jobs than the wall
    time (single-threaded BLAS, so CPU time is the one thread's time).
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append((time.perf_counter() - w0, time.process_time() - c0))
    return [tuple(float(x) for x in np.median(ts, axis=0)) for ts in times]


def peak_bytes(fn) -> int:
    """Peak traced allocation during one call (output included)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(ns: list[int], *, B: int, H: int, D: int, tile: int, causal: bool, repeats: int,
        naive_max_gib: float) -> list[dict]:
    """Measure every N; one dict of figures per N (naive entries None when skipped)."""
    rng = np.random.default_rng(0)
    rows = []
    for N in ns:
        Q, K, V = (rng.standard_normal((B, H, N, D), dtype=np.float32) for _ in range(3))
        row = {"N": N, "naive_s": None, "naive_mib": None, "err": None}
        fns = [lambda: flash(Q, K, V, tile, causal)]
        if B * H * N * N * 4 <= naive_max_gib * 2**30:
            fns.append(lambda: naive_attention(Q, K, V, causal))
        times = median_times(fns, repeats)
        row["flash_s"], row["flash_cpu"] = times[0]
        row["flash_mib"] = peak_bytes(fns[0]) / MIB
        if len(fns) == 2:
            row["naive_s"], row["naive_cpu"] = times[1]
            row["naive_mib"] = peak_bytes(fns[1]) / MIB
            ref, out = fns[1](), fns[0]()
            row["err"] = float(np.abs(out - ref).max() / np.abs(ref).max())
        rows.append(row)
        print(f"N={N}: flash {row['flash_s']:.3f} s", flush=True)
    return rows


def markdown(rows: list[dict], *, B: int, H: int, D: int) -> str:
    """The results as a markdown table."""
    lines = ["| N | naive time (ms) | flash time (ms) | flash / naive (wall) "
             "| flash / naive (CPU) | naive peak (MiB) | flash peak (MiB) "
             "| flash peak - output (MiB) | max rel. diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out_mib = B * H * r["N"] * D * 4 / MIB
        flash_cells = f"{r['flash_s'] * 1e3:.1f}", f"{r['flash_mib']:.1f}", \
            f"{r['flash_mib'] - out_mib:.2f}"
        if r["naive_s"] is None:
            cells = [str(r["N"]), "skipped", flash_cells[0], "-", "-", "-", *flash_cells[1:],
                     "-"]
        else:
            cells = [str(r["N"]), f"{r['naive_s'] * 1e3:.1f}", flash_cells[0],
                     f"{r['flash_s'] / r['naive_s']:.2f}",
                     f"{r['flash_cpu'] / r['naive_cpu']:.2f}", f"{r['naive_mib']:.0f}",
                     *flash_cells[1:], f"{r['err']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, *, B: int, H: int, D: int, tile: int,
         causal: bool) -> None:
    """Two log-log panels: time and peak memory against N."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["N"] for r in rows]
    dense = [r for r in rows if r["naive_s"] is not None]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.plot(ns, [r["flash_s"] * 1e3 for r in rows], "o-", label=f"flash (tile {tile})")
    ax_t.plot([r["N"] for r in dense], [r["naive_s"] * 1e3 for r in dense], "s--",
              label="naive (dense)")
    ax_t.set(xlabel="sequence length N", ylabel="time (ms, median)", title="Time")
    ax_m.plot(ns, [r["flash_mib"] for r in rows], "o-", label="flash peak")
    ax_m.plot([r["N"] for r in dense], [r["naive_mib"] for r in dense], "s--",
              label="naive peak")
    ax_m.plot(ns, [B * H * n * D * 4 / MIB for n in ns], ":", color="gray",
              label="output alone")
    ax_m.set(xlabel="sequence length N", ylabel="peak traced memory (MiB)",
             title="Peak memory")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    kind = "Causal" if causal else "Full (non-causal)"
    fig.suptitle(f"{kind} attention, float32, B={B}, H={H}, D={D}, single thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+",
                        default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive-max-gib", type=float, default=4.0,
                        help="skip naive when its score matrix alone exceeds this many GiB")
    parser.add_argument("--non-causal", action="store_true", help="full attention, no mask")
    parser.add_argument("--plot", type=Path, default=HERE / "flash_attention.png")
    args = parser.parse_args()
    shape = {"B": args.batch, "H": args.heads, "D": args.head_dim}
    opts = {"tile": args.tile, "causal": not args.non_causal}
    rows = run(args.ns, repeats=args.repeats, naive_max_gib=args.naive_max_gib, **opts,
               **shape)
    print()
    print(markdown(rows, **shape))
    plot(rows, args.plot, **opts, **shape)
    print(f"\nplot written to {args.plot.name}")


if __name__ == "__main__":
    main()
