"""KV cache layout: attention products over the filled part of long blocks, or whole blocks.

A decoding step multiplies each (row, head)'s query by its cached keys, and its weights by
its cached values: 2 * rows * heads small products over the slots filled so far. The cache
can hold them two ways:

- strided: blocks of every slot the generation may need, of which the first W are filled,
  so the products read W slots out of each longer block;
- whole: blocks of W slots, read whole (``KVCache`` lays a large cache out this way, with
  blocks of up to a quarter more slots than are filled; the rest are read and masked).

Both read the same bytes, give the same products on the filled slots, and differ only in
how those bytes lie in memory. Each call runs with the processor's caches flushed first
(a pass over a buffer larger than the last-level cache), as in a decoding step, where the
cache's keys and values were last touched a whole model step before. Prints the median
time per product for each layout and filled width.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_beam import blas_description, median_time, warn_if_threaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="cache rows (B * K)")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--slots", type=int, default=81,
                        help="slots per block in the strided layout (prompt + new tokens)")
    parser.add_argument("--filled", type=int, action="append",
                        help="filled slots W (repeatable; default 24, 48, 64, 80)")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--flush-mib", type=int, default=64,
                        help="size of the buffer passed over before each call")
    args = parser.parse_args()
    warn_if_threaded()
    filled = args.filled or [24, 48, 64, 80]
    if min(filled) < 1 or max(filled) > args.slots:
        parser.error(f"--filled must lie in 1..{args.slots} (--slots)")

    rng = np.random.default_rng(0)
    R, H, D, S = args.rows, args.heads, args.head_dim, args.slots
    flush = np.zeros(args.flush_mib * 2**20 // 4, dtype=np.float32)

    def flush_caches():  # one pass over a buffer larger than the last-level cache
        np.add(flush, 1.0, out=flush)

    q = rng.standard_normal((R, H, 1, D)).astype(np.float32)
    long_k = rng.standard_normal((R, H, S, D)).astype(np.float32)
    long_v = rng.standard_normal((R, H, S, D)).astype(np.float32)
    print(f"rows {R}, heads {H}, head_dim {D}, float32; strided: blocks of {S} slots; "
          f"median of {args.runs} calls, caches flushed ({args.flush_mib} MiB) before each")
    print(f"numpy {np.__version__}, {blas_description()}\n")
    print("| filled W | keys read (MiB) | q k^T strided (µs) | q k^T whole (µs) | "
          "w v strided (µs) | w v whole (µs) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for W in filled:
        k_whole = np.ascontiguousarray(long_k[:, :, :W])
        v_whole = np.ascontiguousarray(long_v[:, :, :W])
        w = rng.random((R, H, 1, W)).astype(np.float32)
        k_strided, v_strided = long_k[:, :, :W], long_v[:, :, :W]
        assert np.allclose(q @ np.swapaxes(k_strided, -1, -2), q @ np.swapaxes(k_whole, -1, -2))
        t = {name: median_time(fn, args.runs, before=flush_caches) * 1e6 for name, fn in [
            ("qk strided", lambda: q @ np.swapaxes(k_strided, -1, -2)),
            ("qk whole", lambda: q @ np.swapaxes(k_whole, -1, -2)),
            ("wv strided", lambda: w @ v_strided),
            ("wv whole", lambda: w @ v_whole)]}
        print(f"| {W} | {k_whole.nbytes / 2**20:.1f} | {t['qk strided']:.0f} | "
              f"{t['qk whole']:.0f} | {t['wv strided']:.0f} | {t['wv whole']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
