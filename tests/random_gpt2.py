"""Random-weight GPT-2 checkpoints built locally with transformers (no download), and the
left-padded batches transformers decodes them from."""

from __future__ import annotations


def random_gpt2(path, *, vocab: int, positions: int, seed: int = 0, n_embd: int = 32,
                n_layer: int = 2, n_head: int = 4, tied: bool = True,
                activation: str = "gelu_new", scale_by_layer: bool = False,
                special_id: int | None = 0, special_scale: float | None = None):
    """Save a random GPT-2 to ``path`` (HF layout, safetensors) and return the torch model.

    Weights are drawn wider than transformers' init so that next-token distributions are
    peaked rather than flat; ``special_id`` is the config's bos/eos/pad id (or None). With
    ``special_scale`` the special token's embedding row is scaled by it (small: the token is
    almost never predicted).
    """
    import torch
    import transformers

    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        activation_function=activation, tie_word_embeddings=tied,
        scale_attn_by_inverse_layer_idx=scale_by_layer,
        bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
        if special_scale is not None:
            model.transformer.wte.weight[special_id] *= special_scale
    model.save_pretrained(path)
    return model


def left_padded(prompts: list[list[int]], pad: int):
    """(ids, attention mask) as torch tensors (B, W), the prompts right-aligned."""
    import torch

    W = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), W), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), W), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, W - len(p):] = torch.tensor(p)
        mask[i, W - len(p):] = 1
    return ids, mask
