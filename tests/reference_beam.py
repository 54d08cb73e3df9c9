"""A slow, obviously-correct beam search: the pool semantics (README) transcribed line by line.

One prompt at a time, one hypothesis at a time, the full prefix re-run through
``model.forward`` for every hypothesis at every step, plain Python lists and sorting. It is
the oracle the fast path is tested against, and the baseline the benchmarks time.
"""

from __future__ import annotations

import numpy as np

from npdecode import Hypothesis


def log_softmax(logits):
    """The oracle's own log-softmax of one row (float64, max-shifted), not the library's."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


def reference_beam_search(model, prompts, *, beam_width, max_new_tokens, alpha=0.0,
                          eos_token_id=None, no_repeat_ngram_size=0):
    return [_one_prompt(model, list(p), beam_width, max_new_tokens, alpha, eos_token_id,
                        no_repeat_ngram_size) for p in prompts]


def _score(logprob, length, alpha):
    return logprob / length ** alpha if length > 0 else 0.0


def _banned(seq, n):
    """Tokens t such that seq + [t] ends with an n-gram already present in seq."""
    if n <= 0:
        return set()
    tail = seq[len(seq) - n + 1:] if n > 1 else []
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == tail}


def _one_prompt(model, prompt, K, T, alpha, eos, ngram):
    # A hypothesis: (tokens, logprob, finished, stopped); the pool is kept best first. A
    # stopped one had every next token banned: like a finished one it is never extended and
    # competes as itself, but it is reported unfinished.
    pool = [([], 0.0, False, False)]
    for _ in range(T):
        if len(pool) == K and all(f for _, _, f, _ in pool):
            break
        if all(f or s for _, _, f, s in pool):
            continue  # no unfinished hypothesis: the pool stays as it is
        entries = []  # (sort key, hypothesis)
        for rank, (g, lp_sum, fin, stop) in enumerate(pool):
            held = (-_score(lp_sum, len(g), alpha), 0, 0, rank, 0, 0, 0)  # its key as itself
            if fin or stop:
                entries.append((held, (g, lp_sum, fin, stop)))
                continue
            logits = np.asarray(model.forward(np.array([prompt + g])), dtype=np.float64)[0]
            lp = log_softmax(logits)
            banned = _banned(prompt + g, ngram)               # never chosen
            m = min(2 * K, len(lp))
            # top-m tokens: highest lp first; equal ones (rounding can make tokens with
            # different logits equal) by the higher logit, then the lowest id
            ranked = [t for t in np.lexsort((np.arange(len(lp)), -logits, -lp)).tolist()
                      if t not in banned][:m]
            if not ranked:  # every token banned: it stops here and keeps its place
                entries.append((held, (g, lp_sum, False, True)))
            for t in ranked:
                lp_t = lp[t]
                h = (g + [t], lp_sum + lp_t, eos is not None and t == eos, False)
                # Ties: held first. Candidates (all of one length) by their logprob, whose
                # order the division by len ** alpha can round into equal scores, then the
                # parent's rank, then higher lp, higher logit, lower id.
                entries.append(((-_score(lp_sum + lp_t, len(g) + 1, alpha), 1,
                                 -(lp_sum + lp_t), rank, -lp_t, -logits[t], t), h))
        entries.sort(key=lambda e: e[0])
        pool = [h for _, h in entries[:K]]
    return [Hypothesis(tokens=g, score=float(_score(lp, len(g), alpha)), logprob=float(lp),
                       finished=f) for g, lp, f, _ in pool]
