"""A scripted model: a toy whose right answer is known by hand.

``ScriptedLM(vocab_size, prompt_len, script)``: ``script`` maps a generated prefix (a tuple of
token ids after the prompt) to ``{token: log-probability}``; the probability left over is
spread evenly over the other tokens (``default`` is used for prefixes not in the script).
Its logits are those log-probabilities, so log-softmax returns them unchanged. It implements
only ``forward`` (decoding recomputes prefixes) and records every prefix it is run on, which
makes it the natural model for demonstrating and testing search semantics.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


_SLACK = 1e-12  # how far scripted probabilities may sum from 1 by rounding


class ScriptedLM:
    def __init__(self, vocab_size: int, prompt_len: int, script: dict[tuple, dict[int, float]],
                 default: dict[int, float] | None = None):
        self.vocab_size = vocab_size
        self.prompt_len = prompt_len
        self.script = script
        self.default = default or {}
        self.seen: list[tuple[int, ...]] = []   # every generated prefix the model was run on
        self.calls = 0

    def logprobs(self, prefix: tuple[int, ...]) -> np.ndarray:
        """The scripted log-probabilities (V,) after the generated ``prefix``."""
        given = self.script.get(prefix, self.default)
        for t in given:
            if (isinstance(t, bool) or not isinstance(t, numbers.Integral)
                    or not 0 <= t < self.vocab_size):
                raise ValueError(f"scripted token {t!r} after {prefix} is not a token id in "
                                 f"[0, {self.vocab_size})")
        rest = 1.0 - sum(math.exp(v) for v in given.values())
        others = self.vocab_size - len(given)
        if rest < -_SLACK:
            raise ValueError(f"scripted probabilities after {prefix} exceed 1")
        if not others and rest > _SLACK:
            raise ValueError(f"scripted probabilities after {prefix} do not sum to 1")
        # Tokens not in the script share what is left; where the scripted probabilities sum
        # to 1 (up to rounding), nothing is: they get probability 0.
        spread = math.log(rest / others) if others and rest > _SLACK else -np.inf
        out = np.full(self.vocab_size, spread)
        for t, v in given.items():
            out[t] = v
        return out

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) -> the scripted log-probabilities (N, V) after each row."""
        self.calls += 1
        rows = []
        for row in np.asarray(token_ids):
            prefix = tuple(int(t) for t in row[self.prompt_len:])
            self.seen.append(prefix)
            rows.append(self.logprobs(prefix))
        return np.stack(rows)
