"""npdecode: decoding autoregressive language models in NumPy."""

from npdecode.models import TinyLM
from npdecode.search.beam import Hypothesis, batched_beam_search

__all__ = ["Hypothesis", "TinyLM", "batched_beam_search"]
__version__ = "0.1.0"
