"""The matrix products of one decoding step of 256 beams, timed with NumPy's BLAS as it runs.

The benchmark models' steps are mostly these products: TinyLM(1000, 64)'s output projection,
and the random GPT-2's input projections, MLP and head (n_embd 64, vocab 1000). Run it under
different OPENBLAS_CORETYPE settings to see what OpenBLAS's choice of kernels is worth (see
benchmarks/README.md); it prints the kernels in use.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench_beam import blas_description, median_time, warn_if_threaded

# (name, rows, inner, columns) of x (rows, inner) @ w (inner, columns)
PRODUCTS = [
    ("output projection / GPT-2 head (256 x 64 x 1000)", 256, 64, 1000),
    ("GPT-2 attention input (256 x 64 x 192)", 256, 64, 192),
    ("GPT-2 MLP in (256 x 64 x 256)", 256, 64, 256),
    ("GPT-2 MLP out (256 x 256 x 64)", 256, 256, 64),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=201, help="calls per product (median)")
    args = parser.parse_args()
    warn_if_threaded()
    print(f"numpy {np.__version__}, {blas_description()}; median of {args.runs} calls\n")
    print("| product | float32 (µs) | float32 GFLOP/s | float64 (µs) | float64 GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, rows, inner, cols in PRODUCTS:
        cells = []
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal((rows, inner)).astype(dtype)
            w = rng.standard_normal((inner, cols)).astype(dtype)
            seconds = median_time(lambda: x @ w, args.runs)
            cells += [f"{seconds * 1e6:.0f}", f"{2 * rows * inner * cols / seconds / 1e9:.0f}"]
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
