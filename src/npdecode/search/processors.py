"""Logits processors: small pure functions over (N, V) arrays, one per sampling option.

Every function takes logits (N, V) and returns a new float64 array (N, V); the input is
never modified. A token that is filtered out gets logit -inf, so it has probability exactly 0
after softmax. A row always keeps at least one token with a finite logit (its best one), so a
processed row is never entirely -inf unless it came in that way.

The order in which :func:`npdecode.search.sampling.sample` composes them:
penalties and n-gram bans on the raw logits, then temperature, then top-k, top-p, min-p.
Ties are broken towards the lowest token id everywhere (stable sorts), so the result never
depends on anything but the row itself.
"""

from __future__ import annotations

import numpy as np

# A filtered-out token. -inf (not the finite attention MASK) on purpose: softmax gives it
# probability exactly 0, so it can never be sampled, whatever the other logits are.
FILTERED = -np.inf


def softmax(logits: np.ndarray) -> np.ndarray:
    """Stable softmax over the last axis, float64: (..., V) -> (..., V). -inf gives 0."""
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):  # x - max below -1.8e308 is -inf: probability 0, as it is
        e = np.exp(x - x.max(axis=-1, keepdims=True))       # [..., V]
    return e / e.sum(axis=-1, keepdims=True)


def apply_penalties(logits: np.ndarray, counts: np.ndarray, *, frequency: float = 0.0,
                    presence: float = 0.0) -> np.ndarray:
    """Repetition penalties: ``logits - frequency * count - presence * (count > 0)``.

    ``counts`` (N, V) is how often each token occurs in the row's sequence so far (prompt
    included). Positive penalties discourage repetition; negative ones encourage it.
    """
    x = np.asarray(logits, dtype=np.float64)                 # [N, V]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below
        if frequency:
            x = x - frequency * counts                       # [N, V]
        if presence:
            x = x - presence * (counts > 0)                  # [N, V]
    finite = np.isfinite(x)
    if not finite.all() and (~finite & np.isfinite(logits)).any():
        raise ValueError(f"frequency_penalty={frequency} / presence_penalty={presence} overflow "
                         f"the logits (a penalized logit became infinite); use penalties of "
                         f"the size of the logits")
    return x if x is not logits else x.copy()


def ban_tokens(logits: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """Set the logits of banned tokens (mask (N, V), True = banned) to -inf."""
    return np.where(banned, FILTERED, np.asarray(logits, dtype=np.float64))  # [N, V]


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by the temperature (> 0): logits (N, V) -> logits / T (N, V).

    Temperature 0 (greedy) is not a division; strategies take the argmax instead.
    """
    if not temperature > 0:
        raise ValueError(f"apply_temperature needs temperature > 0, got {temperature}")
    return np.asarray(logits, dtype=np.float64) / temperature


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k highest logits of each row (ties: lowest ids first); k = 0 or k >= V keeps all."""
    if k < 0:
        raise ValueError(f"top_k_filter needs k >= 0 (0 keeps every token), got {k}")
    x = np.asarray(logits, dtype=np.float64)                 # [N, V]
    n, v = x.shape
    if k == 0 or k >= v:
        return x.copy()
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]     # [N, k] best first
    keep = np.zeros((n, v), dtype=bool)
    keep[np.arange(n)[:, None], order] = True
    return np.where(keep, x, FILTERED)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the smallest set of most probable tokens whose probability reaches p.

    Tokens are taken in order of probability (ties: lowest id first) until their sum is >= p;
    a token is kept when the probability of the tokens before it is still below p, and the
    best token is always kept (never fewer than one): p = 0 keeps only it, p = 1 keeps all.
    """
    if not 0.0 <= p <= 1.0:  # (NaN included)
        raise ValueError(f"top_p_filter needs 0 <= p <= 1 (1 keeps every token, 0 only the "
                         f"most probable), got {p}")
    x = np.asarray(logits, dtype=np.float64)                 # [N, V]
    if p == 1.0:
        return x.copy()
    n, _ = x.shape
    probs = softmax(x)                                       # [N, V]
    order = np.argsort(-probs, axis=1, kind="stable")        # [N, V] most probable first
    sorted_p = np.take_along_axis(probs, order, axis=1)      # [N, V]
    before = np.zeros_like(sorted_p)                         # [N, V] mass of better tokens
    np.cumsum(sorted_p[:, :-1], axis=1, out=before[:, 1:])   # (exclusive: no subtraction's
                                                             # rounding at the boundary)
    keep_sorted = before < p                                 # [N, V] True for a prefix
    keep_sorted[:, 0] = True                                 # never fewer than one token
    keep = np.empty_like(keep_sorted)
    keep[np.arange(n)[:, None], order] = keep_sorted
    return np.where(keep, x, FILTERED)


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least ``min_p`` times the row's highest probability."""
    if not 0.0 <= min_p <= 1.0:  # above 1 (or NaN) no token would be kept
        raise ValueError(f"min_p_filter needs 0 <= min_p <= 1 (0 keeps every token), "
                         f"got {min_p}")
    x = np.asarray(logits, dtype=np.float64)                 # [N, V]
    if min_p == 0.0:
        return x.copy()
    probs = softmax(x)                                       # [N, V]
    keep = probs >= min_p * probs.max(axis=1, keepdims=True)
    return np.where(keep, x, FILTERED)


def warp(logits: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
         min_p: float = 0.0) -> np.ndarray:
    """Temperature (> 0), then top-k, top-p, min-p: logits (N, V) -> processed logits (N, V).

    Each row is shifted so that its max is 0. The resulting distribution is the same
    (softmax and every filter here ignore a constant shift), and dividing by a tiny
    temperature can then not overflow to inf - inf = NaN. A temperature above 1 divides
    first, so that it brings logits that lie further apart than the float64 range back
    within it; a difference that still overflows to -inf has probability 0 either way.
    """
    x = np.asarray(logits, dtype=np.float64)                  # [N, V]
    if temperature > 1:
        x = apply_temperature(x, temperature)
    row_max = x.max(axis=1, keepdims=True)                    # [N, 1]
    with np.errstate(over="ignore"):  # a tiny T sends low logits to -inf: zero probability
        x = x - np.where(np.isfinite(row_max), row_max, 0.0)
        if temperature <= 1:
            x = apply_temperature(x, temperature)
    x = top_k_filter(x, top_k)
    x = top_p_filter(x, top_p)
    return min_p_filter(x, min_p)


def one_hot_argmax(logits: np.ndarray) -> np.ndarray:
    """Greedy as a distribution (..., V): probability 1 on each row's argmax (ties: lowest id)."""
    x = np.asarray(logits)
    best = x.argmax(axis=-1)                                 # [...]
    return (np.arange(x.shape[-1]) == best[..., None]).astype(np.float64)  # [..., V]


def distribution(logits: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0) -> np.ndarray:
    """The sampling distribution (..., V) of logits (..., V) under the processors.

    Temperature 0 is greedy: a one-hot distribution on the argmax (ties: lowest id), which
    top-k, top-p and min-p cannot change.
    """
    x = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return one_hot_argmax(x)
    flat = x.reshape(-1, x.shape[-1])                        # [N, V]
    warped = warp(flat, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return softmax(warped).reshape(x.shape)


def sample_categorical(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: row i takes the first token whose cumulative probability exceeds u[i].

    ``probs`` (N, V) non-negative rows with a positive, finite sum (need not be 1), ``u``
    (N,) uniforms in [0, 1). A deterministic function of its inputs, so all randomness stays
    with the caller's generators. A token of probability 0 is never returned.
    """
    probs = np.asarray(probs, dtype=np.float64)               # [N, V]
    n, v = probs.shape
    cdf = np.cumsum(probs, axis=1)                            # [N, V]
    bad = ~(cdf[:, -1] > 0) | ~np.isfinite(cdf[:, -1]) | (probs < 0).any(axis=1)   # [N]
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"sample_categorical: row {r} has no probability to draw from "
                         f"(its entries must be non-negative with a positive, finite sum)")
    target = np.asarray(u, dtype=np.float64) * cdf[:, -1]     # [N]
    tok = (cdf <= target[:, None]).sum(axis=1)                # [N] first index with cdf > target
    # Rounding can put u * total at (or past) the last cumulative value; fall back to the
    # last token that has any probability rather than to a zero-probability one.
    last = v - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)      # [N]
    return np.minimum(tok, last)
