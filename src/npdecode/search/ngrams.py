"""The n-gram repetition ban shared by every strategy (``no_repeat_ngram_size``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def banned_tokens(seq: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would repeat an n-gram of ``seq`` (1-D, prompt included) if appended.

    Appending token t creates the n-gram (seq[-(n-1):], t); it is banned when that n-gram
    already occurs anywhere in ``seq``. n = 1 bans every token already present.
    """
    if n == 1:
        return np.unique(seq)
    if len(seq) < n:
        return np.empty(0, dtype=np.int64)
    windows = sliding_window_view(seq, n)                   # [L-n+1, n]
    match = (windows[:, :-1] == seq[len(seq) - n + 1:]).all(axis=1)
    return np.unique(windows[match, -1])


def ngram_ban_mask(seqs: Sequence[np.ndarray], n: int, vocab_size: int) -> np.ndarray:
    """Boolean mask (N, V): True where a token is banned for row i's sequence ``seqs[i]``."""
    mask = np.zeros((len(seqs), vocab_size), dtype=bool)
    if n <= 0:
        return mask
    for i, seq in enumerate(seqs):
        banned = banned_tokens(np.asarray(seq), n)
        # A padding placeholder outside the vocabulary (-1) is no token: never ban by it.
        mask[i, banned[(banned >= 0) & (banned < vocab_size)]] = True
    return mask
