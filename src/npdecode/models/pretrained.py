"""The two CharGPT models shipped with the package, trained on the bundled names.

``load_target()`` is the larger model; ``load_draft()``, with 17.7% of its parameters, is the
draft model of speculative decoding. Both share the tokenizer of
``npdecode.models.chars``; their training runs and losses are in ``npdecode/weights/README.md``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from npdecode.models.chargpt import CharGPT


def _load(name: str, dtype) -> CharGPT:
    ref = resources.files("npdecode").joinpath("weights", f"{name}.npz")
    if not ref.is_file():
        raise FileNotFoundError(f"the shipped weights {name}.npz are missing from the "
                                f"npdecode package; reinstall it or run 'npdecode train'")
    with ref.open("rb") as f:
        return CharGPT.load(f, dtype=dtype)


def load_target(*, dtype=np.float64) -> CharGPT:
    """The shipped target model (3 layers, d_model 64, context 16)."""
    return _load("target", dtype)


def load_draft(*, dtype=np.float64) -> CharGPT:
    """The shipped draft model (2 layers, d_model 32, context 16)."""
    return _load("draft", dtype)
