"""Models: things that turn token ids into logits. They never choose tokens."""

from npdecode.models.chargpt import CharGPT
from npdecode.models.gpt2 import GPT2
from npdecode.models.protocol import CachedLM, LM, is_cached
from npdecode.models.tinylm import TinyLM

__all__ = ["CachedLM", "CharGPT", "GPT2", "LM", "TinyLM", "is_cached"]
