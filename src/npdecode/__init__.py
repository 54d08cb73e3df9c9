"""npdecode: decoding autoregressive language models in NumPy.

Models (``npdecode.models``) turn token ids into logits; search strategies
(``npdecode.search``) turn logits into tokens; neither reaches into the other.
"""

from npdecode.attention.flash import flash_attention_fwd
from npdecode.models import GPT2, CharGPT, TinyLM
from npdecode.search.beam import Hypothesis, batched_beam_search
from npdecode.search.beam_search import beam_search
from npdecode.search.sampling import Generation, greedy, sample
from npdecode.search.speculative import SpeculativeResult, speculative_sample

__all__ = ["CharGPT", "GPT2", "Generation", "Hypothesis", "SpeculativeResult", "TinyLM",
           "batched_beam_search", "beam_search", "flash_attention_fwd", "greedy", "sample",
           "speculative_sample"]
__version__ = "0.1.0"
