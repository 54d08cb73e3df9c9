"""A preallocated key/value cache for batched incremental decoding.

Layout: ``k`` and ``v`` are ``(layers, rows, heads, stride, head_dim)`` (two halves of one
buffer ``kv``). Row ``r`` holds one sequence: slots ``start[r] .. end[r]-1`` are real tokens;
slots before ``start[r]`` are left padding (a batch of prompts of different lengths is written
left-padded so that every row's next token lands in the same slot) and are never attended to.

The buffer is allocated once, for all the ``slots`` the cache was made for. A large cache
(``_WHOLE_BYTES`` of keys and values or more) is laid out with only ``stride`` slots per
(row, head), those in use and a margin, and attention reads whole blocks: the keys and values
it needs then lie in one contiguous run of memory, which streams, where the filled part of
each of many longer blocks is read two to three times slower once the cache no longer stays
in the processor's caches from one step to the next. When the rows fill their blocks, the
stride grows by a quarter and the filled slots move up within the same buffer, a handful of
times per generation. A smaller cache keeps all its slots in every block from the start and
never moves: there the growth and the masked slots would cost more than they save.

The cache is passed to a model's ``prefill``/``extend`` explicitly and filled in place; it is
never hidden on the model. Beam search reorders it by beam parent with ``fork``: a beam takes
over its parent's row in place and only the extra children of a parent are copied, into rows
nobody kept, so the buffer is never reallocated and most rows never move. Each
slot remembers which write produced it (``origin``), so a copy starts where the two rows
first differ: beams of one prompt share their prompt and usually a long common history.
``reorder`` is the plain gather (row i becomes old row ``parents[i]``). Speculative decoding
rolls rows back after rejected tokens with ``truncate``.
"""

from __future__ import annotations

import numpy as np

from npdecode.attention.dense import dense_attention
from npdecode.attention.flash import FLASH_TILE, flash_attention_fwd
from npdecode.memory import check_fits


_COPY_BLOCK = 32  # at most this many rows per copy in ``fork``
_COPY_SLACK = 8   # slots a row may be copied beyond where it differs, to share a copy
_WHOLE_BYTES = 16 << 20  # keys and values from which blocks grow and are read whole
_GROWTH = 1.25    # a full block grows to at least this many times its slots


class KVCache:
    """Keys and values of ``rows`` sequences, up to ``slots`` positions each."""

    def __init__(self, *, layers: int, rows: int, heads: int, slots: int, head_dim: int,
                 dtype=np.float64):
        # Keys and values share one buffer, so that copying a row moves both in one call.
        size = 2 * layers * rows * heads * slots * head_dim
        check_fits(size * np.dtype(dtype).itemsize + rows * slots * 8,  # + origin, int64
                   f"max_new_tokens or the number of sequences (a KV cache of {rows:,} x "
                   f"{slots:,} positions)")
        self._buf = np.zeros(size, dtype=dtype)
        self._dims = (layers, rows, heads, head_dim)
        # Blocks grow with the rows, and are read whole, only in a large cache (see the module
        # docstring); a smaller one keeps all its slots in every block.
        self._whole = self._buf.nbytes >= _WHOLE_BYTES
        self.slots = slots
        self._lay_out(slots)
        # Per-row bookkeeping in one array, so that copying rows copies it in one call.
        self._rows = np.zeros((3, rows), dtype=np.int64)
        self.start = self._rows[0]  # [R] first real slot of each row
        self.end = self._rows[1]    # [R] one past the last filled slot
        self.group = self._rows[2]  # [R] the prompt (row of ``begin``) each row descends from
        self.n = 0                  # rows in use: 0 .. n-1
        # Which write produced each slot's keys and values (copies keep the id): two rows
        # whose ids agree on a slot hold the same numbers there, in every layer.
        self.origin = np.full((rows, slots), -1, dtype=np.int64)  # [R, S]
        self._writes = 0  # ids handed out so far
        self._changed()

    def _changed(self, bounds: bool = True) -> None:
        """Forget what was derived from ``start``/``end``/``n``; call after changing them.
        ``bounds=False`` keeps ``_bounds()``, for changes that leave it valid."""
        if bounds:
            self._lo = None      # at most min(start[:n]): no row reads a slot before it
            self._common = None  # the slot every row's next token goes to, if they all agree
        self._visible = None     # (key, (mask, negation)) of the last ``attend``, for all layers

    def _bounds(self) -> tuple[int, int | None]:
        """(a slot at or before the first slot any row reads, the common end of all rows or
        None if they differ)."""
        if self._lo is None:
            n = self.n
            self._lo = int(self.start[:n].min()) if n else 0
            e = int(self.end[0]) if n else 0
            self._common = e if n and (self.end[:n] == e).all() else None
        return self._lo, self._common

    @property
    def capacity(self) -> tuple[int, int]:
        """(rows, slots) this cache was allocated for."""
        return self.k.shape[1], self.slots

    def _lay_out(self, stride: int) -> None:
        """View the buffer as blocks of ``stride`` slots per (row, head)."""
        L, R, H, D = self._dims
        self.kv = self._buf[:2 * L * R * H * stride * D].reshape(2, L, R, H, stride, D)
        self.k = self.kv[0]  # [L, R, H, stride, Dh]
        self.v = self.kv[1]  # [L, R, H, stride, Dh]

    def _make_room(self, need: int) -> None:
        """Give every (row, head) block at least ``need`` slots; refuse more than ``slots``.

        The stride grows by a factor of _GROWTH at least, and every block moves up to its
        new place in the same buffer: blocks are moved from the last to the first, in runs
        whose new places start past their old ones, so nothing is overwritten before it
        is moved (the first few blocks, which overlap their own new places, move through
        a temporary copy). A generation moves its filled slots a few times in all.
        """
        if need > self.slots:
            raise ValueError(f"KV cache full: {self.slots} slots, need {need}")
        old = self.kv.shape[4]
        new = min(self.slots, max(need, int(old * _GROWTH)))
        a, b = old * self._dims[3], new * self._dims[3]    # elements per block, before/after
        hi = self._buf.size // (self.slots * self._dims[3])  # blocks: 2 * L * R * H
        while hi > 1:
            lo = -(-hi * old // new)  # the run lo..hi-1's new places start at or after hi * a
            if lo == hi:
                lo = 0
            self._buf[lo * b:hi * b].reshape(hi - lo, b)[:, :a] = (
                self._buf[lo * a:hi * a].reshape(hi - lo, a))
            hi = lo
        self._lay_out(new)

    def begin(self, lengths: np.ndarray, width: int) -> None:
        """Prepare rows 0..n-1 for a left-padded block of ``width`` tokens.

        ``lengths[r]`` real tokens go right-aligned into slots ``width - lengths[r] .. width-1``.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        n = len(lengths)
        rows, slots = self.capacity
        if n > rows or width > slots:
            raise ValueError(f"cache holds {rows} rows x {slots} slots; asked for {n} x {width}")
        self.n = n
        self.start[:n] = width - lengths
        self.end[:n] = 0
        self._lay_out(min(slots, max(width, int(width * _GROWTH))) if self._whole else slots)
        self.group[:n] = np.arange(n)
        self._changed()

    def positions(self, t: int, rows: int | None = None) -> np.ndarray:
        """Position ids (n, t) of the next ``t`` tokens of each row (0 = the row's first token).
        ``rows``, if given, is how many rows of tokens the caller has: it must be n."""
        if rows is not None:
            self._check_rows(rows)
        return self.end[: self.n, None] - self.start[: self.n, None] + np.arange(t)

    def _check_rows(self, rows: int) -> None:
        if rows != self.n:
            raise ValueError(f"{rows} rows of tokens for a cache holding {self.n} sequences: a "
                             f"model call takes one row per sequence in the cache (prefill sets "
                             f"them, fork or reorder changes them)")

    def write(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store ``k``, ``v`` of shape (n, H, t, Dh) at each row's next ``t`` slots."""
        n, _, t, _ = k.shape
        self._check_rows(n)
        if k.dtype != self._buf.dtype or v.dtype != self._buf.dtype:
            # Storing would round (or widen) every key and value: the cached logits would
            # no longer be the model's.
            got = k.dtype if k.dtype != self._buf.dtype else v.dtype
            raise ValueError(f"the KV cache holds {self._buf.dtype} but the model computes in "
                             f"{got}: make the cache with the model's new_cache")
        if n == 0:
            return
        _, e = self._bounds()
        if e is not None:  # the common case: every row is at the same slot
            if e + t > self.k.shape[3]:
                self._make_room(e + t)
            self.k[layer, :n, :, e:e + t] = k
            self.v[layer, :n, :, e:e + t] = v
            return
        end = self.end[:n]
        if int(end.max()) + t > self.k.shape[3]:
            self._make_room(int(end.max()) + t)
        rows = np.arange(n)[:, None]                # [n, 1]
        slots = end[:, None] + np.arange(t)         # [n, t]
        # Advanced indices split by a slice put their broadcast dims first: [n, t, H, Dh].
        self.k[layer, rows, :, slots] = k.transpose(0, 2, 1, 3)
        self.v[layer, rows, :, slots] = v.transpose(0, 2, 1, 3)

    def attend(self, layer: int, q: np.ndarray, scale: float) -> np.ndarray:
        """Causal attention of queries (n, H, t, Dh) for the ``t`` slots just written.

        Call after ``write`` for the same layer and before ``advance``. Query i of row r sits at
        slot end[r] + i and sees slots start[r] .. end[r] + i.

        Blocks of more than ``FLASH_TILE`` queries (a long prefill) go through tiled flash
        attention, which never builds the (t, slots) score matrix; shorter blocks (decode
        steps, speculative drafts) take the dense path below. Both give the same outputs for
        real queries up to float rounding. A padding query (no visible slot) gets a uniform
        average from the dense path and zeros from the flash path: finite either way, unused.
        """
        n, _, t, _ = q.shape
        if n == 0:  # no rows: nothing to attend to (and no maximum of their ends)
            return np.zeros(q.shape, dtype=q.dtype)
        lo, e = self._bounds()
        hi = int(self.end[:n].max()) + t if e is None else e + t
        # Flash attention aligns the queries to the end of the keys, so every row must be at
        # the same slot e: always true for a prefill (e = 0), not after a ragged truncate. Its
        # keys start at or before e even when every row is padded there (start > e), so that
        # all t queries have a key position; keys before start[r] are masked by key_start.
        if t > FLASH_TILE and q.dtype == self.k.dtype and e is not None:
            k_lo = min(lo, e)
            keys = self.k[layer, :n, :, k_lo:hi]    # [n, H, t + e - k_lo, Dh]
            vals = self.v[layer, :n, :, k_lo:hi]    # [n, H, t + e - k_lo, Dh]
            return flash_attention_fwd(q, keys, vals, FLASH_TILE, causal=True,
                                       key_start=self.start[:n] - k_lo, scale=scale)  # [n,H,t,Dh]
        stride = self.k.shape[3]
        if self._whole and 2 * (hi - lo) >= stride:
            # Whole blocks, read as one contiguous run, rather than slots lo..hi-1 of each
            # (see the module docstring), once those are at least half of every block. Slots
            # past a row's end hold zeros or keys and values an earlier write left there,
            # finite either way, and are masked: weight 0.
            lo, hi = 0, stride
        keys = self.k[layer, :n, :, lo:hi]          # [n, H, W, Dh]
        vals = self.v[layer, :n, :, lo:hi]          # [n, H, W, Dh]
        visible, hidden = self._visible_mask(n, t, lo, hi)
        return dense_attention(q, keys, vals, visible, scale, hidden)

    def _visible_mask(self, n: int, t: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 1, t, W) bool over slots lo..hi-1: which slots each of the ``t`` new queries
        of each row sees, and its negation. Built once per call shape and reused by every
        layer."""
        key = (n, t, lo, hi)
        if self._visible is None or self._visible[0] != key:
            slot = np.arange(lo, hi)                                        # [W]
            if t == 1 and self._common is not None:  # one query per row, at slot _common
                visible = slot >= self.start[:n, None]                      # [n, W]
                if hi > self._common + 1:  # whole blocks: the slots past it are empty
                    visible &= slot <= self._common
            else:
                qslot = self.end[:n, None] + np.arange(t)                   # [n, t]
                visible = ((slot >= self.start[:n, None, None])
                           & (slot <= qslot[:, :, None]))                   # [n, t, W]
            visible = visible.reshape(n, 1, t, hi - lo)
            self._visible = (key, (visible, ~visible))
        return self._visible[1]

    def advance(self, t: int) -> None:
        """Mark the ``t`` slots written by every layer as filled."""
        n = self.n
        ids = np.arange(self._writes, self._writes + n * t).reshape(n, t)  # [n, t] fresh ids
        self._writes += n * t
        _, e = self._bounds()
        if e is not None:
            self.origin[:n, e:e + t] = ids
        else:
            self.origin[np.arange(n)[:, None], self.end[:n, None] + np.arange(t)] = ids
        self.end[:n] += t
        self._changed(bounds=False)
        if self._common is not None:  # every row moved by t: a common end moves with them
            self._common += t

    def reorder(self, parents: np.ndarray) -> None:
        """Make row i a copy of old row ``parents[i]`` (rows may repeat, vanish, or grow);
        every parent must be a row in use, 0..n-1.

        Only the filled slot range is copied. ``fork`` does the same job for beam search
        with far fewer copies, by letting rows stay where they are.
        """
        parents = self._check_parents(parents, "reorder")
        m = len(parents)
        if m > self.k.shape[1]:
            raise ValueError(f"cache holds {self.k.shape[1]} rows; reorder asked for {m}")
        if m == self.n and (parents == np.arange(m)).all():
            return
        lo = int(self.start[: self.n].min()) if self.n else 0
        hi = int(self.end[: self.n].max()) if self.n else 0
        self.kv[:, :, :m, :, lo:hi] = self.kv[:, :, parents, :, lo:hi]
        self.origin[:m, lo:hi] = self.origin[parents, lo:hi]
        self._rows[:, :m] = self._rows[:, parents]
        self.n = m
        self._changed()

    def fork(self, perm: np.ndarray, parents: np.ndarray) -> np.ndarray:
        """Like ``reorder``, but copying only what must be copied; returns the new layout.

        ``perm[j]`` is the cache row now holding sequence j; sequence i of the next step
        continues sequence ``parents[i]``. The first child of a row takes the row over in
        place; only further children (and rows beyond the new row count) are copied, into
        rows nobody kept. Returns ``new_perm``: sequence i lives in cache row ``new_perm[i]``,
        a permutation of 0..len(parents)-1. Beam search keeps most beams' rows this way.
        """
        perm = np.asarray(perm, dtype=np.int64)
        if len(perm) != self.n:
            raise ValueError(f"fork got a perm of {len(perm)} rows for a cache holding {self.n} "
                             f"sequences: pass the perm the last fork returned")
        src = perm[self._check_parents(parents, "fork")]                       # [m]
        m = len(src)
        if m > self.k.shape[1]:
            raise ValueError(f"cache holds {self.k.shape[1]} rows; fork asked for {m}")
        pairing = _pair_few if m <= _FEW_ROWS else _pair_many
        need, holes = pairing(src, self.group)
        if m == self.n and not len(need):  # every sequence keeps its row
            return src
        new_perm = src.copy()
        if len(need):
            # Every source is a kept row (never a hole) or a row >= m (never written): the
            # copy cannot overwrite a row before it is read. Each copy starts at the first
            # slot where the two rows differ: beams share most of their history.
            from_rows = src[need]
            new_perm[need] = holes
            lo, e = self._bounds()
            hi = int(self.end[: self.n].max()) if e is None else e
            same = self.origin[holes, lo:hi] == self.origin[from_rows, lo:hi]   # [P, W]
            first_diff = (lo + np.where(same.all(axis=1), hi - lo, same.argmin(axis=1))
                          if hi > lo else np.full(len(holes), hi))              # [P]
            self._copy_rows(holes, from_rows, first_diff, hi)
            self.origin[holes, lo:hi] = self.origin[from_rows, lo:hi]  # equal before first_diff
            self._rows[:, holes] = self._rows[:, from_rows]  # start, end, group
        # Every new row copies an old one, so a common end stays common; the first slot read
        # moves up if the rows that started earliest are gone.
        _, e = self._bounds()
        self.n = m
        self._changed()
        self._lo, self._common = (int(self.start[:m].min()) if m else 0), e
        return new_perm

    def _check_parents(self, parents: np.ndarray, call: str) -> np.ndarray:
        """``parents`` as a 1-D int64 array of rows in use (0 .. n-1), else ValueError.
        NumPy indexing would wrap a negative parent and read a row past n unasked."""
        parents = np.asarray(parents)
        if parents.ndim != 1 or parents.dtype.kind not in "iu":
            if parents.ndim == 1 and not parents.size:  # [] is float64 for NumPy: no rows
                return parents.astype(np.int64)
            raise ValueError(f"{call} takes parents as a 1-D integer array, got "
                             f"{parents.dtype} of shape {parents.shape}")
        parents = parents.astype(np.int64, copy=False)
        if not parents.size:
            return parents
        # Seen as unsigned, a negative parent is huge: one max finds both kinds of bad parent.
        unsigned = parents.view(np.uint64)
        if parents.size <= _FEW_ROWS:  # plain Python is cheaper than a reduction here
            top = max(unsigned.tolist())
        else:
            top = int(unsigned.max())
        if top >= self.n:
            bad = int(parents[(parents < 0) | (parents >= self.n)][0])
            raise ValueError(f"{call} got parent {bad}, not one of the {self.n} rows in use: "
                             f"parents must be in 0..{self.n - 1}")
        return parents

    def _copy_rows(self, to: np.ndarray, frm: np.ndarray, first: np.ndarray, hi: int) -> None:
        """kv of row to[i] = kv of row frm[i] over slots first[i]..hi-1, for every i."""
        # One copy costs a fixed few microseconds, and most forked rows differ from their
        # source only in the last few slots. Rows are taken in order of first slot and copied
        # in blocks whose first slots lie within _COPY_SLACK of the block's lowest, each block
        # in one call from that lowest slot (a few slots copied twice cost less than a call).
        # Blocks index with slices of arrays (NumPy indexes with an array faster than with a
        # list); a lone row with an integer.
        order = np.argsort(first, kind="stable")
        to, frm, first = to[order], frm[order], first[order].tolist()
        i = 0
        while i < len(to) and first[i] < hi:
            d, j = first[i], i + 1
            while j < len(to) and j - i < _COPY_BLOCK and first[j] - d <= _COPY_SLACK:
                j += 1
            h, f = (int(to[i]), int(frm[i])) if j == i + 1 else (to[i:j], frm[i:j])
            self.kv[:, :, h, :, d:hi] = self.kv[:, :, f, :, d:hi]
            i = j

    def truncate(self, end: np.ndarray) -> None:
        """Roll rows back: row r keeps slots up to ``end[r]`` (at most its current end)."""
        end = np.asarray(end)
        if end.shape != (self.n,):
            raise ValueError(f"truncate takes one end per row in use ({self.n}), got shape "
                             f"{end.shape}")
        if end.dtype.kind not in "iu":
            raise ValueError(f"truncate takes integer ends, got {end.dtype}")
        end = end.astype(np.int64, copy=False)
        if (end > self.end[: self.n]).any() or (end < self.start[: self.n]).any():
            raise ValueError("truncate can only shorten rows, not below their first real slot")
        self.end[: self.n] = end
        self._changed()


# Up to this many sequences, ``fork`` pairs copies with plain Python: a few microseconds,
# where the array version's dozen calls cost more than the loop.
_FEW_ROWS = 64


def _pair_few(src: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_pair_many`` for few sequences."""
    m = len(src)
    rows = src.tolist()
    kept, need = set(), []
    for i, r in enumerate(rows):
        if r < m and r not in kept:
            kept.add(r)
        else:
            need.append(i)
    if not need:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    g = group.tolist()
    holes = sorted((r for r in range(m) if r not in kept), key=g.__getitem__)
    need.sort(key=lambda i: g[rows[i]])  # stable: by group, then sequence
    return np.array(need), np.array(holes)


def _pair_many(src: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which sequences need a copied row (``need``) and the row each gets (``holes``).

    Sequence i continues cache row ``src[i]``; rows 0..m-1 will hold the m sequences. The
    first sequence continuing a row below m keeps it; the others get the rows nobody kept,
    paired within a prompt (``group``) where possible, since those share the prompt.
    """
    m = len(src)
    first_child = np.full(max(m, int(src.max()) + 1), m)     # each row's first child, or m
    np.minimum.at(first_child, src, np.arange(m))
    keep = (first_child[src] == np.arange(m)) & (src < m)     # rows taken over in place
    taken = np.zeros(m, dtype=bool)
    taken[src[keep]] = True
    need = np.flatnonzero(~keep)
    holes = np.flatnonzero(~taken)                            # |holes| == |need|
    need = need[np.argsort(group[src[need]], kind="stable")]
    holes = holes[np.argsort(group[holes], kind="stable")]
    return need, holes
