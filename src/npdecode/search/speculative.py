"""Lossless speculative sampling (Leviathan et al. 2023), batched over prompts.

Each round, for every running row, the draft model proposes k tokens d_1..d_k, each sampled
from its processed distribution q_i; the target scores all of them in ONE cached ``extend``
call, giving its processed distributions p_1..p_{k+1}. Then, left to right, d_i is accepted
with probability min(1, p_i(d_i) / q_i(d_i)); the first rejected position i emits a token
drawn from normalize(max(0, p_i - q_i)) instead, and if all k are accepted a bonus token is
drawn from p_{k+1}. Every emitted token is then distributed exactly as if it had been sampled
from the target alone (with the same temperature / top-k / top-p), whatever the draft.

Cache bookkeeping. Between rounds every row's committed sequence c (prompt + generated) ends
in a token whose target logits are not known yet, so:

- the target cache holds c[:-1]; a round extends it by [c[-1], d_1..d_k] (k + 1 positions):
  position 0 scores d_1, position i scores d_{i+1}, position k scores the bonus token;
- the draft cache holds c[:-m] with m = 1 or 2 pending tokens (2 after a round in which all
  drafts were accepted: the draft never ran on d_k). A round's first draft call extends by the
  pending tokens (rows with only one pending token are rolled back one more slot, recomputing
  a token they had, so that all rows extend by the same count); the next k - 1 calls extend
  by one draft token each.

After verification a row that accepted j drafts commits d_1..d_j plus one token; both caches
are rolled back to the new invariant with ``KVCache.truncate`` (rows have their own ends), and
rows that finished are dropped from both caches with ``KVCache.reorder``.

Temperature 0 makes p and q one-hot on their argmax: a draft is accepted exactly when it is
the target's argmax and the residual is the target's argmax, so the output is target greedy
decoding, token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npdecode.models.protocol import is_cached, vocab_size_of
from npdecode.numerics import log_softmax
from npdecode.search import processors as P
from npdecode.search.sampling import Generation, check_options, make_generators
from npdecode.search.validate import (check_context, check_eos, check_extend_shape, check_ids,
                                      check_int, check_logits, check_prompts)


@dataclass(frozen=True)
class SpeculativeResult:
    """Output of :func:`speculative_sample`.

    generations:  one :class:`Generation` per prompt (tokens, target log-probability, finished).
    proposed:     draft tokens proposed, summed over rows and rounds.
    accepted:     draft tokens the target accepted (a rejection's replacement and the bonus
                  token are not counted); ``accepted / proposed`` is the acceptance rate.
                  Both count every draft of a round, including those after an accepted EOS
                  that ends the row, so ``accepted`` can exceed the tokens kept.
    target_calls: calls of the target model: one prefill plus one ``extend`` per round.
    draft_calls:  calls of the draft model: one prefill plus k ``extend`` s per round.
    """

    generations: list[Generation]
    proposed: int
    accepted: int
    target_calls: int
    draft_calls: int

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0


def _checked(logits: object, n: int, t: int, vocab: int | None, items: np.ndarray,
             who: str) -> np.ndarray:
    """Validate ``extend`` logits (n, t, V) of the rows whose batch items are ``items``."""
    check_extend_shape(logits, n, t, vocab, who=f"the {who} model")
    check_logits(logits.reshape(n * t, -1), n * t, vocab, np.repeat(items, t),
                 who=f"the {who} model")
    return np.asarray(logits, dtype=np.float64)


def _residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """normalize(max(0, p - q)) row-wise (n, V); where p <= q everywhere (possible only by
    rounding, since then rejection has probability 0) it falls back to p."""
    r = np.maximum(p - q, 0.0)                                   # [n, V]
    s = r.sum(axis=1, keepdims=True)                             # [n, 1]
    return np.where(s > 0, r / np.where(s > 0, s, 1.0), p)


def speculative_sample(target, draft, prompts: Sequence[Sequence[int]], *,
                       num_draft_tokens: int = 4, max_new_tokens: int,
                       eos_token_id: int | None = None, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0,
                       seed: int | Sequence[int] | None = None) -> SpeculativeResult:
    """Sample from ``target`` with ``draft`` proposing ``num_draft_tokens`` tokens per round.

    Both models must implement the cached protocol (``new_cache``, ``prefill``, ``extend``)
    and share the vocabulary. The same processors (temperature, top-k, top-p; see
    :func:`npdecode.search.sampling.sample`) define the target's distribution p and the
    draft's q; the output is distributed exactly as sampling from p. Temperature 0 gives the
    target's greedy decoding.

    ``prompts``: B lists of ids, lengths may differ. In a round each row proposes
    min(num_draft_tokens, its remaining budget) drafts (all rows share one target call of the
    largest count; a row's extra positions are computed and discarded, never proposed); where
    a model has a context limit, a round proposes no more than every row has room for. Each
    row returns at most
    ``max_new_tokens`` tokens (tokens emitted past that, or past EOS, in a round are dropped;
    a prefix of a correctly distributed sequence is correctly distributed). A row stops at its
    EOS, which is included; finished rows leave both caches and are no longer computed.

    ``seed``: None, an int, or one int per prompt (each prompt owns a generator and draws a
    fixed number of uniforms per round), so a prompt sampled with its seed gives the same
    tokens alone or in any batch - except near a model's context limit, where the room of the
    fullest row caps every row's drafts. ``logprob`` is the target's raw (unprocessed) float64
    log-probability.
    """
    for who, m in (("target", target), ("draft", draft)):
        if not is_cached(m):
            raise ValueError(f"speculative decoding needs {who} models with the cached protocol "
                             f"(new_cache, prefill, extend); {type(m).__name__} lacks it")
    vt, vd = vocab_size_of(target), vocab_size_of(draft)
    if vt is not None and vd is not None and vt != vd:
        raise ValueError(f"target and draft must share the vocabulary; target has {vt} tokens, "
                         f"draft {vd}")
    vocab = vt if vt is not None else vd
    clean = check_prompts(prompts, vocab)
    k_max = check_int("num_draft_tokens", num_draft_tokens, minimum=1)
    n_new = check_int("max_new_tokens", max_new_tokens, minimum=0)
    # No row ever proposes more than max_new_tokens drafts in a round: the caches and the
    # uniforms drawn per round are sized by the smaller of the two.
    k_max = min(k_max, max(n_new, 1))
    eos = check_eos(eos_token_id, vocab)
    check_context(target, clean, n_new, who="the target model")
    check_context(draft, clean, n_new, who="the draft model")
    opts = check_options(temperature=temperature, top_k=top_k, top_p=top_p)
    rngs = make_generators(seed, len(clean))
    B = len(clean)
    if B == 0 or n_new == 0:
        return SpeculativeResult([Generation() for _ in clean], 0, 0, 0, 0)

    def dist(logits: np.ndarray) -> np.ndarray:                  # (..., V) -> (..., V)
        return P.distribution(logits, temperature=opts.temperature, top_k=opts.top_k,
                              top_p=opts.top_p)

    # A row's drafts past its own budget (never proposed, only computed alongside the other
    # rows) reach at most k_max - 1 positions past prompt + max_new_tokens, so this many slots
    # suffice; where a model has a context limit, the round is capped so none passes it.
    slots = max(len(p) for p in clean) + n_new + k_max
    tcache, dcache = target.new_cache(B, slots), draft.new_cache(B, slots)
    items = np.arange(B)
    for who, model, cache in (("target", target, tcache), ("draft", draft, dcache)):
        first = model.prefill(clean, cache)
        check_logits(first, B, None, items, who=f"the {who} model")  # its width: below
        if vocab is None:  # neither model declares its vocabulary: read it off the logits
            vocab = first.shape[1]
            check_ids(clean, eos, vocab)
        elif first.shape[1] != vocab:
            raise ValueError(f"target and draft must share the vocabulary; the {who} model "
                             f"returned {first.shape[1]} logits per token, expected {vocab}")
        cache.truncate(cache.end[:B] - 1)   # the invariant: the last token is pending
    target_calls = draft_calls = 1

    seqs = [list(p) for p in clean]                  # committed sequence of each batch item
    out: list[list[int]] = [[] for _ in range(B)]
    logprob = np.zeros(B)                            # [B] float64
    finished = np.zeros(B, dtype=bool)               # [B]
    pending = np.ones(B, dtype=np.int64)             # [n] committed tokens not in draft cache
    proposed = accepted = 0
    limits = (getattr(m, "max_context", None) for m in (target, draft))
    limit = min((c for c in limits if c is not None),
                default=None)
    while len(items):
        n = len(items)
        remaining = np.array([n_new - len(out[b]) for b in items])            # [n] >= 1
        # Each row proposes up to its own budget; the round runs the largest count, and a
        # row's drafts past its own count are never proposed (so a row's tokens do not
        # depend on the other rows). Only a model's context limit caps the round for all.
        k_row = np.minimum(k_max, remaining)                                  # [n]
        if limit is not None:
            room = limit - np.array([len(seqs[b]) for b in items])            # [n] >= 1
            k_row = np.minimum(k_row, room.min())
        k = int(k_row.max())
        # A fixed number of uniforms per row and round: draft i uses u[:, i], its acceptance
        # u[:, k_max + i], the round's last token u[:, 2 k_max].
        u = np.array([rngs[b].random(2 * k_max + 1) for b in items])         # [n, 2k_max+1]

        # 1. Draft: k tokens per row, each from q_i (k calls, the first over the pending tokens).
        m = int(pending.max())
        back = m - pending                                                    # [n] 0 or 1
        if back.any():
            dcache.truncate(dcache.end[:n] - back)
        x = np.array([seqs[b][-m:] for b in items], dtype=np.int64)          # [n, m]
        drafts = np.empty((n, k), dtype=np.int64)                            # [n, k]
        q = np.empty((n, k, vocab))                                          # [n, k, V]
        for i in range(k):
            dl = _checked(draft.extend(x, dcache), n, x.shape[1], vocab, items, "draft")
            draft_calls += 1
            q[:, i] = dist(dl[:, -1])                                         # [n, V]
            drafts[:, i] = P.sample_categorical(q[:, i], u[:, i])
            x = drafts[:, i:i + 1]                                            # [n, 1]

        # 2. Target: one call scores [last committed token, d_1..d_k].
        last = np.array([seqs[b][-1] for b in items], dtype=np.int64)[:, None]  # [n, 1]
        tl = _checked(target.extend(np.concatenate([last, drafts], axis=1), tcache),
                      n, k + 1, vocab, items, "target")                       # [n, k+1, V]
        target_calls += 1
        p = dist(tl)                                                          # [n, k+1, V]

        # 3. Accept d_i with probability min(1, p/q): u < p/q (u in [0, 1); q(d_i) > 0).
        rows = np.arange(n)
        pd = np.take_along_axis(p[:, :k], drafts[:, :, None], axis=2)[..., 0]  # [n, k]
        qd = np.take_along_axis(q, drafts[:, :, None], axis=2)[..., 0]         # [n, k]
        proposed_here = np.arange(k) < k_row[:, None]                        # [n, k]
        ok = (u[:, k_max:k_max + k] * qd < pd) & proposed_here                 # [n, k]
        j = np.where(ok.all(axis=1), k, np.argmin(ok, axis=1))                # [n] accepted
        # 4. The round's last token: the residual at the first rejection, else (all of the
        # row's own drafts accepted: j == k_row) the bonus token from p.
        q_pad = np.concatenate([q, np.zeros((n, 1, vocab))], axis=1)         # [n, k+1, V]
        final_dist = np.where((j < k_row)[:, None], _residual(p[rows, j], q_pad[rows, j]),
                              p[rows, j])                                     # [n, V]
        final = P.sample_categorical(final_dist, u[:, 2 * k_max])             # [n]
        proposed += int(k_row.sum())
        accepted += int(j.sum())

        # 5. Commit, cut at EOS and at max_new_tokens, score under the raw target.
        lp = log_softmax(tl)                                                  # [n, k+1, V]
        go_on = np.ones(n, dtype=bool)
        for r, b in enumerate(items):
            toks = drafts[r, : j[r]].tolist() + [int(final[r])]   # accepted drafts + 1 token
            toks = toks[: remaining[r]]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos) + 1]
                finished[b] = True
            out[b] += toks
            seqs[b] += toks
            logprob[b] += lp[r, np.arange(len(toks)), toks].sum()
            go_on[r] = not finished[b] and len(out[b]) < n_new

        # 6. Roll both caches back to the invariant, then drop the rows that stopped.
        tcache.truncate(tcache.end[:n] - (k - j))          # keeps [last, d_1..d_j]
        # The draft ran on [pending.., d_1..d_{k-1}]; it keeps d_1..d_min(j, k-1).
        dcache.truncate(dcache.end[:n] - (k - 1 - np.minimum(j, k - 1)))
        pending = np.where(j == k, 2, 1)                                      # [n]
        keep = np.flatnonzero(go_on)
        items, pending = items[keep], pending[keep]
        if len(keep) < n:
            tcache.reorder(keep)
            dcache.reorder(keep)

    gens = [Generation(tokens=out[b], logprob=float(logprob[b]), finished=bool(finished[b]))
            for b in range(B)]
    return SpeculativeResult(gens, proposed, accepted, target_calls, draft_calls)
