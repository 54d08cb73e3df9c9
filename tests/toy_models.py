"""Small test models: a wrapper that keeps only a model's cached protocol, one that also
records every call, one that hides the cached protocol, and a model whose logits never
change."""

from __future__ import annotations

import numpy as np


class CachedOnly:
    """``model``'s cached protocol (new_cache, prefill, extend) and vocab_size, nothing else."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.vocab_size

    def new_cache(self, rows, slots):
        return self.model.new_cache(rows, slots)

    def prefill(self, prompts, cache):
        return self.model.prefill(prompts, cache)

    def extend(self, tokens, cache):
        return self.model.extend(tokens, cache)


class Recording(CachedOnly):
    """Wraps a cached model; ``log`` gets ("prefill", rows, 0) or ("extend", rows, t) per call."""

    def __init__(self, model):
        super().__init__(model)
        self.log, self.max_context = [], model.max_context

    def forward(self, ids):
        return self.model.forward(ids)

    def prefill(self, prompts, cache):
        self.log.append(("prefill", len(prompts), 0))
        return super().prefill(prompts, cache)

    def extend(self, tokens, cache):
        self.log.append(("extend", *np.shape(tokens)))
        return super().extend(tokens, cache)

    @property
    def extend_rows(self) -> list[int]:
        """Rows of each extend call, in order."""
        return [n for kind, n, _ in self.log if kind == "extend"]


class ForwardOnly:
    """Hides the cached protocol of a model, forcing the recompute path."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.vocab_size

    def forward(self, ids):
        return self.model.forward(ids)


class FixedLogits:
    """A model whose next-token logits are the same row whatever the input (forward only)."""

    def __init__(self, row):
        self.row = np.asarray(row, dtype=np.float64)
        self.vocab_size = len(self.row)

    def forward(self, token_ids):
        return np.tile(self.row, (len(token_ids), 1))
