"""Training CharGPT on the bundled names, in NumPy, with a hand-written backward pass.

The pieces, each small and testable on its own:

- ``load_names`` / ``split_names``: the corpus and a seeded 90/10 split of the names.
- ``make_examples``: each name becomes "." + name + "." and is cut into context-length windows
  of (input, target) pairs; targets past a name's end are -1 (ignored).
- ``loss_and_grads``: mean next-token cross-entropy of a batch and its gradient for every
  parameter (the backward pass of ``CharGPT.logits_all``, written out by hand).
- ``Adam``: Adam with a learning rate that decays linearly after a short warm-up.
- ``train``: the seeded minibatch loop; ``evaluate`` and ``bigram_loss`` report nats/char.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

import numpy as np

from npdecode.models.chargpt import EPS, CharGPT, CharGPTConfig, init_params
from npdecode.models.chars import EOS, VOCAB_SIZE, encode
from npdecode.models.protocol import check_finite, check_int, model_dtype
from npdecode.numerics import MASK

IGNORE = -1  # target id of a padding position: contributes no loss and no gradient

Params = dict[str, np.ndarray]


# -- data ---------------------------------------------------------------------------------

def load_names() -> list[str]:
    """The bundled corpus: 32,033 lowercase first names (see ``npdecode/data/README.md``)."""
    text = resources.files("npdecode").joinpath("data", "names.txt").read_text("ascii")
    return [line for line in text.split("\n") if line]


def split_names(names: Sequence[str], *, seed: int = 0,
                val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """A seeded shuffle of the names cut into (train, validation)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = int(round(len(names) * val_fraction))
    val = [names[i] for i in order[:n_val]]
    train = [names[i] for i in order[n_val:]]
    return train, val


def make_examples(names: Sequence[str], context: int) -> tuple[np.ndarray, np.ndarray]:
    """Names -> (inputs (M, context), targets (M, context)), one row per window.

    The sequence of a name is "." + name + "." = [0, c1, .., cL, 0]; position i's target is
    token i+1, so a name gives L+1 predictions (the last one is the end of the name). They are
    cut into windows of ``context`` predictions; each window's model input starts at its first
    input token (a name longer than the context loses the history before its window). Unused
    positions have input 0 and target ``IGNORE``.
    """
    rows_x, rows_y = [], []
    for name in names:
        seq = encode(name) + [EOS]                       # L + 2 tokens
        for s in range(0, len(seq) - 1, context):
            x = seq[s:s + context]
            y = seq[s + 1:s + context + 1]
            x = x[:len(y)]
            rows_x.append(x + [EOS] * (context - len(x)))
            rows_y.append(y + [IGNORE] * (context - len(y)))
    return np.array(rows_x, dtype=np.int64), np.array(rows_y, dtype=np.int64)


def trim(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop trailing columns where every target is ignored (causal: nothing else changes)."""
    used = np.flatnonzero((y != IGNORE).any(axis=0))
    t = int(used[-1]) + 1 if used.size else 1
    return x[:, :t], y[:, :t]


# -- forward and backward -------------------------------------------------------------------

def _rmsnorm_fwd(x: np.ndarray, g: np.ndarray):
    r = 1 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + EPS)     # [..., 1]
    return x * r * g, (x, r, g)


def _rmsnorm_bwd(dy: np.ndarray, saved) -> tuple[np.ndarray, np.ndarray]:
    """d/dx and d/dg of y = x * r * g with r = (mean(x^2) + eps)^-1/2."""
    x, r, g = saved
    dg = (dy * x * r).reshape(-1, x.shape[-1]).sum(axis=0)          # [d]
    dxh = dy * g                                                      # [..., d]
    # dr/dx_j = -r^3 x_j / d, hence the mean term.
    dx = r * dxh - r ** 3 * x * (dxh * x).mean(axis=-1, keepdims=True)
    return dx, dg


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, int, np.ndarray]:
    """Summed cross-entropy of logits (B, T, V) at targets y (B, T); also count and softmax."""
    valid = y != IGNORE                                              # [B, T]
    z = logits - logits.max(axis=-1, keepdims=True)                  # [B, T, V]
    ez = np.exp(z)
    s = ez.sum(axis=-1, keepdims=True)                               # [B, T, 1]
    logp_y = np.take_along_axis(z, np.where(valid, y, 0)[..., None], axis=-1)[..., 0] \
        - np.log(s[..., 0])                                          # [B, T]
    total = -float(logp_y[valid].astype(np.float64).sum())
    return total, int(valid.sum()), ez / s


def loss_and_grads(params: Params, cfg: CharGPTConfig, x: np.ndarray, y: np.ndarray, *,
                   need_grads: bool = True) -> tuple[float, Params | None]:
    """Mean next-token cross-entropy of inputs x (B, T) at targets y (B, T), and its gradient.

    Targets equal to ``IGNORE`` are left out of the mean. Computes the same logits as
    ``CharGPT.logits_all`` (positions 0..T-1) in the dtype of ``params``.
    """
    B, T = x.shape
    H, Dh = cfg.n_heads, cfg.head_dim
    scale = float(1 / np.sqrt(Dh))  # a Python float: an np.float64 would upcast float32
    future = np.triu(np.ones((T, T), dtype=bool), k=1)               # [T, T]
    p = params
    h = p["wte"][x] + p["wpe"][:T]                                   # [B, T, d]
    saved = []
    for i in range(cfg.n_layers):
        n1, s_n1 = _rmsnorm_fwd(h, p[f"h{i}.attn_norm"])             # [B, T, d]
        qkv = (n1 @ p[f"h{i}.Wqkv"]).reshape(B, T, 3, H, Dh)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)                       # [B, H, T, Dh] each
        sc = np.where(future, MASK, q @ k.transpose(0, 1, 3, 2) * scale)  # [B, H, T, T]
        sc -= sc.max(axis=-1, keepdims=True)
        att = np.exp(sc)
        att /= att.sum(axis=-1, keepdims=True)
        a = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)        # [B, T, d]
        h = h + a @ p[f"h{i}.Wo"]
        n2, s_n2 = _rmsnorm_fwd(h, p[f"h{i}.mlp_norm"])              # [B, T, d]
        u = n2 @ p[f"h{i}.W1"]                                        # [B, T, F]
        r = np.maximum(u, 0)
        h = h + r @ p[f"h{i}.W2"]
        saved.append((s_n1, n1, q, k, v, att, a, s_n2, n2, u, r))
    nf, s_nf = _rmsnorm_fwd(h, p["norm_f"])                           # [B, T, d]
    logits = nf @ p["lm_head"] + p["lm_bias"]                         # [B, T, V]
    total, count, probs = _cross_entropy(logits, y)
    count = max(count, 1)
    loss = total / count
    if not need_grads:
        return loss, None

    g: Params = {}
    valid = (y != IGNORE)
    onehot = np.zeros_like(probs)
    np.put_along_axis(onehot, np.where(valid, y, 0)[..., None], 1, axis=-1)
    weight = (valid / count).astype(probs.dtype)                     # [B, T] 1/count or 0
    dlogits = (probs - onehot) * weight[..., None]                   # [B, T, V]
    d2 = dlogits.reshape(-1, dlogits.shape[-1])                       # [B*T, V]
    g["lm_head"] = nf.reshape(-1, nf.shape[-1]).T @ d2               # [d, V]
    g["lm_bias"] = d2.sum(axis=0)
    dh, g["norm_f"] = _rmsnorm_bwd(dlogits @ p["lm_head"].T, s_nf)   # [B, T, d]
    for i in reversed(range(cfg.n_layers)):
        s_n1, n1, q, k, v, att, a, s_n2, n2, u, r = saved[i]
        # MLP: h += relu(n2 W1) W2
        g[f"h{i}.W2"] = _flat(r).T @ _flat(dh)                       # [F, d]
        du = (dh @ p[f"h{i}.W2"].T) * (u > 0)                         # [B, T, F]
        g[f"h{i}.W1"] = _flat(n2).T @ _flat(du)                      # [d, F]
        dn2, g[f"h{i}.mlp_norm"] = _rmsnorm_bwd(du @ p[f"h{i}.W1"].T, s_n2)
        dh = dh + dn2
        # Attention: h += concat_heads(softmax(q k^T * scale) v) Wo
        g[f"h{i}.Wo"] = _flat(a).T @ _flat(dh)                       # [d, d]
        da = (dh @ p[f"h{i}.Wo"].T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # [B, H, T, Dh]
        datt = da @ v.transpose(0, 1, 3, 2)                           # [B, H, T, T]
        dv = att.transpose(0, 1, 3, 2) @ da                           # [B, H, T, Dh]
        # Softmax backward; masked entries have att = 0 and so get no gradient.
        dsc = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * scale
        dq = dsc @ k                                                  # [B, H, T, Dh]
        dk = dsc.transpose(0, 1, 3, 2) @ q                            # [B, H, T, Dh]
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, -1)  # [B, T, 3d]
        g[f"h{i}.Wqkv"] = _flat(n1).T @ _flat(dqkv)                  # [d, 3d]
        dn1, g[f"h{i}.attn_norm"] = _rmsnorm_bwd(dqkv @ p[f"h{i}.Wqkv"].T, s_n1)
        dh = dh + dn1
    g["wpe"] = np.zeros_like(p["wpe"])
    g["wpe"][:T] = dh.sum(axis=0)
    # Scatter-add into the embedding rows as a one-hot matmul (much faster than np.add.at).
    onehot_x = np.eye(p["wte"].shape[0], dtype=dh.dtype)[x.reshape(-1)]  # [B*T, V]
    g["wte"] = onehot_x.T @ _flat(dh)                                # [V, d]
    return loss, g


def _flat(a: np.ndarray) -> np.ndarray:
    """(..., C) -> (rows, C)."""
    return a.reshape(-1, a.shape[-1])


# -- evaluation -----------------------------------------------------------------------------

def evaluate(model: CharGPT, names: Sequence[str], *, batch_size: int = 2048) -> float:
    """Mean next-token cross-entropy (nats/char) over every prediction of the given names."""
    if not len(names):
        raise ValueError("evaluate needs at least one name")
    x, y = make_examples(names, model.max_context)
    total, count = 0.0, 0
    for s in range(0, len(x), batch_size):
        xb, yb = trim(x[s:s + batch_size], y[s:s + batch_size])
        t, c, _ = _cross_entropy(model.logits_all(xb), yb)
        total, count = total + t, count + c
    return total / count


def bigram_loss(train_names: Sequence[str], val_names: Sequence[str], *,
                smoothing: float = 1.0) -> float:
    """Nats/char of a count-based bigram model (add-``smoothing``) fit on train, on validation.

    Scored on the same predictions as ``evaluate``: every next token of "." + name + ".".
    """
    counts = np.full((VOCAB_SIZE, VOCAB_SIZE), smoothing)             # [prev, next]
    for name in train_names:
        seq = encode(name) + [EOS]
        np.add.at(counts, (seq[:-1], seq[1:]), 1)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    total, count = 0.0, 0
    for name in val_names:
        seq = encode(name) + [EOS]
        total -= logp[seq[:-1], seq[1:]].sum()
        count += len(seq) - 1
    return float(total / count)


# -- optimisation ---------------------------------------------------------------------------

@dataclass
class Adam:
    """Adam (Kingma & Ba) with linear warm-up, then linear decay to ``lr * final_lr_frac``.

    ``weight_decay`` > 0 makes it AdamW (Loshchilov & Hutter): matrices and embeddings (every
    parameter with 2 or more axes) shrink by ``rate * weight_decay`` of themselves each step,
    outside the adaptive update; norm gains and biases are not decayed.
    """

    lr: float = 3e-3            # peak learning rate
    steps: int = 1000           # total steps (the decay reaches its end here)
    warmup: int = 100           # steps of linear warm-up from 0
    final_lr_frac: float = 0.05  # learning rate at the last step, as a fraction of the peak
    beta1: float = 0.9          # decay of the first-moment (mean) estimate
    beta2: float = 0.99         # decay of the second-moment estimate
    eps: float = 1e-8           # added to sqrt(v) against division by 0
    weight_decay: float = 0.0   # decoupled decay of matrices and embeddings (0: plain Adam)

    def __post_init__(self):
        self.t = 0
        self.m: Params = {}
        self.v: Params = {}

    def rate(self, t: int) -> float:
        """The learning rate at step t (1-based)."""
        if t <= self.warmup:
            return self.lr * t / max(self.warmup, 1)
        frac = (t - self.warmup) / max(self.steps - self.warmup, 1)
        return self.lr * (1 - (1 - self.final_lr_frac) * min(frac, 1.0))

    def step(self, params: Params, grads: Params) -> None:
        """Update ``params`` in place."""
        self.t += 1
        lr = self.rate(self.t)
        c1, c2 = 1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t
        for name, gr in grads.items():
            if name not in self.m:  # (setdefault would build its default every step)
                self.m[name], self.v[name] = np.zeros_like(gr), np.zeros_like(gr)
            m, v = self.m[name], self.v[name]
            m *= self.beta1
            m += (1 - self.beta1) * gr
            v *= self.beta2
            v += (1 - self.beta2) * gr * gr
            if self.weight_decay and params[name].ndim >= 2:
                params[name] *= 1 - lr * self.weight_decay
            params[name] -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


# -- the loop -------------------------------------------------------------------------------

def check_decay(lr: float, weight_decay: float) -> None:
    """AdamW scales every matrix by 1 - lr * weight_decay each step: at 1 or more that zeroes
    it or flips its sign, so such a pair is refused."""
    if lr * weight_decay >= 1:
        raise ValueError(f"lr * weight_decay = {lr * weight_decay:g} would scale the weights by "
                         f"{1 - lr * weight_decay:g} every step; keep it well below 1")


@dataclass(frozen=True)
class Recipe:
    """A model size and the training run that produced a shipped model."""

    config: CharGPTConfig  # the model's shape
    steps: int             # optimisation steps
    batch_size: int        # names (windows) per minibatch
    lr: float              # peak learning rate
    weight_decay: float = 0.0  # AdamW decay of matrices and embeddings


# The shipped models (``npdecode/weights``); ``npdecode train --model NAME`` reruns them.
RECIPES = {
    # 152k parameters overfit the 28.8k training names (validation 2.11 nats/char after
    # 20,000 plain Adam steps, train ~1.57): fewer steps and weight decay do better.
    "target": Recipe(CharGPTConfig(max_context=16, d_model=64, n_layers=3, n_heads=4, d_ff=256),
                     steps=8000, batch_size=64, lr=3e-3, weight_decay=0.3),
    "draft": Recipe(CharGPTConfig(max_context=16, d_model=32, n_layers=2, n_heads=4, d_ff=128),
                    steps=20000, batch_size=64, lr=3e-3),
}


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns."""

    model: CharGPT               # the trained model (float64)
    val_loss: float              # nats/char on the validation names
    train_losses: list[float]    # minibatch loss of every step


def train(config: CharGPTConfig, *, steps: int, batch_size: int = 64, lr: float = 3e-3,
          weight_decay: float = 0.0, seed: int = 0, split_seed: int = 0, dtype=np.float32,
          names: Sequence[str] | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a CharGPT from scratch on the training split of ``names`` (default: the corpus).

    ``seed`` draws the initial weights and the minibatches; ``split_seed`` the 90/10 split.
    ``weight_decay`` is AdamW's decoupled decay (see ``Adam``). ``dtype`` is the training
    precision (float32 is about twice as fast). ``on_step(step, loss)`` is called after every
    step (progress reporting).
    """
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if not check_finite("lr", lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not check_finite("weight_decay", weight_decay) >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    check_decay(lr, weight_decay)
    seed = check_int("seed", seed, minimum=0)
    split_seed = check_int("split_seed", split_seed, minimum=0)
    dtype = model_dtype(dtype)
    if names is None:
        names = load_names()
    elif isinstance(names, (str, bytes)):  # a str is a sequence of one-letter "names"
        raise ValueError("names must be a list of names, not one string")
    train_names, val_names = split_names(names, seed=split_seed)
    if not train_names or not val_names:
        raise ValueError(f"{len(names)} names leave an empty training or validation split "
                         f"(a tenth of them, rounded to even, validates); give at least "
                         f"6 names")
    x, y = make_examples(train_names, config.max_context)
    make_examples(val_names, config.max_context)  # a name that does not encode: now, not later
    rng = np.random.default_rng(seed)
    params = {k: v.astype(dtype) for k, v in init_params(config, rng).items()}
    opt = Adam(lr=lr, steps=steps, warmup=min(100, steps // 10), weight_decay=weight_decay)
    losses = []
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(x), size=batch_size)
        xb, yb = trim(x[idx], y[idx])
        loss, grads = loss_and_grads(params, config, xb, yb)
        opt.step(params, grads)
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss)
    model = CharGPT(config, params)
    return TrainResult(model=model, val_loss=evaluate(model, val_names), train_losses=losses)
