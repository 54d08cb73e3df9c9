"""Greedy and sampled decoding, batched over prompts of different lengths.

Every prompt is one row. Each step the runner (``make_runner``) gives the logits (n, V) of the
rows still running, one token is chosen per row, and rows that emitted EOS or reached
``max_new_tokens`` stop being computed (the runner drops them). Choosing a token:

    raw logits (n, V)
      -> frequency / presence penalties (counts include the prompt)
      -> n-gram ban (``no_repeat_ngram_size``, prompt included)
      -> temperature 0: argmax (ties: lowest id)
         temperature > 0: / T, top-k, top-p, min-p, softmax, one inverse-CDF draw

The reported ``logprob`` is always the raw model's: the sum of log-softmax of the unmodified
logits at the chosen tokens, in float64; penalties and filters change which token is chosen,
never how it is scored.

Randomness: each prompt owns a ``np.random.Generator`` built from its own seed and draws
exactly one uniform per generated token, so its tokens depend only on its seed and its own
steps, never on the other prompts of the batch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from npdecode.numerics import FIRST_CAPACITY, grow, log_softmax
from npdecode.search import processors as P
from npdecode.search.ngrams import ngram_ban_mask
from npdecode.search.runner import make_runner
from npdecode.search.validate import (check_finite, check_ids, check_int, check_logits,
                                      check_request)


@dataclass(frozen=True)
class Generation:
    """One prompt's output.

    tokens:   generated ids only (prompt excluded); ends with the EOS id when ``finished``.
    logprob:  sum of the raw model's log-probabilities of ``tokens`` (float64), untouched by
              penalties, temperature or filters.
    finished: True when EOS was generated; False when ``max_new_tokens`` ran out (or, with
              ``no_repeat_ngram_size``, when every token was banned).
    """

    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finished: bool = False


@dataclass(frozen=True)
class SamplingOptions:
    """The checked sampling options (see :func:`sample` for their meaning)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0


def check_options(*, temperature: object = 1.0, top_k: object = 0, top_p: object = 1.0,
                  min_p: object = 0.0, frequency_penalty: object = 0.0,
                  presence_penalty: object = 0.0,
                  no_repeat_ngram_size: object = 0) -> SamplingOptions:
    """Validate sampling options; ValueError saying what is allowed."""
    t = check_finite("temperature", temperature)
    if t < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    k = check_int("top_k", top_k, minimum=0)
    p = check_finite("top_p", top_p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (1 disables it, 0 keeps only the most "
                         f"probable token), got {top_p}")
    mp = check_finite("min_p", min_p)
    if not 0.0 <= mp <= 1.0:
        raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p}")
    return SamplingOptions(
        temperature=t, top_k=k, top_p=p, min_p=mp,
        frequency_penalty=check_finite("frequency_penalty", frequency_penalty),
        presence_penalty=check_finite("presence_penalty", presence_penalty),
        no_repeat_ngram_size=check_int("no_repeat_ngram_size", no_repeat_ngram_size, minimum=0))


def make_generators(seed: object, n: int) -> list[np.random.Generator]:
    """One generator per prompt from ``seed``: None (fresh OS entropy), an int, or n ints.

    An int seeds every prompt alike, so a prompt's draws never depend on where it sits in the
    batch (identical prompts then give identical samples; pass one seed per copy, e.g.
    ``list(range(n))``, for independent samples of one prompt).
    """
    if seed is None:
        return [np.random.default_rng(s) for s in np.random.SeedSequence().spawn(n)]
    if isinstance(seed, np.ndarray) and seed.ndim == 0:  # a NumPy scalar array: its value
        seed = seed.item()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds = [seed] * n
    elif isinstance(seed, (Sequence, np.ndarray)) and not isinstance(seed, (str, bytes)):
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"seed has {len(seeds)} entries for {n} prompts; give one seed "
                             f"per prompt, or one int for all")
    else:
        raise ValueError(f"seed must be None, an int, or a list of one int per prompt, "
                         f"got {seed!r}")
    for b, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seed for prompt {b} must be a non-negative integer, got {s!r}")
    return [np.random.default_rng(int(s)) for s in seeds]


def choose_tokens(raw: np.ndarray, opts: SamplingOptions, *, counts: np.ndarray | None,
                  seqs: Sequence[np.ndarray] | None,
                  rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """One token per row from raw logits (n, V); -1 for a row whose every token is banned.

    ``counts`` (n, V) token counts of each row's sequence (needed for penalties), ``seqs``
    each row's full sequence (needed for the n-gram ban), ``rngs`` one generator per row
    (each draws one uniform when temperature > 0; unused, and may be empty, at 0).
    """
    x = raw                                                              # [n, V] float64
    if opts.frequency_penalty or opts.presence_penalty:
        x = P.apply_penalties(x, counts, frequency=opts.frequency_penalty,
                              presence=opts.presence_penalty)
    if opts.no_repeat_ngram_size:
        x = P.ban_tokens(x, ngram_ban_mask(seqs, opts.no_repeat_ngram_size, x.shape[1]))
    dead = ~np.isfinite(x.max(axis=1))                                   # [n] all banned
    if opts.temperature == 0:
        tok = x.argmax(axis=1)                                           # [n] lowest id on ties
    else:
        probs = P.softmax(P.warp(np.where(dead[:, None], 0.0, x), temperature=opts.temperature,
                                 top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p))  # [n, V]
        u = np.array([g.random() for g in rngs])                         # [n]
        tok = P.sample_categorical(probs, u)                             # [n]
    return np.where(dead, -1, tok)


def _decode(model, prompts: list[list[int]], *, max_new_tokens: int, eos: int | None,
            vocab: int | None, opts: SamplingOptions,
            rngs: list[np.random.Generator]) -> list[Generation]:
    """The decoding loop shared by :func:`greedy` and :func:`sample` (inputs already checked)."""
    B = len(prompts)
    if B == 0 or max_new_tokens == 0:
        return [Generation() for _ in prompts]
    runner = make_runner(model, prompts, rows=B, new_tokens=max_new_tokens)
    items = np.arange(B)                          # [n] batch item of each live row
    # [B, C] generated tokens; the capacity C doubles as they grow (``grow``).
    tokens = np.zeros((B, min(max_new_tokens, FIRST_CAPACITY)), dtype=np.int64)
    length = np.zeros(B, dtype=np.int64)          # [B] tokens generated so far
    logprob = np.zeros(B)                         # [B] float64
    finished = np.zeros(B, dtype=bool)            # [B]
    counts = None                                 # [B, V] token counts, prompt included
    logits = runner.start()
    for step in range(max_new_tokens):
        check_logits(logits, len(items), vocab, items)
        if vocab is None:  # the model declares no vocab_size: its first logits tell it
            vocab = logits.shape[1]
            check_ids(prompts, eos, vocab)
        if counts is None and (opts.frequency_penalty or opts.presence_penalty):
            counts = np.stack([np.bincount(p, minlength=vocab) for p in prompts])
        raw = np.asarray(logits, dtype=np.float64)                      # [n, V]
        seqs = None
        if opts.no_repeat_ngram_size:
            seqs = [np.concatenate([prompts[b], tokens[b, :length[b]]]) for b in items]
        row_rngs = [rngs[b] for b in items] if opts.temperature > 0 else []
        tok = choose_tokens(raw, opts, counts=None if counts is None else counts[items],
                            seqs=seqs, rngs=row_rngs)                   # [n]
        ok = tok >= 0                                                   # [n] rows with a token
        lp = log_softmax(raw)[np.arange(len(items)), np.maximum(tok, 0)]  # [n]
        b_ok = items[ok]                                                # [m] distinct items
        if step >= tokens.shape[1]:
            tokens = grow(tokens, step + 1)
        tokens[b_ok, length[b_ok]] = tok[ok]
        length[b_ok] += 1
        if counts is not None:
            counts[b_ok, tok[ok]] += 1
        logprob[b_ok] += lp[ok]
        done = ~ok | (tok == eos) if eos is not None else ~ok           # [n]
        finished[items[ok & done]] = True
        keep = np.flatnonzero(~done)                                    # [m] rows that go on
        if step + 1 == max_new_tokens or len(keep) == 0:
            break
        items = items[keep]
        logits = runner.advance(keep, tok[keep])
    return [Generation(tokens=tokens[b, :length[b]].tolist(), logprob=float(logprob[b]),
                       finished=bool(finished[b])) for b in range(B)]


def greedy(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
           eos_token_id: int | None = None) -> list[Generation]:
    """Greedy decoding: each step the most probable token (ties: the lowest id).

    ``model``: anything with ``forward(ids (N, T)) -> logits (N, V)``; models with the cached
    protocol are decoded incrementally. ``prompts``: B lists of ids, lengths may differ.
    Returns B :class:`Generation` s: generated tokens only, EOS included when generated (a row
    stops at its EOS; ``eos_token_id=None`` means no token stops it), at most
    ``max_new_tokens`` tokens each; ``logprob`` is the model's float64 log-probability.
    """
    clean, n_new, eos, vocab = check_request(model, prompts, max_new_tokens, eos_token_id)
    return _decode(model, clean, max_new_tokens=n_new, eos=eos, vocab=vocab,
                   opts=SamplingOptions(temperature=0.0), rngs=[])


def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
           eos_token_id: int | None = None, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0, frequency_penalty: float = 0.0,
           presence_penalty: float = 0.0, no_repeat_ngram_size: int = 0,
           seed: int | Sequence[int] | None = None) -> list[Generation]:
    """Sampled decoding with the usual processors, batched over prompts.

    Order: penalties and n-gram bans on the raw logits, then temperature,
    top-k, top-p, min-p.

    - ``frequency_penalty``: logits -= penalty * count of the token so far (prompt included);
      ``presence_penalty``: logits -= penalty * (count > 0).
    - ``no_repeat_ngram_size`` n > 0: a token that would repeat an n-gram of the sequence
      (prompt included) is banned. A row whose every token is banned stops, unfinished.
    - ``temperature``: logits / T; 0 is greedy (argmax, ties to the lowest id).
    - ``top_k`` (0 = off): keep the k most probable tokens; ``top_p`` in [0, 1] (1 = off):
      the smallest set of most probable tokens whose probability reaches p (at least one);
      ``min_p`` in [0, 1] (0 = off): tokens with probability >= min_p * the highest.
    - ``seed``: None (fresh entropy), an int (the same for every prompt) or one int per
      prompt. Each prompt draws from its own generator, so a prompt with its seed gives the
      same tokens alone or in any batch.

    Returns B :class:`Generation` s (generated tokens only, EOS included when generated; the
    raw model's float64 log-probability; ``finished`` = EOS generated).
    """
    clean, n_new, eos, vocab = check_request(model, prompts, max_new_tokens, eos_token_id)
    opts = check_options(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                         no_repeat_ngram_size=no_repeat_ngram_size)
    check_penalty_range(opts, max((len(p) for p in clean), default=0) + n_new)
    rngs = make_generators(seed, len(clean))
    return _decode(model, clean, max_new_tokens=n_new, eos=eos, vocab=vocab, opts=opts,
                   rngs=rngs)


def check_penalty_range(opts: SamplingOptions, longest: int) -> None:
    """Refuse, before any work, penalties that could push a logit out of float64's range:
    a token occurs at most ``longest`` times (the longest prompt plus max_new_tokens)."""
    shift = abs(opts.frequency_penalty) * longest + abs(opts.presence_penalty)
    if shift > _LARGEST_SHIFT:
        raise ValueError(f"frequency_penalty={opts.frequency_penalty} / presence_penalty="
                         f"{opts.presence_penalty} can shift a logit by up to {shift:.3g} in "
                         f"sequences of up to {longest} tokens, beyond float64's range; use "
                         f"penalties of the size of the logits")


_LARGEST_SHIFT = 1e300  # leaves room for the logits themselves before float64 overflows
