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

import numpy as np


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
        rest = 1.0 - sum(math.exp(v) for v in given.values())
        others = self.vocab_size - len(given)
        if others:
            if rest <= 0:
                raise ValueError(f"scripted probabilities after {prefix} exceed 1")
        elif abs(rest) > 1e-12:
            raise ValueError(f"scripted probabilities after {prefix} do not sum to 1")
        out = np.full(self.vocab_size, math.log(rest / others) if others else -np.inf)
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
