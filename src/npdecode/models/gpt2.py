"""GPT-2 in NumPy, loaded from a HuggingFace-format directory (config.json + model.safetensors).

The architecture (Radford et al. 2019): learned token and position embeddings, ``n_layer``
pre-LayerNorm blocks of multi-head causal self-attention and a GELU MLP, a final LayerNorm and
a language-model head (tied to the token embedding unless the checkpoint says otherwise).
Weights are stored the HuggingFace way: ``Conv1D`` matrices are (in, out), so a layer is
``x @ W + b``.

``forward`` is the plain definition; ``prefill``/``extend`` are the cached path (the package's
:class:`~npdecode.models.protocol.CachedLM` protocol) and agree with it to 1e-10 in float64.
Reading weights needs the ``safetensors`` package (the ``hf`` extra), imported only when a
checkpoint is loaded.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from npdecode.attention.dense import causal_mask, dense_attention
from npdecode.cache import KVCache
from npdecode.models.protocol import (check_token_ids, checked_weights, left_pad, model_dtype,
                                      token_array)


@dataclass(frozen=True)
class GPT2Config:
    """The hyperparameters of a GPT-2 checkpoint (the fields of its config.json we use)."""

    vocab_size: int            # V, rows of the token embedding
    n_positions: int           # learned positions, hence the context limit
    n_embd: int                # d, width of the residual stream
    n_layer: int               # transformer blocks
    n_head: int                # attention heads; head_dim = n_embd // n_head
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    tie_word_embeddings: bool = True          # lm head = token embedding transposed
    scale_attn_weights: bool = True           # divide scores by sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and by (layer index + 1)

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            value = getattr(self, name)
            if value is None and name == "n_inner":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        eps = self.layer_norm_epsilon
        if (isinstance(eps, bool) or not isinstance(eps, (int, float))
                or not math.isfinite(eps) or eps <= 0):
            raise ValueError(f"layer_norm_epsilon must be a finite number > 0, got {eps!r}")
        if not isinstance(self.activation_function, str):
            raise ValueError(f"activation_function must be a string such as 'gelu_new', got "
                             f"{self.activation_function!r}")
        for name in ("tie_word_embeddings", "scale_attn_weights",
                     "scale_attn_by_inverse_layer_idx"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "config.json") -> "GPT2Config":
        """Build from a parsed HuggingFace config.json (unknown keys are ignored).

        ``source`` names the file in error messages.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"{source} must hold a JSON object of GPT-2 settings, got a "
                             f"{type(d).__name__}")
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{source} is for a {d['model_type']!r} model; GPT2 loads "
                             f"GPT-2 checkpoints (model_type 'gpt2') only")
        required = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        missing = [k for k in required if d.get(k) is None]
        if missing:
            raise ValueError(f"{source} lacks {missing}; is this a GPT-2 checkpoint?")
        # null in config.json means "the default" (n_inner: 4 * n_embd).
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if d.get(k) is not None})
        except ValueError as err:
            raise ValueError(f"{source}: {err}; fix the value in the file") from None


# GELU's tanh approximation (GPT-2's "gelu_new"), 0.5 x (1 + tanh(c (x + 0.044715 x^3))) with
# c = sqrt(2 / pi), is r f(s x) with
# f(z) = z (1 + tanh(z (g + z^2))) for s = (0.044715 c)^(1/3), g = c / s and r = 0.5 / s.
# A model folds s into the weights and bias before the activation and r into the weights
# after it (see ``GPT2._block``), which leaves f: six passes over its input instead of eight.
_GELU_TANH_IN = (0.044715 * math.sqrt(2.0 / math.pi)) ** (1.0 / 3.0)
_GELU_TANH_OUT = 0.5 / _GELU_TANH_IN
_GELU_TANH_G = math.sqrt(2.0 / math.pi) / _GELU_TANH_IN


def _gelu_tanh_of_scaled(z: np.ndarray) -> np.ndarray:
    """f(z) = z (1 + tanh(z (g + z^2))), evaluated in place in one temporary."""
    # z * z * z, never z ** 3: NumPy computes a float32 power through powf, some 400 times
    # slower than multiplications, and it was most of a decoding step's time.
    y = z * z
    y += _GELU_TANH_G
    y *= z                   # z (g + z^2)
    np.tanh(y, out=y)
    y += 1.0
    y *= z
    return y


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_exact(x: np.ndarray) -> np.ndarray:
    """GELU with the exact erf (HuggingFace "gelu"); NumPy has no erf, so this one is slow."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow for large |x|


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": _gelu_exact,
    "relu": lambda x: np.maximum(x, 0),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "quick_gelu": lambda x: x * _sigmoid(1.702 * x),
    "tanh": np.tanh,
}

# Activations computed as r * f(s * x), with s and r folded into the weights around them:
# name -> (f, s, r).
SCALED_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float, float]] = {
    name: (_gelu_tanh_of_scaled, _GELU_TANH_IN, _GELU_TANH_OUT)
    for name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")}


def standardize(x: np.ndarray, eps: float, *, avg: np.ndarray | None = None) -> np.ndarray:
    """Normalize the last axis to zero mean and unit variance (LayerNorm without gain/bias).

    ``avg`` is the (d,) vector of 1/d in x's dtype, if the caller keeps one (else built here).
    """
    # Both averages are matrix-vector products with the vector of 1/d: BLAS reads each row
    # once, where np.add.reduce over a short last axis costs several times more.
    if avg is None:
        avg = np.full(x.shape[-1], 1.0 / x.shape[-1], dtype=x.dtype)     # [d]
    out = x - (x @ avg)[..., None]                                        # [..., d] centered
    std = (out * out) @ avg                                               # [...] variance
    std += eps
    np.sqrt(std, out=std)
    out /= std[..., None]
    return out


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float, *,
               avg: np.ndarray | None = None) -> np.ndarray:
    """Normalize the last axis to zero mean, unit variance, then scale and shift."""
    out = standardize(x, eps, avg=avg)
    out *= g
    out += b
    return out


def fold_layer_norm(g: np.ndarray, b: np.ndarray, w: np.ndarray, c: np.ndarray,
                    dtype, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(w', c') such that (layer_norm(x, g, b) @ w + c) * scale == standardize(x) @ w' + c'.

    g, b (d,) are a LayerNorm's gain and bias, w (d, e) and c (e,) the linear layer after it:
    (s * g + b) @ w + c = s @ (g[:, None] * w) + (b @ w + c). Computed in float64 and rounded
    once to ``dtype``: one rounding per folded weight, as when the checkpoint is cast.
    """
    g, b, w, c = (np.asarray(a, dtype=np.float64) for a in (g, b, w, c))
    return (g[:, None] * w * scale).astype(dtype), ((b @ w + c) * scale).astype(dtype)


def load_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a NumPy array. bfloat16 tensors, which NumPy
    has no type for, come back as float32 (exactly: bfloat16 is float32's upper half).

    A file that is not a complete safetensors file (empty, truncated, a damaged header) is
    refused with a ValueError naming it.
    """
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as e:  # an optional extra
        raise ImportError("loading GPT-2 weights needs safetensors: pip install safetensors, "
                          "or in a clone of npdecode: python -m pip install '.[hf]'") from e

    def damaged(problem: str) -> ValueError:
        return ValueError(f"{file} is not a valid safetensors file: {problem}; save the model "
                          f"again (save_pretrained) or download the file again")

    with open(file, "rb") as f:  # the header: 8 bytes of length, then JSON
        size = f.read(8)
        if len(size) < 8:
            raise damaged(f"{len(size)} bytes long, shorter than the 8-byte header length")
        length = int.from_bytes(size, "little")
        text = f.read(length)
        if len(text) < length:
            raise damaged(f"the header should be {length} bytes but the file ends after "
                          f"{len(text)} of them (truncated)")
        try:
            header = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise damaged(f"its header is not JSON ({err})") from None
        if not isinstance(header, dict):
            raise damaged("its header is not a JSON object")
        data_start = f.tell()
        out = {}
        try:
            with safe_open(str(file), framework="numpy") as st:
                for name in st.keys():
                    info = header[name]
                    if info["dtype"] not in _SAFETENSORS_DTYPES:  # fp8 and the like
                        raise ValueError(
                            f"{file}: tensor {name!r} is stored as {info['dtype']}, which "
                            f"NumPy cannot hold; save the checkpoint in float32, float16 or "
                            f"bfloat16")
                    if info["dtype"] != "BF16":
                        out[name] = st.get_tensor(name)
                        continue
                    begin, end = info["data_offsets"]
                    f.seek(data_start + begin)
                    half = np.frombuffer(f.read(end - begin), dtype="<u2")
                    out[name] = (half.astype(np.uint32) << 16).view(np.float32).reshape(
                        info["shape"])
        except SafetensorError as err:  # e.g. tensor data cut short, bad offsets or dtypes
            raise damaged(str(err)) from None
    return out


# safetensors dtypes NumPy can hold (the integer ones only in buffers GPT2 does not read)
_SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "BOOL", "I8", "U8", "I16", "U16", "I32",
                       "U32", "I64", "U64"}


def _tensor(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...],
            dtype=None) -> np.ndarray:
    """weights[name], which must exist with ``shape`` (as the config implies), hold finite
    floating-point numbers, and come back in ``dtype``."""
    if name not in weights:
        raise ValueError(f"checkpoint has no tensor {name!r}")
    w = np.asarray(weights[name])
    if w.shape != shape:
        raise ValueError(f"checkpoint tensor {name!r} has shape {w.shape}; the config implies "
                         f"{shape}: config.json and model.safetensors disagree")
    return checked_weights(f"checkpoint tensor {name!r}", w, dtype)


def _weights_file(path: Path) -> Path:
    """``path/model.safetensors``, or a ValueError naming the formats found instead."""
    file = path / "model.safetensors"
    if file.is_file():
        return file
    others = [name for name in ("model.safetensors.index.json", "pytorch_model.bin",
                                "pytorch_model.bin.index.json", "tf_model.h5",
                                "flax_model.msgpack") if (path / name).exists()]
    found = (f"it holds {', '.join(others)}, which GPT2 does not read"
             if others else "it holds no weights file")
    raise ValueError(
        f"{path} has no model.safetensors: {found}. GPT2.from_pretrained reads one unsharded "
        f"model.safetensors only (not sharded checkpoints or pytorch_model.bin); convert with "
        f"transformers: GPT2LMHeadModel.from_pretrained(path).save_pretrained(out, "
        f"max_shard_size='100GB'), which writes one model.safetensors (transformers before "
        f"4.35 also needs safe_serialization=True)")


class GPT2:
    """GPT-2 language model over NumPy arrays.

    ``weights`` maps HuggingFace parameter names without the ``transformer.`` prefix
    (``wte.weight``, ``h.0.attn.c_attn.weight``, ..., ``ln_f.bias``, optionally
    ``lm_head.weight``) to arrays.
    """

    def __init__(self, config: GPT2Config, weights: Mapping[str, np.ndarray], dtype=np.float32):
        c = config  # its fields were checked by GPT2Config
        supported = ACTIVATIONS.keys() | SCALED_ACTIVATIONS.keys()
        if c.activation_function not in supported:
            raise ValueError(f"activation_function {c.activation_function!r} is not supported; "
                             f"choose one of {sorted(supported)}")
        self.config = c
        self.dtype = model_dtype(dtype)
        self.vocab_size = c.vocab_size
        self.max_context = c.n_positions  # learned positions: nothing beyond them exists
        self.head_dim = c.n_embd // c.n_head
        # The MLP computes act(x) as r * f(s * x): s and r are folded into its weights.
        name = c.activation_function
        self._act, self._act_in, self._act_out = (SCALED_ACTIVATIONS[name]
                                                  if name in SCALED_ACTIVATIONS
                                                  else (ACTIVATIONS[name], 1.0, 1.0))
        self._eps = c.layer_norm_epsilon
        self._avg = np.full(c.n_embd, 1.0 / c.n_embd, dtype=self.dtype)  # [d] for row means

        blocks = sorted({int(k.split(".")[1]) for k in weights
                         if k.startswith("h.") and k.split(".")[1].isdigit()})
        if blocks != list(range(c.n_layer)):
            held = f"blocks h.{', h.'.join(map(str, blocks))}" if blocks else "no blocks"
            raise ValueError(f"the config's n_layer={c.n_layer} needs blocks h.0 to "
                             f"h.{c.n_layer - 1}; the checkpoint has {held}: config.json and "
                             f"model.safetensors disagree")
        d, V = c.n_embd, c.vocab_size
        get = functools.partial(_tensor, weights, dtype=self.dtype)
        self.wte = get("wte.weight", (V, d))                      # [V, d]
        self.wpe = get("wpe.weight", (c.n_positions, d))          # [P, d]
        self.blocks = [self._block(weights, i) for i in range(c.n_layer)]
        self.ln_f = (get("ln_f.weight", (d,)), get("ln_f.bias", (d,)))  # [d], [d]
        if c.tie_word_embeddings or "lm_head.weight" not in weights:
            if not c.tie_word_embeddings:
                raise ValueError("config says the head is untied but lm_head.weight is missing")
            if "lm_head.weight" in weights and not np.array_equal(
                    get("lm_head.weight", (V, d)), self.wte):
                # Loaders disagree on which to use (transformers ties in some versions and
                # keeps the stored head in others): refuse rather than guess.
                raise ValueError("config.json ties the head to the embeddings "
                                 "(tie_word_embeddings) but the checkpoint's lm_head.weight "
                                 "differs from wte.weight: set tie_word_embeddings to false "
                                 "to use the stored head, or remove lm_head.weight")
            self.lm_head = self.wte.T                             # [d, V]
        else:
            self.lm_head = np.ascontiguousarray(get("lm_head.weight", (V, d)).T)  # [d, V]

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=np.float32) -> "GPT2":
        """Load ``path/config.json`` and ``path/model.safetensors`` (HuggingFace layout).

        Only an unsharded ``model.safetensors`` is read: a sharded checkpoint
        (``model.safetensors.index.json``) or PyTorch pickles (``pytorch_model.bin``) are
        refused with a ValueError saying how to convert them.
        """
        path = Path(path)
        model_dtype(dtype)  # refused before anything is read
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory; GPT2.from_pretrained needs a "
                             f"HuggingFace GPT-2 directory (config.json + model.safetensors)")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path} has no config.json; GPT2.from_pretrained needs a "
                             f"HuggingFace GPT-2 directory (config.json + model.safetensors)")
        try:
            settings = json.loads(config_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from None
        config = GPT2Config.from_dict(settings, source=str(config_file))
        file = _weights_file(path)
        raw = load_safetensors(file)
        weights = {k.removeprefix("transformer."): v for k, v in raw.items()}
        twice = sorted(k for k in raw if k.startswith("transformer.")
                       and k.removeprefix("transformer.") in raw)
        if twice:  # both "transformer.wte.weight" and "wte.weight": which one is meant?
            name = twice[0].removeprefix("transformer.")
            raise ValueError(f"{file} holds both {twice[0]!r} and {name!r}, which name the "
                             f"same weight; keep one of them")
        try:
            return cls(config, weights, dtype=dtype)
        except ValueError as err:  # a missing tensor, one of the wrong shape, ...
            raise ValueError(f"{file}: {err}") from None

    def _block(self, weights: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        """Block i's weights, with ln_1 folded into c_attn and ln_2 into c_fc.

        A LayerNorm's gain and bias are a per-column scale and shift of the next layer's
        input, so they can go into that layer's weights and bias once at load time, and each
        step only standardizes (see ``fold_layer_norm``). The activation's input and output
        scales (``SCALED_ACTIVATIONS``) go into c_fc and the MLP's c_proj the same way.
        """
        d = self.config.n_embd
        inner = self.config.n_inner or 4 * d

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            return _tensor(weights, f"h.{i}.{name}", shape)

        dt = self.dtype
        qkv_w, qkv_b = fold_layer_norm(get("ln_1.weight", (d,)), get("ln_1.bias", (d,)),
                                       get("attn.c_attn.weight", (d, 3 * d)),
                                       get("attn.c_attn.bias", (3 * d,)), dt)
        fc_w, fc_b = fold_layer_norm(get("ln_2.weight", (d,)), get("ln_2.bias", (d,)),
                                     get("mlp.c_fc.weight", (d, inner)),
                                     get("mlp.c_fc.bias", (inner,)), dt, scale=self._act_in)
        mlp_out_w = np.asarray(get("mlp.c_proj.weight", (inner, d)), dtype=np.float64)
        return {
            "qkv.w": qkv_w,                                               # [d, 3d] ln_1 folded
            "qkv.b": qkv_b,                                               # [3d]
            "attn_out.w": np.asarray(get("attn.c_proj.weight", (d, d)), dtype=dt),  # [d, d]
            "attn_out.b": np.asarray(get("attn.c_proj.bias", (d,)), dtype=dt),      # [d]
            "fc.w": fc_w,                                  # [d, 4d] ln_2 and act's s folded
            "fc.b": fc_b,                                                 # [4d]
            "mlp_out.w": (mlp_out_w * self._act_out).astype(dt),   # [4d, d] act's r folded
            "mlp_out.b": np.asarray(get("mlp.c_proj.bias", (d,)), dtype=dt),          # [d]
        }

    # -- pieces shared by both paths ------------------------------------------------------

    def _attn_scale(self, layer: int) -> float:
        s = 1.0 / math.sqrt(self.head_dim) if self.config.scale_attn_weights else 1.0
        if self.config.scale_attn_by_inverse_layer_idx:
            s /= layer + 1
        return s

    # Position-wise layers run on the rows flattened to one (n*t, d) matrix: NumPy multiplies
    # a stack (n, t, d) @ (d, e) matrix by matrix, which for decoding steps (t = 1) is n
    # vector products and several times slower than one (n*t, d) @ (d, e) product.

    def _qkv(self, blk: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x (n, t, d) -> q, k, v each (n, H, t, Dh)."""
        n, t, d = x.shape
        h = standardize(x.reshape(n * t, d), self._eps, avg=self._avg)  # [n*t, d]
        qkv = h @ blk["qkv.w"]                                          # [n*t, 3d]
        qkv += blk["qkv.b"]
        qkv = qkv.reshape(n, t, 3, self.config.n_head, self.head_dim)   # [n, t, 3, H, Dh]
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)                          # 3 x [n, H, t, Dh]
        return q, k, v

    def _finish_block(self, blk: dict, x: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Residual update of x (n, t, d) by attention output a (n, H, t, Dh), then the MLP."""
        n, t, d = x.shape
        a = a.transpose(0, 2, 1, 3).reshape(n * t, d)                   # [n*t, d]
        # Biases and residuals are added in place, into the fresh products.
        y = a @ blk["attn_out.w"]                                       # [n*t, d]
        y += blk["attn_out.b"]
        y += x.reshape(n * t, d)                                        # residual stream
        h = standardize(y, self._eps, avg=self._avg) @ blk["fc.w"]      # [n*t, 4d]
        h += blk["fc.b"]
        out = self._act(h) @ blk["mlp_out.w"]                           # [n*t, d]
        out += blk["mlp_out.b"]
        out += y
        return out.reshape(n, t, d)

    def _head(self, x: np.ndarray) -> np.ndarray:
        """x (..., d) -> logits (..., V)."""
        d = x.shape[-1]
        # ln_f stays unfolded: folding its gain into a tied head would need a (d, V) copy of
        # the embedding, and its bias would become a (V,) add on every row of logits.
        h = layer_norm(x.reshape(-1, d), *self.ln_f, self._eps, avg=self._avg)  # [rows, d]
        return (h @ self.lm_head).reshape(*x.shape[:-1], self.vocab_size)  # [..., V]

    def _embed(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        check_token_ids(ids, self.vocab_size)
        if pos.size and pos.max() >= self.max_context:
            raise ValueError(f"position {int(pos.max())} is beyond the model's context of "
                             f"{self.max_context} tokens")
        # take, not wte[ids]: the same gather without fancy indexing's setup, about half
        # the time for a decoding step's few rows.
        x = self.wte.take(ids, axis=0)                                  # [n, t, d]
        x += self.wpe.take(pos, axis=0)
        return x

    # -- the plain definition -------------------------------------------------------------

    def forward(self, token_ids: np.ndarray) -> np.ndarray:
        """token_ids (N, T) -> logits (N, V) of the last position (positions 0..T-1)."""
        ids = token_array(token_ids, forward=True)     # (the ids' range: in _embed)
        n, t = ids.shape
        x = self._embed(ids, np.broadcast_to(np.arange(t), (n, t)))    # [N, T, d]
        visible = causal_mask(t)                                        # [T, T]
        for i, blk in enumerate(self.blocks):
            q, k, v = self._qkv(blk, x)                                 # [N, H, T, Dh]
            a = dense_attention(q, k, v, visible, self._attn_scale(i))  # [N, H, T, Dh]
            x = self._finish_block(blk, x, a)                           # [N, T, d]
        return self._head(x[:, -1])                                     # [N, V]

    # -- the cached protocol --------------------------------------------------------------

    def new_cache(self, rows: int, slots: int) -> KVCache:
        """An empty cache for up to ``rows`` sequences of up to ``slots`` tokens."""
        c = self.config
        return KVCache(layers=c.n_layer, rows=rows, heads=c.n_head, slots=slots,
                       head_dim=self.head_dim, dtype=self.dtype)

    def prefill(self, prompts: Sequence[Sequence[int]], cache: KVCache) -> np.ndarray:
        """Write the prompts, left-padded, into cache rows 0..N-1; logits (N, V) of last tokens."""
        ids, lengths = left_pad(prompts)
        if lengths.max() > self.max_context:
            raise ValueError(f"a prompt of {int(lengths.max())} tokens exceeds the model's "
                             f"context of {self.max_context}")
        cache.begin(lengths, ids.shape[1])
        return self._head(self._through_cache(ids, cache)[:, -1])        # [N, V] last only

    def extend(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Append tokens (n, t) to cache rows 0..n-1; return their logits (n, t, V)."""
        tokens = token_array(tokens, "tokens")   # (the ids' range: in _embed)
        return self._head(self._through_cache(tokens, cache))           # [n, t, V]

    def _through_cache(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run int tokens (n, t) through the blocks with the cache; the final states (n, t, d)."""
        n, t = tokens.shape
        # Each row counts positions from its own first real token; padding slots sit before it
        # (negative positions), are never attended to, and just need a valid embedding row.
        pos = np.maximum(cache.positions(t, n), 0)                      # [n, t]
        x = self._embed(tokens, pos)                                    # [n, t, d]
        for i, blk in enumerate(self.blocks):
            q, k, v = self._qkv(blk, x)                                 # [n, H, t, Dh]
            cache.write(i, k, v)
            x = self._finish_block(blk, x, cache.attend(i, q, self._attn_scale(i)))
        cache.advance(t)
        return x                                                        # [n, t, d]
