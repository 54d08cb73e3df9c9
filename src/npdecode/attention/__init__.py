"""Attention kernels: tiled flash attention with an online softmax."""

from npdecode.attention.flash import flash_attention_fwd

__all__ = ["flash_attention_fwd"]
