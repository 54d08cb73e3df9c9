"""Batched beam search with the pool semantics.

Per batch item the search keeps a pool of at most K = beam_width hypotheses, finished and
unfinished together. Each step, every unfinished hypothesis of every item is extended by one
model call over all of them; the new pool is the K best, by length-penalized score, of the
item's finished hypotheses and the new candidates.

State is a structure of arrays over (batch B, beam slot K) and slot j of an item always holds
its j-th best hypothesis, so the pool's order is the array order.

Tie-breaking (deterministic, and a function of the item alone): at equal score a hypothesis
already finished before this step ranks ahead of a new candidate; finished ones keep their
previous relative order; candidates rank by their parent's place in the pool, then by the
token's log-probability under the parent (highest first; where two round to the same value,
by their logits, whose order is exact), then by token id (lowest first).
Candidates of one step all have the same length, so they are compared by their float64
logprobs: the exact order of their scores, which the division by len ** alpha can round
into equal values.

A candidate's logprob is its parent's plus the token's max-shifted log-softmax,
``(logit - max) - log(sum(exp(logits - max)))``, added one step at a time: equal
log-softmax values give exactly equal logprobs (rows that differ by a constant included),
and the rule above decides between them rather than rounding. Sums that are equal only in
exact arithmetic (two rows holding the same logits in another order sum their exponentials
in another order) can differ in their last bit, and then that bit decides.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npdecode.numerics import FIRST_CAPACITY, grow, part_maxima, read_only
from npdecode.search.candidates import log_normalizer, top_candidates
from npdecode.search.ngrams import ngram_ban_mask
from npdecode.search.runner import make_runner
from npdecode.search.validate import (check_ids, check_int, check_length_penalty,
                                      check_logits, check_request)


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


class BeamState:
    """The pools of all batch items; slot j of an item is its j-th best hypothesis.

    Arrays over (batch B, beam slot K); treat them as read-only (a step makes a new state).
    """

    __slots__ = ("tokens", "length", "logprob", "score", "finished", "stopped", "valid",
                 "live", "live_slots", "any_held", "_all_slots")

    def __init__(self, tokens: np.ndarray, length: np.ndarray, logprob: np.ndarray,
                 score: np.ndarray, finished: np.ndarray, valid: np.ndarray,
                 all_slots: tuple[np.ndarray, np.ndarray], stopped: np.ndarray | None = None):
        self.tokens = tokens        # [B, K, C] int32  generated tokens; only [:length] counts
        self.length = length        # [B, K]    int64  number of generated tokens
        self.logprob = logprob      # [B, K]    float64 raw sum of log-probabilities
        self.score = score          # [B, K]    float64 length-penalized score
        self.finished = finished    # [B, K]    bool   ended with EOS
        self.valid = valid          # [B, K]    bool   slot holds a hypothesis (pools may be short)
        # [B, K] bool: no token may follow (the n-gram ban takes every one); the hypothesis
        # keeps its place like a finished one, unfinished. None: no slot is stopped.
        self.stopped = stopped
        # A slot is held when its hypothesis is never extended again (finished or stopped);
        # the others are live: the ones the model must extend, with their (item, slot), each
        # (n,) in (item, slot) order: live hypothesis i is sequence i of the next model call.
        held = finished if stopped is None else finished | stopped
        self.any_held = bool(held.any())  # False: every valid slot is live
        self.live = valid & ~held if self.any_held else valid             # [B, K]
        self._all_slots = all_slots  # (item, slot) of every slot, for when all are live
        self.live_slots = all_slots if self.live.all() else np.nonzero(self.live)

    @classmethod
    def initial(cls, batch: int, beam_width: int, max_new_tokens: int) -> "BeamState":
        """Each pool: one unfinished, empty hypothesis with logprob 0 and score 0."""
        valid = np.zeros((batch, beam_width), dtype=bool)
        valid[:, 0] = True
        all_slots = (np.repeat(np.arange(batch), beam_width),
                     np.tile(np.arange(beam_width), batch))
        # int32 halves the history copied each step (token ids are vocabulary indices); its
        # capacity doubles as the hypotheses grow (``beam_step``, ``grow``).
        capacity = min(max(max_new_tokens, 1), FIRST_CAPACITY)
        return cls(tokens=np.zeros((batch, beam_width, capacity), dtype=np.int32),
                   length=np.zeros((batch, beam_width), dtype=np.int64),
                   logprob=np.zeros((batch, beam_width)),
                   score=np.zeros((batch, beam_width)),
                   finished=np.zeros((batch, beam_width), dtype=bool),
                   valid=valid, all_slots=all_slots)

    def results(self) -> list[list[Hypothesis]]:
        # Whole arrays to Python lists once: per-element NumPy indexing costs more than the
        # search's last steps.
        tokens, length, score, logprob, finished, valid = (
            a.tolist() for a in (self.tokens, self.length, self.score, self.logprob,
                                 self.finished, self.valid))
        return [[Hypothesis(tokens=tokens[b][j][:length[b][j]], score=score[b][j],
                            logprob=logprob[b][j], finished=finished[b][j])
                 for j in range(len(valid[b])) if valid[b][j]]
                for b in range(len(valid))]


def beam_step(state: BeamState, logits: np.ndarray, *, step: int, alpha: float,
              eos_token_id: int | None, banned: np.ndarray | None = None,
              maxima: np.ndarray | None = None, rows: np.ndarray | None = None
              ) -> tuple[BeamState, np.ndarray, np.ndarray]:
    """One step of the search.

    The live slots of ``state``, in (item, slot) order, are sequences 0..n-1; sequence i's
    logits are row ``rows[i]`` of ``logits`` (n, V) (default: row i). ``banned`` (n, V), if
    given, marks tokens that may not be chosen (their logprob is not changed) and needs
    ``rows`` None; ``maxima`` (n, c), if given, holds each row of ``logits``'s maxima over c
    consecutive column ranges (the validity check computes them; default: c = ``PARTS``).
    A live hypothesis whose every token is banned stops: it keeps its place in the pool, as
    a finished one does, and is never extended (it is reported unfinished).
    Returns the new state and, for its live slots in (item, slot) order,
    the sequence each continues (parents, (n',)) and the token it appended (n',).
    """
    B, K = state.valid.shape
    item, slot = state.live_slots                                         # [n] each
    x = logits                                                            # [n, V]
    if maxima is None:
        maxima = part_maxima(x, parts_for(K, x.shape[1]))
    # The live slots' logprobs; when every slot is live they are the whole array, in order.
    logprob = state.logprob.ravel() if len(item) == B * K else state.logprob[item, slot]
    # Only an item's K best candidates can enter its pool: every unfinished hypothesis of an
    # item has the same length, so candidates rank by logprob alone. These K are always among
    # each beam's top 2K tokens (the textbook candidate set), so the result is the same.
    # With logits at the ends of the float range, (logit - max) and the candidate thresholds
    # can overflow to -inf, which is what they mean: a weight of 0, a bound below every logit.
    with np.errstate(over="ignore"):
        cand_logprob, cand_seq, cand_token = _best_candidates(x, maxima, logprob, item, K, B,
                                                              banned, rows)      # [B, k]
    cand_ok = cand_seq >= 0
    cand_slot = slot[cand_seq]  # where cand_seq is -1 this is junk, never used (not ok)
    with np.errstate(over="ignore"):  # a huge logprob over len ** alpha < 1: -inf, as meant
        cand_score = cand_logprob / float(step + 1) ** alpha

    # The pool is formed from the item's finished hypotheses AND the new candidates. Finished
    # beams stay in the competition: a beam that ended early with a good score must be able
    # to defend its place. If it were moved out when it emitted EOS, longer beams with worse
    # length-penalized scores would fill the pool and take the result.
    # Columns 0..K-1: the current pool (only its held entries, finished or stopped, compete
    # as themselves); columns K..K+k-1: the item's best candidates, already in rank order.
    b = _column(B)                                                        # [B, 1]
    stopped = state.stopped
    dead = banned.all(axis=1) if banned is not None else None  # [n] no token left to take
    if dead is not None and dead.any():  # these stop here, and keep their place
        stopped = np.zeros((B, K), dtype=bool) if stopped is None else stopped.copy()
        stopped[item[dead], slot[dead]] = True
    if not state.any_held and stopped is None:  # the candidates, in rank order, are the new pool
        new_parent, new_seq, new_token, new_is_cand = cand_slot, cand_seq, cand_token, cand_ok
        new_valid, logprob, score = cand_ok, cand_logprob, cand_score
    else:
        held = state.valid & (state.finished if stopped is None else state.finished | stopped)
        score = np.concatenate([state.score, cand_score], axis=1)         # [B, K+k]
        ok = np.concatenate([held, cand_ok], axis=1)
        # Rank: real entries first, then score (highest first); at equal score the column
        # order decides (stable sort), which is the tie rule of the module docstring.
        order = np.lexsort((-score, ~ok), axis=-1)[:, :K]                 # [B, K]
        new_is_cand = order >= K
        col = np.where(new_is_cand, order - K, 0)                         # candidate column
        new_parent = np.where(new_is_cand, cand_slot[b, col], order)
        new_seq = cand_seq[b, col]                             # meaningful where new_is_cand
        new_token = np.where(new_is_cand, cand_token[b, col], 0)
        new_valid = ok[b, order]
        logprob = np.concatenate([state.logprob, cand_logprob], axis=1)[b, order]
        score = score[b, order]
    tokens = state.tokens[b, new_parent]                                  # [B, K, C]
    if step >= tokens.shape[2]:  # full: double the capacity
        tokens = grow(tokens, step + 1)
    # Every unfinished hypothesis has exactly `step` tokens: a candidate has step + 1.
    ends = (new_token == eos_token_id if eos_token_id is not None
            else np.zeros((B, K), dtype=bool))                            # [B, K]
    if new_is_cand.all():  # every slot holds a new candidate (the usual case)
        tokens[:, :, step] = new_token
        length = np.full((B, K), step + 1)
        finished, stopped = ends, None
    else:  # held slots keep their hypothesis as it was
        tokens[:, :, step] = np.where(new_is_cand, new_token, tokens[:, :, step])
        length = np.where(new_is_cand, step + 1, state.length[b, new_parent])
        finished = np.where(new_is_cand, ends, state.finished[b, new_parent])
        if stopped is not None:
            stopped = ~new_is_cand & stopped[b, new_parent]
    new = BeamState(tokens=tokens, length=length, logprob=logprob, score=score,
                    finished=finished, valid=new_valid, all_slots=state._all_slots,
                    stopped=stopped)

    # Sequences of the next model call: each new live slot continues its parent's sequence.
    if new.live_slots is new._all_slots:  # every slot is live: all of them, in order
        return new, new_seq.ravel(), new_token.ravel()
    return new, new_seq[new.live], new_token[new.live]


def _best_candidates(x: np.ndarray, maxima: np.ndarray, logprob: np.ndarray, item: np.ndarray,
                     k: int, batch: int, banned: np.ndarray | None, rows: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``top_candidates`` of sequences with logprobs ``logprob`` (n,) and logits ``x`` (rows
    and the rest as for ``beam_step``), by the max-shifted log-softmax of each row."""
    shift, lse = log_normalizer(x, maxima)         # [n] each: log-softmax = (x - shift) - lse
    part_max = maxima - shift[:, None]                                    # [n, c] float64
    if rows is not None:  # into sequence order
        part_max, lse, shift = part_max[rows], lse[rows], shift[rows]
    if banned is not None:  # banned tokens are never chosen; bound the rest
        x = np.where(banned, -np.inf, x)
        part_max = part_maxima(x, part_max.shape[1]) - shift[:, None]
    return top_candidates(x, part_max, logprob, shift, lse, item, k, batch, banned, rows)


@functools.lru_cache(maxsize=8)
def _column(n: int) -> np.ndarray:
    """A read-only column 0..n-1, (n, 1)."""
    return read_only(np.arange(n)[:, None])


# Each row's maxima over this many column ranges bound an item's K-th best candidate: two
# leave about 1.5 K survivors per item where one (the row maximum) leaves about 5 K.
PARTS = 2


def parts_for(beam_width: int, vocab: int) -> int:
    """How many column ranges to take maxima over (one row per item needs only its max)."""
    return 1 if beam_width == 1 or not vocab else min(PARTS, vocab)


def count_hypotheses(vocab: int, steps: int, *, cap: int) -> int:
    """How many distinct token sequences of length 1..steps exist (V + V^2 + ...), or ``cap``
    if there are at least that many. At least 1 (the empty hypothesis when steps is 0)."""
    if vocab == 1:  # one sequence of each length (the loop below would take steps rounds)
        return max(min(steps, cap), 1)
    total, layer = 0, 1
    for _ in range(steps):
        layer *= vocab
        total += layer
        if total >= cap:
            return cap
    return max(total, 1)


def batched_beam_search(model, prompts: Sequence[Sequence[int]], *, beam_width: int,
                        max_new_tokens: int, alpha: float = 0.0, eos_token_id: int | None = None,
                        no_repeat_ngram_size: int = 0, use_cache: bool = True
                        ) -> list[list[Hypothesis]]:
    """Beam search over a batch of prompts with the pool semantics (see the module docstring).

    Args:
        model: any object with ``forward(token_ids (N, T)) -> logits (N, V)``; models with
            the cached protocol (``npdecode.models.CachedLM``) are decoded incrementally.
            Ids and ``eos_token_id`` are checked against its ``vocab_size`` before any call;
            a model without one has its vocabulary read off its first logits, so ids past
            it are refused after that first call (and with max_new_tokens=0, which makes
            no call, only negative ids are).
        prompts: one list of token ids per batch item; lengths may differ.
        beam_width: K, the pool size per item (may exceed the vocabulary).
        max_new_tokens: at most this many generated tokens per hypothesis.
        alpha: length penalty exponent; score = logprob / len(tokens) ** alpha, where len
            counts generated tokens only (the EOS included). With negative logprobs a larger
            alpha favours longer hypotheses.
        eos_token_id: the token that finishes a hypothesis (None: none does). A finished
            hypothesis is never extended again but keeps competing for its pool slot.
        no_repeat_ngram_size: if n > 0, a token that would repeat an n-gram of the prompt
            plus generated tokens is never chosen (logprobs are not changed). A hypothesis
            whose every next token is banned stops there: it keeps its place in the pool,
            unfinished, and is never extended.
        use_cache: False recomputes every prefix even for cached models (for testing).

    Returns:
        For each prompt, at most ``beam_width`` hypotheses, best score first.
    """
    prompts, T, eos, vocab = check_request(model, prompts, max_new_tokens, eos_token_id)
    K = check_int("beam_width", beam_width, minimum=1)
    alpha = check_length_penalty("alpha", alpha, T)
    ngram = check_int("no_repeat_ngram_size", no_repeat_ngram_size, minimum=0)
    if not prompts:
        return []

    if T == 0:  # each pool: its empty hypothesis
        return BeamState.initial(len(prompts), 1, 0).results()
    if vocab is not None:  # a pool never holds more than every distinct hypothesis
        K = min(K, count_hypotheses(vocab, T, cap=K))
    runner = make_runner(model, prompts, rows=len(prompts) * K, new_tokens=T,
                         use_cache=use_cache)
    logits = runner.start()
    if vocab is None:  # a model that does not declare its vocabulary: read it off the logits
        vocab = logits.shape[1] if getattr(logits, "ndim", 0) == 2 else None
        check_logits(logits, len(prompts), vocab, np.arange(len(prompts)))
        check_ids(prompts, eos, vocab)
        K = min(K, count_hypotheses(vocab, T, cap=K))  # before the state is sized by K
    state = BeamState.initial(len(prompts), K, T)

    rows = None  # sequence i's logits are row rows[i] (None: row i)
    parts = parts_for(K, vocab)
    for step in range(T):
        item, slot = state.live_slots
        maxima = check_logits(logits, len(item), vocab, item, rows, parts)
        banned = None
        if ngram:
            if rows is not None:  # the ban mask is built in sequence order
                logits, maxima, rows = logits[rows], maxima[rows], None
            seqs = [np.concatenate([prompts[b], state.tokens[b, j, :state.length[b, j]]])
                    for b, j in zip(item.tolist(), slot.tolist())]
            banned = ngram_ban_mask(seqs, ngram, logits.shape[1])
        state, parents, tokens = beam_step(state, logits, step=step, alpha=alpha,
                                           eos_token_id=eos, banned=banned, maxima=maxima,
                                           rows=rows)
        if step + 1 == T or len(tokens) == 0:
            break  # length limit reached, or every pool has stopped expanding
        logits, rows = runner.advance_rows(parents, tokens)
    return state.results()
