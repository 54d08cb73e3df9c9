"""How a search strategy calls a model, whatever the model implements.

A strategy keeps one row per live sequence and, each step, says which old row each new row
continues (``parents``) and with which token. The runner turns that into model calls:

- ``CachedRunner`` (models with the cached protocol): one ``prefill``, then per step one
  gather of the KV cache by parent and one ``extend`` call over every live row;
- ``RecomputeRunner`` (models with only ``forward``): keeps every row's full token sequence
  and re-runs ``forward`` on it each step, one call per distinct sequence length (a forward
  call needs rows of equal length).

Both return the same logits, so a strategy is written once against this interface.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from npdecode.models.protocol import is_cached, vocab_size_of
from npdecode.search.validate import check_extend_shape


class CachedRunner:
    """Incremental decoding through a model's KV cache."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], *, rows: int, new_tokens: int):
        self.model = model
        self.prompts = prompts
        slots = max(len(p) for p in prompts) + max(new_tokens, 1)
        self.cache = model.new_cache(max(rows, len(prompts)), slots)
        self.perm = np.arange(len(prompts))  # cache row holding each sequence
        self.calls = 0   # model calls made
        self.rows = 0    # rows (sequences) the model was run on, summed over calls

    def start(self) -> np.ndarray:
        """Logits (B, V) of each prompt's last token; row b is prompt b."""
        self.calls += 1
        self.rows += len(self.prompts)
        return self.model.prefill(self.prompts, self.cache)

    def advance(self, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """New row i = old row ``parents[i]`` + ``tokens[i]``; returns logits (n, V)."""
        logits, rows = self.advance_rows(parents, tokens)
        return logits if rows is None else np.take(logits, rows, axis=0)

    def advance_rows(self, parents: np.ndarray, tokens: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Like ``advance``, but the logits (n, V) stay in the model's row order: sequence
        i's are row ``rows[i]`` (``rows`` None: row i). Saves gathering them when the caller
        can index instead."""
        # The cache keeps rows where they are and copies only forked ones; sequence i lives
        # in cache row perm[i], so tokens go in, and logits come out, through perm.
        self.perm = self.cache.fork(self.perm, parents)
        n = len(tokens)
        if n <= _FEW_ROWS and self.perm.tolist() == list(range(n)):
            # Every sequence is in its own row, in order (K = 1, or no beam moved).
            return self._extend(np.asarray(tokens)[:, None]), None
        in_cache_order = np.empty(len(tokens), dtype=np.int64)
        in_cache_order[self.perm] = tokens
        return self._extend(in_cache_order[:, None]), self.perm

    def _extend(self, tokens: np.ndarray) -> np.ndarray:
        """The model's logits (n, V) for one new token per row (n, 1), their shape checked."""
        self.calls += 1
        self.rows += len(tokens)
        logits = self.model.extend(tokens, self.cache)
        check_extend_shape(logits, len(tokens), 1, None)
        return logits[:, 0]


# Up to this many rows the runner checks, in plain Python, whether they are in sequence order.
_FEW_ROWS = 64


class RecomputeRunner:
    """Decoding a model that has only ``forward``, by re-running every row's prefix."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], *, rows: int = 0,
                 new_tokens: int = 0):
        self.model = model
        self.vocab = vocab_size_of(model)  # None when the model does not declare it
        self.seqs = [np.asarray(p, dtype=np.int64) for p in prompts]
        self.items = np.arange(len(prompts))  # batch item of each row, for error messages
        self.calls = 0
        self.rows = 0

    def start(self) -> np.ndarray:
        return self._run()

    def advance_rows(self, parents: np.ndarray, tokens: np.ndarray
                     ) -> tuple[np.ndarray, None]:
        """``advance``'s logits, already in sequence order (rows None)."""
        return self.advance(parents, tokens), None

    def advance(self, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        self.seqs = [np.append(self.seqs[p], t) for p, t in zip(parents.tolist(), tokens.tolist())]
        self.items = self.items[parents]
        return self._run()

    def _run(self) -> np.ndarray:
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(self.seqs):
            by_length.setdefault(len(s), []).append(i)
        groups = []
        for length, idx in by_length.items():
            logits = np.asarray(self.model.forward(np.stack([self.seqs[i] for i in idx])))
            self.calls += 1
            self.rows += len(idx)
            items = sorted(set(self.items[idx].tolist()))
            # The declared vocabulary, else the first group's width, else any.
            width = self.vocab if self.vocab is not None else (
                groups[0][1].shape[1] if groups else "V")
            if (logits.ndim != 2 or logits.shape[0] != len(idx)
                    or (width != "V" and logits.shape[1] != width)):
                raise ValueError(f"model.forward returned logits of shape {logits.shape} for "
                                 f"{len(idx)} sequences of length {length} (batch items "
                                 f"{items}); expected ({len(idx)}, {width})")
            if not np.issubdtype(logits.dtype, np.floating):
                raise ValueError(f"model.forward returned logits of dtype {logits.dtype} for "
                                 f"batch items {items}; expected floats")
            groups.append((idx, logits))
        dtype = np.result_type(*(logits.dtype for _, logits in groups))
        out = np.empty((len(self.seqs), groups[0][1].shape[1]), dtype=dtype)   # [n, V]
        for idx, logits in groups:
            out[idx] = logits
        return out


def make_runner(model, prompts: Sequence[Sequence[int]], *, rows: int, new_tokens: int,
                use_cache: bool = True):
    """The fastest runner ``model`` supports (``use_cache=False`` forces recomputation)."""
    if use_cache and is_cached(model):
        return CachedRunner(model, prompts, rows=rows, new_tokens=new_tokens)
    if not callable(getattr(model, "forward", None)):
        needs = ("forward(token_ids) -> logits, which use_cache=False runs" if is_cached(model)
                 else "forward(token_ids) -> logits, or the cached protocol (new_cache, "
                      "prefill, extend)")
        raise ValueError(f"{type(model).__name__} is not a model this search can call: it "
                         f"needs {needs}")
    return RecomputeRunner(model, prompts)
