"""Checks shared by every search strategy: bad input is refused before any work starts, and
bad model output is reported naming the batch item, never silently clipped or dropped."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np

from npdecode.models.protocol import check_finite, check_int, vocab_size_of
from npdecode.numerics import part_maxima


def check_extend_shape(logits: object, n: int, t: int, vocab_size: int | None,
                       who: str = "the model") -> None:
    """Refuse ``extend`` output that is not an array of logits (n, t, V), before it is
    indexed (``who`` names the model in the message)."""
    if not isinstance(logits, np.ndarray) or logits.ndim != 3 or logits.shape[:2] != (n, t):
        shape = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"{who}'s extend returned logits of shape {shape}; expected "
                         f"({n}, {t}, {vocab_size if vocab_size is not None else 'V'}): one "
                         f"row per sequence, one position per new token")


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int | None) -> list[list[int]]:
    """Each prompt a non-empty list of integer ids in [0, vocab_size)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list of prompts, each a list of token ids")
    limit = vocab_size if vocab_size is not None else _ID_LIMIT
    clean = []
    for b, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, (Sequence, np.ndarray)):
            raise ValueError(f"prompt {b} must be a list of token ids, got {type(prompt).__name__}")
        if isinstance(prompt, np.ndarray) and prompt.ndim != 1:
            raise ValueError(f"prompt {b} must be a list of token ids (one dimension), got an "
                             f"array of shape {prompt.shape}")
        if len(prompt) == 0:
            raise ValueError(f"prompt {b} is empty; every prompt needs at least one token")
        if isinstance(prompt, np.ndarray) and prompt.dtype.kind in "iu":
            prompt = prompt.tolist()  # Python ints: checked like a list
        if all(type(tok) is int for tok in prompt) and min(prompt) >= 0 and (
                max(prompt) < limit):
            clean.append(list(prompt))  # the common case, checked in bulk
            continue
        row = []
        for pos, tok in enumerate(prompt):
            bad = (isinstance(tok, bool) or not isinstance(tok, numbers.Integral) or tok < 0
                   or tok >= limit)
            if bad:
                raise ValueError(
                    f"prompt {b}, position {pos}: token {tok!r} is not a valid id; ids must be "
                    + (f"integers in [0, {vocab_size}) (vocab size {vocab_size})"
                       if vocab_size is not None else
                       "integers in [0, vocab_size), and below 2**63 (the model declares no "
                       "vocab_size)"))
            row.append(int(tok))
        clean.append(row)
    return clean


# Token ids are int64 arrays inside: without a declared vocabulary, this bounds them.
_ID_LIMIT = 2 ** 63


def check_eos(eos_token_id: object, vocab_size: int | None, name: str = "eos_token_id"
              ) -> int | None:
    """None, or an integer id inside the vocabulary (``name`` is the argument's name)."""
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, numbers.Integral):
        raise ValueError(f"{name} must be an integer id or None, got {eos_token_id!r}")
    if eos_token_id < 0 or eos_token_id >= (vocab_size if vocab_size is not None else _ID_LIMIT):
        within = (f"[0, {vocab_size})" if vocab_size is not None
                  else "the vocabulary (ids in [0, 2**63))")
        raise ValueError(f"{name} {eos_token_id} is outside {within}")
    return int(eos_token_id)


def check_length_penalty(name: str, value: object, max_new_tokens: int) -> float:
    """A finite exponent for which ``len ** value`` stays a normal float64 (finite, not 0)
    for every length up to ``max_new_tokens``; beyond that the divisor itself overflows or
    vanishes and scores stop ranking. (A score can still overflow if a logprob is huge as
    well: that takes logits of 1e7 and more, and shows as -inf, never as NaN.)"""
    alpha = check_finite(name, value)
    limit = length_penalty_limit(max_new_tokens)
    if abs(alpha) > limit:
        raise ValueError(f"{name}={value} makes len ** {name} overflow or underflow "
                         f"float64 for lengths up to max_new_tokens={max_new_tokens}; use "
                         f"|{name}| <= {limit:.4g}")
    return alpha


_LOG_PENALTY_LIMIT = 700.0  # len ** alpha within exp(+-700): finite and normal in float64


def length_penalty_limit(max_new_tokens: int) -> float:
    """The largest |exponent| ``check_length_penalty`` accepts for this budget (inf when
    every length is 0 or 1)."""
    return _LOG_PENALTY_LIMIT / math.log(max_new_tokens) if max_new_tokens > 1 else math.inf


def check_context(model: object, prompts: list[list[int]], max_new_tokens: int,
                  who: str = "the model") -> None:
    """Refuse, before decoding, a prompt that cannot be extended by max_new_tokens (``who``
    names the model in the message)."""
    limit = getattr(model, "max_context", None)
    if limit is None:
        return
    for b, p in enumerate(prompts):
        if len(p) + max_new_tokens > limit:
            raise ValueError(
                f"prompt {b} has {len(p)} token{'s' * (len(p) != 1)}; with "
                f"max_new_tokens={max_new_tokens} it needs {len(p) + max_new_tokens} positions "
                f"but {who}'s context is {limit}. Shorten the prompt or lower max_new_tokens.")


def check_request(model: object, prompts: Sequence[Sequence[int]], max_new_tokens: object,
                  eos_token_id: object) -> tuple[list[list[int]], int, int | None, int | None]:
    """The checks every strategy makes before any work.

    Returns (prompts as lists of ints, max_new_tokens, eos id or None, vocabulary size or None
    when the model does not declare one: see ``check_ids``).
    """
    vocab = vocab_size_of(model)
    clean = check_prompts(prompts, vocab)
    n_new = check_int("max_new_tokens", max_new_tokens, minimum=0)
    eos = check_eos(eos_token_id, vocab)
    check_context(model, clean, n_new)
    return clean, n_new, eos, vocab


def check_ids(prompts: list[list[int]], eos: int | None, vocab: int) -> None:
    """Re-check prompt ids and the EOS once the vocabulary is known from the first logits (a
    model that declares no ``vocab_size``)."""
    check_prompts(prompts, vocab)
    check_eos(eos, vocab)


def check_logits(logits: np.ndarray, n_rows: int, vocab_size: int | None,
                 items: np.ndarray, rows: np.ndarray | None = None, parts: int = 1,
                 live: np.ndarray | None = None, who: str = "model") -> np.ndarray:
    """Validate one step's logits (n_rows, V); ``items[i]`` is sequence i's batch item and
    ``rows[i]`` its row of ``logits`` (default: row i). ``live`` (n_rows,) bool, if given,
    marks the rows whose values are checked (the others are placeholders whose logits are
    never used); every row's shape is. ``who`` names the model in the errors.

    Returns each row's maxima over ``parts`` consecutive column ranges (n_rows, parts), or
    its maximum alone (n_rows, 1) where the logits do not split that way (see
    ``part_maxima``); log-softmax and candidate selection need them anyway, and every fault
    shows in them at no extra cost (a NaN is its range's maximum, +inf is the maximum, and a
    row that is entirely -inf has only -inf maxima).
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.shape[0] != n_rows or (
            vocab_size is not None and logits.shape[1] != vocab_size):
        shape = getattr(logits, "shape", type(logits).__name__)
        want = f"({n_rows}, {vocab_size if vocab_size is not None else 'V'})"
        raise ValueError(f"{who} returned logits of shape {shape}; expected {want} "
                         f"(one row per sequence, batch items {sorted(set(items.tolist()))})")
    if logits.dtype.kind != "f":
        raise ValueError(f"{who} returned logits of dtype {logits.dtype}; expected floats")
    m = part_maxima(logits, parts)                     # [n_rows, parts] or [n_rows, 1]
    if not np.isfinite(m).all():  # a range of -inf is fine while the row has a real token
        bad = np.isnan(m).any(axis=1) | np.isposinf(m).any(axis=1) | np.isneginf(m).all(axis=1)
        if live is not None:
            bad &= live
        if bad.any():
            _raise_on_bad_row(logits, bad, items, rows, who)
    return m


def _raise_on_bad_row(logits: np.ndarray, bad: np.ndarray, items: np.ndarray,
                      rows: np.ndarray | None, who: str) -> None:
    """Raise for the first row of ``logits`` marked ``bad`` (n,), naming its batch item."""
    r = int(np.flatnonzero(bad)[0])
    row = logits[r]
    if rows is not None:
        items = items[np.argsort(rows)]
    what = ("NaN" if np.isnan(row).any() else "+inf" if np.isposinf(row).any()
            else "a row that is entirely -inf (no token has any probability)")
    raise ValueError(f"{who} returned {what} in the logits for batch item {int(items[r])}")
