"""Batched beam search with the pool semantics (SPEC section 3).

Per batch item the search keeps a pool of at most K = beam_width hypotheses, finished and
unfinished together. Each step, every unfinished hypothesis of every item is extended by one
model call over all of them; the new pool is the K best, by length-penalized score, of the
item's finished hypotheses and the new candidates.

State is a structure of arrays over (batch B, beam slot K) and slot j of an item always holds
its j-th best hypothesis, so the pool's order is the array order.

Tie-breaking (deterministic, and a function of the item alone): at equal score a hypothesis
already finished before this step ranks ahead of a new candidate; finished ones keep their
previous relative order; candidates rank by their parent's place in the pool, then by token
id (lowest first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npdecode.models.protocol import vocab_size_of
from npdecode.search.ngrams import ngram_ban_mask
from npdecode.search.runner import make_runner
from npdecode.search.validate import (check_context, check_eos, check_finite, check_int,
                                      check_logits, check_prompts)


@dataclass(frozen=True)
class Hypothesis:
    """One result of a search.

    tokens:   generated tokens only (prompt excluded), the EOS included when finished
    score:    logprob / len(tokens) ** alpha (0.0 for an empty hypothesis)
    logprob:  raw sum of the log-probabilities of ``tokens``
    finished: True when the last token is the EOS
    """

    tokens: list[int]
    score: float
    logprob: float
    finished: bool


@dataclass(frozen=True)
class BeamState:
    """The pools of all batch items; slot j of an item is its j-th best hypothesis."""

    tokens: np.ndarray    # [B, K, T] int64  generated tokens; only [:length] is meaningful
    length: np.ndarray    # [B, K]    int64  number of generated tokens
    logprob: np.ndarray   # [B, K]    float64 raw sum of log-probabilities
    score: np.ndarray     # [B, K]    float64 length-penalized score
    finished: np.ndarray  # [B, K]    bool   ended with EOS
    valid: np.ndarray     # [B, K]    bool   slot holds a hypothesis (pools may be short)

    @classmethod
    def initial(cls, batch: int, beam_width: int, max_new_tokens: int) -> "BeamState":
        """Each pool: one unfinished, empty hypothesis with logprob 0 and score 0."""
        valid = np.zeros((batch, beam_width), dtype=bool)
        valid[:, 0] = True
        return cls(tokens=np.zeros((batch, beam_width, max(max_new_tokens, 1)), dtype=np.int64),
                   length=np.zeros((batch, beam_width), dtype=np.int64),
                   logprob=np.zeros((batch, beam_width)),
                   score=np.zeros((batch, beam_width)),
                   finished=np.zeros((batch, beam_width), dtype=bool),
                   valid=valid)

    @property
    def live(self) -> np.ndarray:
        """[B, K] bool: unfinished hypotheses, the ones the model must extend."""
        return self.valid & ~self.finished

    def results(self) -> list[list[Hypothesis]]:
        out = []
        for b in range(self.valid.shape[0]):
            out.append([Hypothesis(tokens=self.tokens[b, j, :self.length[b, j]].tolist(),
                                   score=float(self.score[b, j]),
                                   logprob=float(self.logprob[b, j]),
                                   finished=bool(self.finished[b, j]))
                        for j in np.flatnonzero(self.valid[b])])
        return out


def row_log_normalizer(logits: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) per row (n,), in float64, stably shifted by the row max."""
    shifted = np.subtract(logits, row_max[:, None], dtype=np.float64)   # [n, V]
    np.exp(shifted, out=shifted)
    return row_max.astype(np.float64) + np.log(shifted.sum(axis=1))


def top_tokens(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k largest entries; ties go to the lowest index.

    argpartition picks arbitrarily among entries equal to the k-th largest value, so rows
    where such ties straddle the boundary are redone with a stable sort.
    """
    n, v = x.shape
    if k >= v:
        return np.broadcast_to(np.arange(v), (n, v))
    idx = np.argpartition(x, v - k, axis=1)[:, v - k:]                   # [n, k] unordered
    kth = np.take_along_axis(x, idx, axis=1).min(axis=1)                 # [n]
    straddle = (x >= kth[:, None]).sum(axis=1) > k                       # [n]
    for r in np.flatnonzero(straddle):
        idx[r] = np.argsort(-x[r], kind="stable")[:k]
    return idx


def beam_step(state: BeamState, logits: np.ndarray, *, step: int, alpha: float,
              eos_token_id: int | None, banned: np.ndarray | None = None
              ) -> tuple[BeamState, np.ndarray, np.ndarray]:
    """One step of the search.

    ``logits`` (n, V) belong to the live slots of ``state`` in (item, slot) order; ``banned``
    (n, V), if given, marks tokens that may not be chosen (their logprob is not changed).
    Returns the new state and, for its live slots in (item, slot) order, the row of
    ``logits`` each continues (parents, (n',)) and the token it appended (n',).
    """
    B, K = state.valid.shape
    live = state.live                                                    # [B, K]
    item, slot = np.nonzero(live)                                        # [n] each
    row_max = logits.max(axis=1)                                         # [n]
    offset = state.logprob[item, slot] - row_log_normalizer(logits, row_max)   # [n]
    choosable = logits if banned is None else np.where(banned, -np.inf, logits)

    # Only a row's top min(K, V) tokens can survive: every unfinished hypothesis of an item
    # has the same length, so its candidates rank by logprob alone, and a candidate outside
    # its own row's top K has K better candidates beside it. This is the same result as
    # taking each beam's top 2K (the SPEC's candidate set), with less work.
    k = min(K, logits.shape[1])
    tok = top_tokens(choosable, k)                                       # [n, k]
    cand_logprob = offset[:, None] + np.take_along_axis(choosable, tok, axis=1)  # [n, k]
    cand_score = cand_logprob / float(step + 1) ** alpha

    # The pool is formed from the item's finished hypotheses AND the new candidates. Finished
    # beams stay in the competition: a beam that ended early with a good score must be able
    # to defend its place. If it were moved out when it emitted EOS, longer beams with worse
    # length-penalized scores would fill the pool and take the result.
    # Columns 0..K-1: the current pool (only its finished entries compete as themselves);
    # columns K..K+K*k-1: candidate (slot s, token rank i) at column K + s*k + i.
    M = K + K * k
    score = np.full((B, M), -np.inf)
    logprob = np.full((B, M), -np.inf)
    ok = np.zeros((B, M), dtype=bool)
    token = np.zeros((B, M), dtype=np.int64)
    parent = np.zeros((B, M), dtype=np.int64)
    score[:, :K] = state.score
    logprob[:, :K] = state.logprob
    ok[:, :K] = state.valid & state.finished
    parent[:, :K] = np.arange(K)
    parent[:, K:] = np.repeat(np.arange(K), k)
    cols = K + slot[:, None] * k + np.arange(k)                          # [n, k]
    score[item[:, None], cols] = cand_score
    logprob[item[:, None], cols] = cand_logprob
    ok[item[:, None], cols] = True
    token[item[:, None], cols] = tok

    # Rank: real entries first, then score (highest first), then the tie rule of the module
    # docstring: finished (columns < K) before candidates, parent slot, token id.
    is_cand = np.arange(M) >= K
    order = np.lexsort((token, parent, np.broadcast_to(is_cand, (B, M)), -score, ~ok),
                       axis=-1)[:, :K]                                   # [B, K]

    take = lambda a: np.take_along_axis(a, order, axis=1)                # noqa: E731
    new_parent, new_token, new_is_cand = take(parent), take(token), is_cand[order]
    tokens = np.take_along_axis(state.tokens, new_parent[:, :, None], axis=1)  # [B, K, T]
    length = np.take_along_axis(state.length, new_parent, axis=1) + new_is_cand
    cand_b, cand_j = np.nonzero(new_is_cand)
    tokens[cand_b, cand_j, step] = new_token[cand_b, cand_j]
    finished = ~new_is_cand | (new_token == eos_token_id if eos_token_id is not None
                               else np.zeros((B, K), dtype=bool))
    new = BeamState(tokens=tokens, length=length, logprob=take(logprob), score=take(score),
                    finished=finished, valid=take(ok))

    # Rows for the next model call: each new live slot continues its parent's row.
    row_of_slot = np.full((B, K), -1, dtype=np.int64)
    row_of_slot[item, slot] = np.arange(len(item))
    nb, nj = np.nonzero(new.live)
    return new, row_of_slot[nb, new_parent[nb, nj]], new_token[nb, nj]


def batched_beam_search(model, prompts: Sequence[Sequence[int]], *, beam_width: int,
                        max_new_tokens: int, alpha: float = 0.0, eos_token_id: int | None = None,
                        no_repeat_ngram_size: int = 0, use_cache: bool = True
                        ) -> list[list[Hypothesis]]:
    """Beam search over a batch of prompts with the pool semantics of SPEC section 3.

    Args:
        model: any object with ``forward(token_ids (N, T)) -> logits (N, V)``; models with
            the cached protocol (``npdecode.models.CachedLM``) are decoded incrementally.
        prompts: one list of token ids per batch item; lengths may differ.
        beam_width: K, the pool size per item (may exceed the vocabulary).
        max_new_tokens: at most this many generated tokens per hypothesis.
        alpha: length penalty exponent; score = logprob / len(tokens) ** alpha, where len
            counts generated tokens only (the EOS included). With negative logprobs a larger
            alpha favours longer hypotheses.
        eos_token_id: the token that finishes a hypothesis (None: none does). A finished
            hypothesis is never extended again but keeps competing for its pool slot.
        no_repeat_ngram_size: if n > 0, a token that would repeat an n-gram of the prompt
            plus generated tokens is never chosen (logprobs are not changed).
        use_cache: False recomputes every prefix even for cached models (for testing).

    Returns:
        For each prompt, at most ``beam_width`` hypotheses, best score first.
    """
    vocab = vocab_size_of(model)
    prompts = check_prompts(prompts, vocab)
    K = check_int("beam_width", beam_width, minimum=1)
    T = check_int("max_new_tokens", max_new_tokens, minimum=0)
    alpha = check_finite("alpha", alpha)
    eos = check_eos(eos_token_id, vocab)
    ngram = check_int("no_repeat_ngram_size", no_repeat_ngram_size, minimum=0)
    check_context(model, prompts, T)
    if not prompts:
        return []

    state = BeamState.initial(len(prompts), K, T)
    if T == 0:
        return state.results()
    runner = make_runner(model, prompts, rows=len(prompts) * K, new_tokens=T,
                         use_cache=use_cache)
    logits = runner.start()
    if vocab is None:  # a model that does not declare its vocabulary: read it off the logits
        vocab = logits.shape[1] if getattr(logits, "ndim", 0) == 2 else None
        check_logits(logits, len(prompts), vocab, np.arange(len(prompts)))
        prompts = check_prompts(prompts, vocab)
        eos = check_eos(eos, vocab)

    for step in range(T):
        item, slot = np.nonzero(state.live)
        check_logits(logits, len(item), vocab, item)
        banned = None
        if ngram:
            seqs = [np.concatenate([prompts[b], state.tokens[b, j, :state.length[b, j]]])
                    for b, j in zip(item.tolist(), slot.tolist())]
            banned = ngram_ban_mask(seqs, ngram, logits.shape[1])
        state, parents, tokens = beam_step(state, logits, step=step, alpha=alpha,
                                           eos_token_id=eos, banned=banned)
        if step + 1 == T or len(tokens) == 0:
            break  # length limit reached, or every pool has stopped expanding
        logits = runner.advance(parents, tokens)
    return state.results()
