"""``beam_search``: one entry point, two beam policies.

- ``policy="pool"`` (the default) is npdecode's own semantics (see the README,
  :func:`npdecode.search.beam.batched_beam_search`): per item one pool of K hypotheses,
  finished and unfinished together, ranked by length-penalized score.
- ``policy="hf"`` reproduces the beam search of HuggingFace transformers 5.x
  (``GenerationMixin._beam_search``), so that results can be compared with it token for token.

The HF policy, per batch item:

- K running beams, never finished, and a separate set of at most K finished hypotheses.
- Each step, the top 2K candidates over K x V by running log-probability; a candidate that
  ends with EOS (or reaches ``max_new_tokens``) enters the finished set only if it ranks among
  the top K of the 2K (EOS candidates further down are dropped), and only if its score beats
  the set's worst entry once the set is full. The K best candidates that did not finish become
  the running beams, so an EOS never costs a running beam its slot.
- score = logprob / len ** length_penalty, len = generated tokens including the EOS.
- Stopping per item (``early_stopping``): ``True``: as soon as the finished set holds K
  hypotheses. ``False``: the heuristic of transformers, stop when the best running beam's
  score *at its current length* is no better than the worst finished one (with a positive
  length penalty a longer continuation could still win; the heuristic ignores that).
  ``"never"``: the exact bound, the best running log-probability divided by the longest
  possible length (``max_new_tokens``) when length_penalty > 0, by the current length
  otherwise.
- The result: the top ``num_return_sequences`` of the finished set. When ``max_new_tokens`` is
  reached, the top K running candidates enter the finished set as if they had finished (their
  ``finished`` flag stays False: they do not end with EOS).

Known, deliberate differences from transformers: scores accumulate in float64 (transformers
uses float32 whatever the model's dtype, so scores agree to ~1e-6 and a near-tie within that
could be ordered differently); placeholder and dead beams are -inf rather than -1e9, which
matters only when fewer than 2K finite candidates exist (vocabulary smaller than 2K, or n-gram
bans removing almost every token: an item whose candidates are all banned returns fewer
hypotheses, possibly none, where transformers returns placeholders scored about -1e9; and
when real scores fall below -1e9, as with a very negative length_penalty on long
hypotheses, transformers takes its placeholders for real entries and may return them); and
with ``num_beams=1`` transformers switches to greedy search, whereas this runs the beam
algorithm with K = 1.

Ties (equal scores) are broken deterministically and per item: candidates by lower
(beam, token) index; in the finished set, an entry already present before a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npdecode.memory import check_fits
from npdecode.numerics import log_softmax
from npdecode.search.beam import Hypothesis, batched_beam_search, count_hypotheses
from npdecode.search.ngrams import ngram_ban_mask
from npdecode.search.runner import make_runner
from npdecode.search.validate import (check_eos, check_ids, check_int, check_length_penalty,
                                      check_logits, check_request)

POLICIES = ("pool", "hf")


def beam_search(model, prompts: Sequence[Sequence[int]], *, num_beams: int,
                max_new_tokens: int, eos_token_id: int | None = None,
                length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, no_repeat_ngram_size: int = 0,
                policy: str = "pool", pad_token_id: int | None = None
                ) -> list[list[Hypothesis]]:
    """Beam search over a batch of prompts under the chosen ``policy``.

    Args:
        model: ``forward(token_ids (N, T)) -> logits (N, V)``; cached models go faster.
        prompts: one list of token ids per batch item; lengths may differ.
        num_beams: K, beams per item.
        max_new_tokens: at most this many generated tokens per hypothesis.
        eos_token_id: the token that finishes a hypothesis (None: none does).
        length_penalty: score = logprob / len ** length_penalty; len counts generated tokens
            only, the EOS included.
        early_stopping: ``"hf"`` policy only: True, False or "never" (see the module doc).
        num_return_sequences: hypotheses returned per item, best first (at most num_beams).
        no_repeat_ngram_size: n > 0 bans any token that would repeat an n-gram of the history.
        policy: ``"pool"`` (:func:`batched_beam_search`) or ``"hf"`` (transformers' beam search).
        pad_token_id: ``"hf"`` policy only: the id transformers would see in the left padding
            of a ragged batch. Its n-gram ban looks at the padded rows, so padding takes part
            in the banned n-grams exactly as in ``generate``. Default: ``eos_token_id``
            (GPT-2's usual padding); when both are None, padding matches no token.

    Returns:
        For each prompt, up to ``num_return_sequences`` :class:`Hypothesis`, best score first.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not (isinstance(early_stopping, (bool, np.bool_)) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    K = check_int("num_beams", num_beams, minimum=1)
    n_ret = check_int("num_return_sequences", num_return_sequences, minimum=1)
    if n_ret > K:
        raise ValueError(f"num_return_sequences ({n_ret}) cannot exceed num_beams ({K}); "
                         f"raise num_beams or ask for fewer sequences")
    check_eos(pad_token_id, None, name="pad_token_id")  # its range: once V is known
    if policy == "pool":
        # named as the caller named them
        check_length_penalty("length_penalty", length_penalty,
                             check_int("max_new_tokens", max_new_tokens, minimum=0))
        if early_stopping == "never" or bool(early_stopping) or pad_token_id is not None:
            raise ValueError("early_stopping and pad_token_id apply to policy='hf' only; the "
                             "pool policy stops exactly when every pool is finished")
        results = batched_beam_search(model, prompts, beam_width=K,
                                      max_new_tokens=max_new_tokens, alpha=length_penalty,
                                      eos_token_id=eos_token_id,
                                      no_repeat_ngram_size=no_repeat_ngram_size)
        return [r[:n_ret] for r in results]
    return hf_beam_search(model, prompts, num_beams=K, max_new_tokens=max_new_tokens,
                          eos_token_id=eos_token_id, length_penalty=length_penalty,
                          early_stopping=bool(early_stopping) if early_stopping != "never"
                          else "never", num_return_sequences=n_ret,
                          no_repeat_ngram_size=no_repeat_ngram_size, pad_token_id=pad_token_id)


@dataclass(frozen=True)
class HFBeamState:
    """Per item: K running beams and a finished set of K slots (fields updated in place)."""

    seq: np.ndarray        # [B, K, W+T] int64   running rows: left padding, prompt, generated
    run_lp: np.ndarray     # [B, K]      float64 running log-probs, best first (-inf: dead)
    fin_tokens: np.ndarray  # [B, K, T]  int64   finished hypotheses' generated tokens
    fin_len: np.ndarray    # [B, K]      int64   their lengths
    fin_lp: np.ndarray     # [B, K]      float64 their raw log-probs
    fin_score: np.ndarray  # [B, K]      float64 their scores, best first (-inf: empty slot)
    open: np.ndarray       # [B]         bool    still searching (transformers' "improvement
    #                                             possible" and not stopped early)

    @classmethod
    def initial(cls, prompts: list[list[int]], K: int, T: int, pad: int) -> "HFBeamState":
        B, W = len(prompts), max(len(p) for p in prompts)
        seq = np.full((B, K, W + T), pad, dtype=np.int64)
        for b, p in enumerate(prompts):
            seq[b, :, W - len(p):W] = p
        run_lp = np.full((B, K), -np.inf)
        run_lp[:, 0] = 0.0  # one real beam; the others are placeholders until step 1 fills them
        return cls(seq=seq, run_lp=run_lp, fin_tokens=np.zeros((B, K, T), dtype=np.int64),
                   fin_len=np.zeros((B, K), dtype=np.int64), fin_lp=np.full((B, K), -np.inf),
                   fin_score=np.full((B, K), -np.inf), open=np.ones(B, dtype=bool))


def top_unordered(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k largest entries, unordered; ties go to the lower index.

    argpartition alone picks arbitrarily among entries equal to the k-th largest value; here
    every entry above it is taken, then the lowest-indexed entries equal to it.
    """
    n, m = x.shape
    if k >= m:
        return np.broadcast_to(np.arange(m), (n, m)).copy()
    kth = np.partition(x, m - k, axis=1)[:, m - k]                       # [n] k-th largest
    above = x > kth[:, None]                                             # [n, m]
    at = x == kth[:, None]                                               # [n, m]
    need = k - above.sum(axis=1)                                         # [n] >= 1
    take = above | (at & (np.cumsum(at, axis=1) <= need[:, None]))       # exactly k per row
    return np.nonzero(take)[1].reshape(n, k)


def top_over_beams(total: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``c`` best entries (A, c) of each row of ``total`` (A, M), best first.

    Returns (flat indices, values); ties go to the lower index. Rows with fewer than ``c``
    entries are padded with -inf values at index 0 (dead candidates).
    """
    A, M = total.shape
    idx = top_unordered(total, min(c, M))                                # [A, c'] unordered
    val = np.take_along_axis(total, idx, axis=1)                         # [A, c']
    order = np.lexsort((idx, -val), axis=-1)                             # value desc, index asc
    idx, val = np.take_along_axis(idx, order, 1), np.take_along_axis(val, order, 1)
    if idx.shape[1] < c:
        pad = c - idx.shape[1]
        idx = np.concatenate([idx, np.zeros((A, pad), dtype=idx.dtype)], axis=1)
        val = np.concatenate([val, np.full((A, pad), -np.inf)], axis=1)
    return idx, val


def merge_finished(st: HFBeamState, act: np.ndarray, cand_tokens: np.ndarray,
                   cand_lp: np.ndarray, can_finish: np.ndarray, length: int,
                   length_penalty: float) -> None:
    """Keep, per active item, the K best of its finished set and its newly finished candidates.

    ``cand_tokens`` (A, 2K, T), ``cand_lp`` (A, 2K), ``can_finish`` (A, 2K) bool; every
    candidate has ``length`` generated tokens.
    """
    K = st.fin_score.shape[1]
    # transformers divides by (cur_len + 1 - decoder_prompt_len) ** length_penalty, where
    # decoder_prompt_len is the (padded) prompt width: for a decoder-only model that is the
    # number of generated tokens, the EOS included, and never the prompt.
    cand_score = np.where(can_finish, cand_lp / float(length) ** length_penalty, -np.inf)
    score = np.concatenate([st.fin_score[act], cand_score], axis=1)      # [A, 3K]
    order = np.argsort(-score, axis=1, kind="stable")[:, :K]             # old entries win ties
    take = lambda a: np.take_along_axis(a, order, axis=1)                # noqa: E731
    lens = np.concatenate([st.fin_len[act], np.full(cand_lp.shape, length)], axis=1)
    lps = np.concatenate([st.fin_lp[act], cand_lp], axis=1)              # [A, 3K]
    toks = np.concatenate([st.fin_tokens[act], cand_tokens], axis=1)     # [A, 3K, T]
    st.fin_score[act] = take(score)
    st.fin_len[act] = take(lens)
    st.fin_lp[act] = take(lps)
    st.fin_tokens[act] = np.take_along_axis(toks, order[:, :, None], axis=1)


def still_open(st: HFBeamState, act: np.ndarray, length: int, max_new_tokens: int,
               length_penalty: float, early_stopping: bool | str) -> np.ndarray:
    """(A,) bool: whether each active item can still improve its finished set.

    transformers' ``_check_early_stop_heuristic``: compare the best running beam's best
    possible score with the worst finished score (an item whose set is not full is open).
    """
    if early_stopping == "never" and length_penalty > 0:
        best_len = max_new_tokens  # the exact bound: a positive penalty favours the longest
    else:
        best_len = length          # the heuristic: the running beams' current length
    best = st.run_lp[act, 0] / float(best_len) ** length_penalty         # [A]
    fin = st.fin_score[act]                                              # [A, K]
    full = np.isfinite(fin).all(axis=1)                                  # [A]
    worst = np.where(full, fin.min(axis=1), -np.inf)                     # [A]
    keep = st.open[act] & (best > worst)
    if early_stopping is True:
        keep &= ~full  # stop as soon as K hypotheses have finished
    return keep


def hf_beam_search(model, prompts: Sequence[Sequence[int]], *, num_beams: int,
                   max_new_tokens: int, eos_token_id: int | None = None,
                   length_penalty: float = 1.0, early_stopping: bool | str = False,
                   num_return_sequences: int = 1, no_repeat_ngram_size: int = 0,
                   pad_token_id: int | None = None) -> list[list[Hypothesis]]:
    """transformers 5.x beam search (see the module doc); arguments as :func:`beam_search`."""
    prompts, T, eos, vocab = check_request(model, prompts, max_new_tokens, eos_token_id)
    K = check_int("num_beams", num_beams, minimum=1)
    lp_exp = check_length_penalty("length_penalty", length_penalty, T)
    pad_token_id = check_eos(pad_token_id, vocab, name="pad_token_id")
    ngram = check_int("no_repeat_ngram_size", no_repeat_ngram_size, minimum=0)
    if not prompts:
        return []
    if T == 0:
        return [[Hypothesis(tokens=[], score=0.0, logprob=0.0, finished=False)] for _ in prompts]

    if vocab is not None:  # K beyond every distinct hypothesis only adds placeholders
        K = min(K, count_hypotheses(vocab, T, cap=K))
    pad = pad_token_id if pad_token_id is not None else eos if eos is not None else -1
    B, W = len(prompts), max(len(p) for p in prompts)
    # Its running rows and finished set hold max_new_tokens slots per beam from the start.
    check_fits(B * K * (W + 2 * T) * 8, "max_new_tokens, num_beams or the number of prompts")
    st = HFBeamState.initial(prompts, K, T, pad)
    runner = make_runner(model, prompts, rows=B * K, new_tokens=T)
    logits = runner.start()                                              # [B, V]
    act = np.arange(B)               # active items; model rows are (act, beam) in order
    beams_per_row = 1                # step 1 runs one row per prompt, later K per item
    for t in range(T):
        n_rows = len(act) * beams_per_row
        # Rows of dead beams (log-prob -inf: placeholders where fewer than K candidates were
        # possible) go through the model with the others, but whatever it returns for them
        # (an all -inf row after an EOS, say) is never used, nor checked.
        live = np.isfinite(st.run_lp[act, :beams_per_row]).ravel()       # [n]
        dead = None if live.all() else ~live
        check_logits(logits, n_rows, vocab, np.repeat(act, beams_per_row), live=live)
        if vocab is None:  # a model that does not declare its vocabulary: read it off the logits
            vocab = logits.shape[1]
            check_ids(prompts, eos, vocab)
            check_eos(pad_token_id, vocab, name="pad_token_id")
        V = vocab
        if dead is not None:
            logits = np.where(dead[:, None], 0.0, logits)
        logp = log_softmax(logits)                                       # [n, V] float64
        if dead is not None:
            logp[dead] = -np.inf                                         # their candidates
        if ngram:
            hist = st.seq[act, :beams_per_row, :W + t].reshape(n_rows, W + t)
            logp[ngram_ban_mask(hist, ngram, V)] = -np.inf  # banned, not renormalized
        logp = logp.reshape(len(act), beams_per_row, V)                  # [A, 1|K, V]
        with np.errstate(over="ignore"):  # sums below the float range: -inf, as they mean
            total = (st.run_lp[act][:, :, None] + logp).reshape(len(act), K * V)  # [A, K*V]

        # 2K candidates: enough for K running beams even if K of them end with EOS.
        idx, cand_lp = top_over_beams(total, 2 * K)                      # [A, 2K]
        beam, tok = idx // V, idx % V                                    # [A, 2K]
        ends = (tok == eos) if eos is not None else np.zeros_like(tok, dtype=bool)
        ends |= t + 1 == T                                               # length limit
        cand_tokens = np.take_along_axis(st.seq[act, :, W:], beam[:, :, None], axis=1)
        cand_tokens[:, :, t] = tok                                       # [A, 2K, T]

        # Only the top K candidates may finish; EOS candidates ranked K+1..2K are dropped
        # (they exist only as spares so that K beams keep running).
        can_finish = ends & (np.arange(2 * K) < K) & np.isfinite(cand_lp)
        merge_finished(st, act, cand_tokens, cand_lp, can_finish, t + 1, lp_exp)

        # The running beams: the K best candidates that did not finish.
        running_lp = np.where(ends, -np.inf, cand_lp)                    # [A, 2K]
        keep = np.argsort(-running_lp, axis=1, kind="stable")[:, :K]     # [A, K]
        parent_beam = np.take_along_axis(beam, keep, axis=1)             # [A, K]
        new_tok = np.take_along_axis(tok, keep, axis=1)                  # [A, K]
        st.run_lp[act] = np.take_along_axis(running_lp, keep, axis=1)
        seq = np.take_along_axis(st.seq[act], parent_beam[:, :, None], axis=1)  # [A, K, W+T]
        seq[:, :, W + t] = new_tok
        st.seq[act] = seq
        if t + 1 == T:
            break

        st.open[act] = still_open(st, act, t + 1, T, lp_exp, early_stopping)
        alive = st.open[act]                                             # [A]
        if not alive.any():
            break
        # Rows for the next call: item i's beam k continues row (i's place) * rows + parent.
        place = np.flatnonzero(alive)                                    # [A']
        parents = place[:, None] * beams_per_row + (
            parent_beam[place] if beams_per_row > 1 else np.zeros((len(place), K), int))  # [A', K]
        act = act[alive]
        beams_per_row = K
        logits = runner.advance(parents.reshape(-1), new_tok[place].reshape(-1))
    return results(st, num_return_sequences, eos)


def results(st: HFBeamState, n: int, eos: int | None) -> list[list[Hypothesis]]:
    """Each item's top ``n`` finished hypotheses, best first."""
    out = []
    for b in range(st.fin_score.shape[0]):
        hyps = []
        for j in range(min(n, st.fin_score.shape[1])):
            if not np.isfinite(st.fin_score[b, j]):
                break
            tokens = st.fin_tokens[b, j, :st.fin_len[b, j]].tolist()
            hyps.append(Hypothesis(tokens=tokens, score=float(st.fin_score[b, j]),
                                   logprob=float(st.fin_lp[b, j]),
                                   finished=eos is not None and tokens[-1] == eos))
        out.append(hyps)
    return out
