"""CharGPT: a small character-level GPT, trained in NumPy (see ``npdecode.train``).

Pre-norm transformer blocks: token + learned position embeddings, then per layer
``x += attn(rmsnorm(x))`` and ``x += mlp(rmsnorm(x))``; a final RMSNorm and an untied output
head with a bias. Attention is multi-head and causal; the MLP is ReLU. No other biases.

Parameters live in one flat dict ``params`` (name -> array), the same names the trainer and
the ``.npz`` files use. ``forward`` is the plain definition; ``prefill``/``extend`` are the
cached path and agree with it to 1e-10 in float64.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from npdecode.attention.dense import causal_mask, dense_attention
from npdecode.cache import KVCache
from npdecode.models.protocol import (check_token_ids, checked_weights, model_dtype,
                                      prefill_with_extend, token_array)

EPS = 1e-5  # RMSNorm: keeps 1/rms finite for an all-zero vector


@dataclass(frozen=True)
class CharGPTConfig:
    """Shape of a CharGPT."""

    vocab_size: int = 27   # tokens: '.' (id 0) and a..z
    max_context: int = 16  # positions the model has embeddings for (longest input)
    d_model: int = 64      # width of the residual stream
    n_layers: int = 2      # transformer blocks
    n_heads: int = 4       # attention heads per block; must divide d_model
    d_ff: int = 256        # hidden width of the ReLU MLP

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CharGPTConfig.{name} must be an integer >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def param_shapes(cfg: CharGPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in a fixed order (init, save and train use it)."""
    d, v, f = cfg.d_model, cfg.vocab_size, cfg.d_ff
    shapes: dict[str, tuple[int, ...]] = {"wte": (v, d), "wpe": (cfg.max_context, d)}
    for i in range(cfg.n_layers):
        shapes[f"h{i}.attn_norm"] = (d,)
        shapes[f"h{i}.Wqkv"] = (d, 3 * d)   # q, k, v side by side; heads contiguous in each
        shapes[f"h{i}.Wo"] = (d, d)
        shapes[f"h{i}.mlp_norm"] = (d,)
        shapes[f"h{i}.W1"] = (d, f)
        shapes[f"h{i}.W2"] = (f, d)
    shapes["norm_f"] = (d,)
    shapes["lm_head"] = (d, v)
    shapes["lm_bias"] = (v,)
    return shapes


def count_params(cfg: CharGPTConfig) -> int:
    """The number of scalars in ``param_shapes(cfg)``, counted without listing every layer
    (a memory check must not itself run out of memory on a huge n_layers)."""
    d, v, f = cfg.d_model, cfg.vocab_size, cfg.d_ff
    per_layer = 2 * d + 3 * d * d + d * d + 2 * d * f   # two norms, Wqkv, Wo, W1, W2
    return v * d + cfg.max_context * d + cfg.n_layers * per_layer + d + d * v + v


def init_params(cfg: CharGPTConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh float64 parameters: norms at 1, biases at 0, matrices ~ N(0, 1/fan_in).

    The projections that write into the residual stream (Wo, W2) are further scaled by
    1/sqrt(2 * n_layers) so the stream's variance does not grow with depth (GPT-2).
    """
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.split(".")[-1]
        if leaf.endswith("norm") or name == "norm_f":
            params[name] = np.ones(shape)
        elif name == "lm_bias":
            params[name] = np.zeros(shape)
        elif name in ("wte", "wpe"):
            params[name] = rng.standard_normal(shape) * 0.1
        else:
            scale = 1 / np.sqrt(shape[0])
            if leaf in ("Wo", "W2"):
                scale /= np.sqrt(2 * cfg.n_layers)
            params[name] = rng.standard_normal(shape) * scale
    return params


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (..., a) @ w (a, b) -> (..., b), as one 2-D matmul.

    NumPy multiplies an (n, t, a) stack by a matrix one (t, a) slice at a time, several
    times slower than the same product on the (n*t, a) matrix.
    """
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[1])


def rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """x (..., d) scaled to unit root-mean-square, times the gain g (d,)."""
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + EPS) * g


class CharGPT:
    """A character-level GPT implementing the cached model protocol.

    ``CharGPT(config, params)`` wraps given weights; ``CharGPT.init(config, seed=...)`` draws
    fresh ones; ``CharGPT.load(path)`` reads a ``.npz`` written by ``save``.
    """

    def __init__(self, config: CharGPTConfig, params: dict[str, np.ndarray], *,
                 dtype=np.float64):
        self.config = config
        self.dtype = model_dtype(dtype)
        shapes = param_shapes(config)
        if set(params) != set(shapes):
            missing, extra = set(shapes) - set(params), set(params) - set(shapes)
            raise ValueError(f"parameters do not match the config: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for name, shape in shapes.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"parameter {name} has shape {params[name].shape}, "
                                 f"the config needs {shape}")
        self.params = {name: checked_weights(f"parameter {name}", params[name], self.dtype)
                       for name in shapes}
        self.vocab_size = config.vocab_size
        self.max_context = config.max_context
        self._scale = float(1 / np.sqrt(config.head_dim))  # Python float: keeps float32

    @classmethod
    def init(cls, config: CharGPTConfig, *, seed: int | np.random.Generator = 0,
             dtype=np.float64) -> "CharGPT":
        """A randomly initialised model (see ``init_params``)."""
        return cls(config, init_params(config, np.random.default_rng(seed)), dtype=dtype)

    @property
    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(p.size for p in self.params.values())

    # -- the plain definition -------------------------------------------------------------

    def logits_all(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) -> logits (N, T, V) of every position; positions are 0..T-1."""
        ids = self._check_ids(token_ids)
        cfg, p = self.config, self.params
        N, T = ids.shape
        H, Dh = cfg.n_heads, cfg.head_dim
        x = p["wte"][ids] + p["wpe"][:T]                               # [N, T, d]
        visible = causal_mask(T)                                       # [T, T]
        for i in range(cfg.n_layers):
            h = rmsnorm(x, p[f"h{i}.attn_norm"])                       # [N, T, d]
            qkv = linear(h, p[f"h{i}.Wqkv"]).reshape(N, T, 3, H, Dh)   # [N, T, 3, H, Dh]
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)                     # [N, H, T, Dh] each
            a = dense_attention(q, k, v, visible, self._scale)         # [N, H, T, Dh]
            a = a.transpose(0, 2, 1, 3).reshape(N, T, cfg.d_model)     # [N, T, d]
            x = x + linear(a, p[f"h{i}.Wo"])
            x = x + self._mlp(x, i)
        return self._head(x)                                           # [N, T, V]

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) -> logits (N, V) of each row's last position (T <= max_context)."""
        return self.logits_all(token_array(token_ids, forward=True))[:, -1]  # (range: logits_all)

    def _mlp(self, x: np.ndarray, i: int) -> np.ndarray:
        p = self.params
        h = rmsnorm(x, p[f"h{i}.mlp_norm"])                            # [..., d]
        return linear(np.maximum(linear(h, p[f"h{i}.W1"]), 0), p[f"h{i}.W2"])  # [..., d]

    def _head(self, x: np.ndarray) -> np.ndarray:
        p = self.params
        return linear(rmsnorm(x, p["norm_f"]), p["lm_head"]) + p["lm_bias"]  # [..., V]

    def _check_ids(self, token_ids: np.ndarray) -> np.ndarray:
        ids = check_token_ids(token_ids, self.vocab_size)
        if ids.shape[1] > self.max_context:
            raise ValueError(f"sequences of {ids.shape[1]} tokens exceed the model's context "
                             f"of {self.max_context}")
        return ids

    # -- the cached protocol --------------------------------------------------------------

    def new_cache(self, rows: int, slots: int) -> KVCache:
        """An empty cache for ``rows`` sequences of up to ``slots`` slots (padding included)."""
        cfg = self.config
        return KVCache(layers=cfg.n_layers, rows=rows, heads=cfg.n_heads, slots=slots,
                       head_dim=cfg.head_dim, dtype=self.dtype)

    def prefill(self, prompts: Sequence[Sequence[int]], cache: KVCache) -> np.ndarray:
        """Write left-padded prompts into cache rows 0..N-1; logits (N, V) of their last token."""
        return prefill_with_extend(self, prompts, cache)

    def extend(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Append tokens (n, t) to cache rows 0..n-1; return their logits (n, t, V)."""
        tokens = check_token_ids(tokens, self.vocab_size, "tokens")
        cfg, p = self.config, self.params
        n, t = tokens.shape
        H, Dh = cfg.n_heads, cfg.head_dim
        # Positions count from each row's first real token; left-padding slots come out
        # negative and are clipped to 0 (they are never attended to, so any value works).
        pos = np.maximum(cache.positions(t, n), 0)                     # [n, t]
        if pos.size and pos.max() >= self.max_context:
            raise ValueError(f"a sequence would reach position {int(pos.max())}, beyond the "
                             f"model's context of {self.max_context} tokens")
        x = p["wte"][tokens] + p["wpe"][pos]                           # [n, t, d]
        for i in range(cfg.n_layers):
            h = rmsnorm(x, p[f"h{i}.attn_norm"])                       # [n, t, d]
            qkv = linear(h, p[f"h{i}.Wqkv"]).reshape(n, t, 3, H, Dh)   # [n, t, 3, H, Dh]
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)                     # [n, H, t, Dh] each
            cache.write(i, k, v)
            a = cache.attend(i, q, self._scale)                        # [n, H, t, Dh]
            a = a.transpose(0, 2, 1, 3).reshape(n, t, cfg.d_model)     # [n, t, d]
            x = x + linear(a, p[f"h{i}.Wo"])
            x = x + self._mlp(x, i)
        cache.advance(t)
        return self._head(x)                                           # [n, t, V]

    # -- files ----------------------------------------------------------------------------

    def save(self, path: str | Path, *, dtype=np.float32) -> None:
        """Write config and weights (cast to ``dtype``) to a compressed ``.npz``."""
        arrays = {name: a.astype(dtype) for name, a in self.params.items()}
        np.savez_compressed(path, config=np.array(json.dumps(asdict(self.config))), **arrays)

    @classmethod
    def load(cls, path, *, dtype=np.float64) -> "CharGPT":
        """Read a model written by ``save``; ``path`` is a file path or a binary file object.

        Anything else (not an .npz archive, a damaged one, a config that is not the JSON of
        every ``CharGPTConfig`` field) is refused with a ValueError naming the file.
        """
        name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", path)
        try:
            archive = np.load(path, allow_pickle=False)
        except OSError as err:
            raise ValueError(f"cannot read a CharGPT model from {name}: {err}") from None
        except (ValueError, EOFError, zipfile.BadZipFile):  # EOFError: an empty file
            raise ValueError(f"{name} is not an .npz archive written by CharGPT.save") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
            raise ValueError(f"{name} is not an .npz archive written by CharGPT.save")
        try:
            with archive as f:
                text = f["config"] if "config" in f.files else None
                params = {key: f[key] for key in f.files if key != "config"}
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ValueError(f"{name} is damaged (a truncated or corrupt .npz archive: "
                             f"{err})") from None
        except ValueError as err:  # e.g. an array of Python objects (needs pickle)
            raise ValueError(f"{name} is not an .npz archive written by CharGPT.save: "
                             f"{err}") from None
        if text is None:
            raise ValueError(f"{name} holds no CharGPT config; was it written by CharGPT.save?")
        config = _config_from_json(text, name)
        try:
            return cls(config, params, dtype=dtype)
        except ValueError as err:  # a parameter of the wrong shape, a missing one, ...
            raise ValueError(f"{name}: {err}") from None


def _config_from_json(text: np.ndarray, name) -> CharGPTConfig:
    """The config stored by ``CharGPT.save`` (a 0-d string array of JSON), checked key by key;
    ``name`` is the file, for error messages."""
    try:
        settings = json.loads(str(text)) if text.dtype.kind == "U" else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: the stored config is not valid JSON ({err})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{name}: the stored config is not a JSON object of CharGPTConfig "
                         f"fields; was the file written by CharGPT.save?")
    keys = [field.name for field in fields(CharGPTConfig)]
    missing = [k for k in keys if k not in settings]
    unknown = sorted(k for k in settings if k not in keys)
    if missing or unknown:
        raise ValueError(f"{name}: the stored config must have exactly the keys {keys}; "
                         f"missing {missing}, unknown {unknown}")
    try:
        return CharGPTConfig(**settings)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
