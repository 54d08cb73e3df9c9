"""TinyLM: the seed model. A random single-block transformer, reproduced bit for bit.

Its logits mean nothing; it exists so that decoding logic can be tested and timed on a model
anyone can rebuild exactly from a seed (the construction order is fixed, so implementations
elsewhere build bit-identical weights and results can be compared).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from npdecode.attention.dense import causal_mask, dense_attention
from npdecode.cache import KVCache
from npdecode.models.protocol import (check_int, check_token_ids, model_dtype,
                                      prefill_with_extend)


class TinyLM:
    """Single-head, single-block causal transformer; no positions, norms or biases.

    ``forward`` is the plain definition; ``prefill``/``extend`` are the cached path and agree
    with it to 1e-10 in float64.
    """

    max_context = None  # no positional embedding, hence no context limit

    def __init__(self, vocab_size: int = 1000, d_model: int = 64, seed: int = 0,
                 dtype=np.float64):
        self.vocab_size = vocab_size = check_int("vocab_size", vocab_size, minimum=1)
        self.d_model = d_model = check_int("d_model", d_model, minimum=1)
        seed = check_int("seed", seed, minimum=0)  # the weights are a function of the seed
        self.dtype = model_dtype(dtype)
        rng = np.random.default_rng(seed)
        s = 1 / np.sqrt(d_model)
        d, v = d_model, vocab_size
        # The draw order is fixed (other implementations draw the same way); do not reorder.
        self.embed = rng.standard_normal((v, d)) * s          # [V, d]
        self.Wq = rng.standard_normal((d, d)) * s             # [d, d]
        self.Wk = rng.standard_normal((d, d)) * s
        self.Wv = rng.standard_normal((d, d)) * s
        self.Wo = rng.standard_normal((d, d)) * s
        self.W1 = rng.standard_normal((d, 4 * d)) * s         # [d, 4d]
        self.W2 = rng.standard_normal((4 * d, d)) * s         # [4d, d]
        self.lm_head = rng.standard_normal((d, v)) * s        # [d, V]
        if self.dtype != np.float64:
            for name in ("embed", "Wq", "Wk", "Wv", "Wo", "W1", "W2", "lm_head"):
                setattr(self, name, getattr(self, name).astype(self.dtype))
        # Fused projection for the cached path: one matmul instead of three.
        self._Wqkv = np.concatenate([self.Wq, self.Wk, self.Wv], axis=1)  # [d, 3d]
        if self.dtype == np.float64:
            # Same numbers, column-major: OpenBLAS multiplies float64 rows by such matrices
            # faster (the head: ~15% for a decoding step's few dozen rows). Float32 gains
            # nothing and keeps row-major.
            self._Wqkv, self.W1, self.W2, self.lm_head = (
                np.asfortranarray(w) for w in (self._Wqkv, self.W1, self.W2, self.lm_head))
        self._scale = float(1 / np.sqrt(d_model))  # a Python float keeps float32 float32

    # -- the plain definition -------------------------------------------------------------

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) -> logits (N, V) of the last position."""
        ids = check_token_ids(token_ids, self.vocab_size, forward=True)
        x = self.embed[ids]                                   # [N, T, d]
        q, k, v = x @ self.Wq, x @ self.Wk, x @ self.Wv       # [N, T, d] each
        a = dense_attention(q, k, v, causal_mask(ids.shape[1]), self._scale)  # [N, T, d]
        x = x + a @ self.Wo                                    # [N, T, d]
        x = x + np.maximum(x @ self.W1, 0) @ self.W2           # [N, T, d]
        return x[:, -1] @ self.lm_head                         # [N, V]

    # -- the cached protocol --------------------------------------------------------------

    def new_cache(self, rows: int, slots: int) -> KVCache:
        return KVCache(layers=1, rows=rows, heads=1, slots=slots, head_dim=self.d_model,
                       dtype=self.dtype)

    def prefill(self, prompts: Sequence[Sequence[int]], cache: KVCache) -> np.ndarray:
        return prefill_with_extend(self, prompts, cache)

    def extend(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        tokens = check_token_ids(tokens, self.vocab_size, "tokens")
        n, t = tokens.shape
        d = self.d_model
        # Dense layers work on (n*t, d): a (n, t, d) @ (d, e) product would run as n separate
        # matrix products, each reading the whole weight matrix.
        x = self.embed[tokens.reshape(-1)]                     # [n*t, d] (a fresh array)
        qkv = (x @ self._Wqkv).reshape(n, 1, t, 3 * d)         # [n, 1, t, 3d] (one head)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]   # [n, 1, t, d] each
        cache.write(0, k, v)
        a = cache.attend(0, q, self._scale).reshape(n * t, d)  # [n*t, d]
        cache.advance(t)
        x += a @ self.Wo                                       # in place: same sums as forward
        h = x @ self.W1                                        # [n*t, 4d]
        x += np.maximum(h, 0, out=h) @ self.W2
        return (x @ self.lm_head).reshape(n, t, self.vocab_size)  # [n, t, V]
