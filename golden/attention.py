"""Golden model of the attention datapath, bit for bit: Q.K, softmax, local value pruning,
prob x V, and the per-query attention built from them.

Integers in, integers out, with the hardware's rounding (the formats are documented once, in
`spatten.config.AttentionConfig`). Every function takes whole rows (or a batch of rows) as numpy
int64 arrays; nothing here knows about beats or cycles.

The per-query path::

    dots = K[:n, :d] @ q[:d]                                  (qk)
    p, p_max = softmax(dots, score params)                    (softmax)
    kept = the k_v largest p, ties to the lowest index        (value_select; k_v = n keeps all)
    out = round(sum_kept p v / 2**16)  or  / sum_kept p       (pv, renormalised on request)

`score_params` turns the host's per-tensor scales into the three run-time registers of the
score scaling, so that the softmax sees the real scores q.k / sqrt(d).
`fixed_point_attention` wraps all of it as an attention function of the float MiniLM reference
(`golden/minilm.py`): quantize, run the integer path, dequantize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spatten.config import AttentionConfig

__all__ = [
    "AttentionError", "ScoreParams", "score_params", "check_params", "qk", "SoftmaxResult",
    "softmax", "value_select", "PvResult", "pv", "QueryResult", "attention_query",
    "AttentionResult", "attention", "fixed_point_attention",
]

LOG2E = 1.4426950408889634


class AttentionError(ValueError):
    """Bad input to the attention datapath: the message says what was wrong."""


# --------------------------------------------------------------------------------------------
# Score scaling: y = t * q_scale * k_scale * log2(e) / sqrt(d), in units of 2**-y_frac_bits
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreParams:
    """The run-time registers of the score scaling (see `AttentionConfig`):
    y = min(((min(t >> shift, 2**t_bits - 1)) * scale + half) >> post_shift, y_max)."""

    shift: int
    scale: int
    post_shift: int


def score_params(cfg: AttentionConfig, q_scale: float, k_scale: float, d: int) -> ScoreParams:
    """Registers that make y (U y_int.y_frac) equal t * q_scale * k_scale * log2(e) / sqrt(d).

    ``shift`` is chosen so that the saturated ``t >> shift`` (t_bits wide) still reaches y_max
    (beyond it every probability is 0 anyway) with as many bits as possible; ``scale`` is the
    remaining factor as a mantissa with its top bit set, ``post_shift`` its exponent."""
    for name, value in (("q_scale", q_scale), ("k_scale", k_scale)):
        if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)
                and value > 0):
            raise AttentionError(f"{name} must be a positive finite number, not {value!r}")
    if d not in cfg.head_dims:
        raise AttentionError(f"head dimension d = {d} is not one of {cfg.head_dims}")
    # y LSBs per t LSB
    c = float(q_scale) * float(k_scale) * LOG2E / math.sqrt(d) * (1 << cfg.y_frac_bits)
    # (2**t_bits - 1) * 2**shift * c must reach y_max: shift = ceil(log2(y_max / (2**t_bits c)))
    shift = max(0, math.ceil(math.log2((cfg.y_max + 1) / ((1 << cfg.t_bits) * c))))
    shift = min(shift, cfg.dot_width)
    c_eff = c * (1 << shift)
    post_shift = cfg.scale_bits - 1 - math.floor(math.log2(c_eff))
    scale = round(c_eff * 2.0 ** post_shift)
    if scale >= 1 << cfg.scale_bits:
        post_shift -= 1
        scale = round(c_eff * 2.0 ** post_shift)
    if post_shift < 0:
        raise AttentionError(
            f"score scale q_scale * k_scale = {q_scale * k_scale:.3g} is too large: one unit of "
            f"q.k would move the exponent by more than 2**{cfg.scale_bits - cfg.y_frac_bits}")
    if post_shift > cfg.post_shift_max:
        raise AttentionError(
            f"score scale q_scale * k_scale = {q_scale * k_scale:.3g} is too small for a "
            f"{cfg.dot_width}-bit dot product: every score would be equal")
    return ScoreParams(shift, scale, post_shift)


def check_params(cfg: AttentionConfig, params: ScoreParams) -> None:
    if not 0 <= params.shift <= cfg.dot_width:
        raise AttentionError(f"shift {params.shift} is out of range 0..{cfg.dot_width}")
    if not 0 <= params.scale < 1 << cfg.scale_bits:
        raise AttentionError(f"scale {params.scale} does not fit {cfg.scale_bits} unsigned bits")
    if not 0 <= params.post_shift <= cfg.post_shift_max:
        raise AttentionError(f"post_shift {params.post_shift} is out of range "
                             f"0..{cfg.post_shift_max}")


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------

def _check_ints(name: str, arr, lo: int, hi: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise AttentionError(f"{name} must hold integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.size and (a.min() < lo or a.max() > hi):
        raise AttentionError(f"{name} holds values outside [{lo}, {hi}]")
    return a


def check_qkv(cfg: AttentionConfig, q, k, v):
    """Validate shapes and ranges; return int64 arrays q (m, d), k (n, d), v (n, d)."""
    q = _check_ints("q", q, cfg.data_min, cfg.data_max)
    k = _check_ints("k", k, cfg.data_min, cfg.data_max)
    v = _check_ints("v", v, cfg.data_min, cfg.data_max)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise AttentionError(f"q, k, v must be 2-D, got shapes {q.shape}, {k.shape}, {v.shape}")
    d = q.shape[1]
    if k.shape[1] != d or v.shape[1] != d:
        raise AttentionError(f"q, k, v must share the head dimension, got {q.shape[1]}, "
                             f"{k.shape[1]}, {v.shape[1]}")
    if d not in cfg.head_dims:
        raise AttentionError(f"head dimension d = {d} is not one of {cfg.head_dims}")
    n = k.shape[0]
    if v.shape[0] != n:
        raise AttentionError(f"k has {n} rows but v has {v.shape[0]}")
    if n == 0:
        raise AttentionError("n = 0: there are no keys")
    if n > cfg.capacity:
        raise AttentionError(f"n = {n} keys is over the capacity {cfg.capacity}")
    if q.shape[0] == 0:
        raise AttentionError("there are no queries")
    return q, k, v


def qk(cfg: AttentionConfig, q, k) -> np.ndarray:
    """Dot products: q (m, d) or (d,), k (n, d) -> (m, n) or (n,) int64, exact (dot_width bits)."""
    q = np.asarray(q, dtype=np.int64)
    k = np.asarray(k, dtype=np.int64)
    return q @ k.T


@dataclass
class SoftmaxResult:
    """Every intermediate of the fixed-point softmax, per row (arrays have a leading row axis
    when the input did)."""

    max: np.ndarray      # row maximum of the dots
    y: np.ndarray        # U y_int.y_frac, -log2 of the unnormalised probability
    e: np.ndarray        # U1.16, 2**-y
    esum: np.ndarray     # row sum of e
    norm: np.ndarray     # esum >> norm is in [2**16, 2**17)
    recip: np.ndarray    # round(2**33 / (esum >> norm)), capped at 2**17 - 1
    p: np.ndarray        # U0.16 probabilities
    p_max: np.ndarray    # the row's largest probability (that of the row maximum)


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (exact for values below 2**53)."""
    x = np.asarray(x, dtype=np.int64)
    out = np.zeros(x.shape, dtype=np.int64)
    nz = x > 0
    out[nz] = np.floor(np.log2(x[nz].astype(np.float64))).astype(np.int64) + 1
    # correct float rounding at exact powers of two and just below them
    over = nz & ((np.int64(1) << np.maximum(out - 1, 0)) > x)
    out[over] -= 1
    under = nz & ((np.int64(1) << np.minimum(out, 62)) <= x)
    out[under] += 1
    return out


def exp2_neg(cfg: AttentionConfig, y) -> np.ndarray:
    """e = 2**-y in U1.16 from y in U y_int.y_frac: table of the fraction, then a rounding
    right shift by the integer part (0 from an integer part of 18 up)."""
    y = np.asarray(y, dtype=np.int64)
    table = np.array(cfg.exp_table(), dtype=np.int64)
    yi = y >> cfg.y_frac_bits
    yf = y & ((1 << cfg.y_frac_bits) - 1)
    half = (np.int64(1) << yi) >> 1
    return (table[yf] + half) >> yi


def scores_to_y(cfg: AttentionConfig, dots, params: ScoreParams) -> tuple:
    """(row max, y) from dots (..., n)."""
    dots = np.asarray(dots, dtype=np.int64)
    mx = dots.max(axis=-1, keepdims=True)
    t = mx - dots
    ts = np.minimum(t >> params.shift, (1 << cfg.t_bits) - 1)
    half = (1 << params.post_shift) >> 1
    y = np.minimum((ts * params.scale + half) >> params.post_shift, cfg.y_max)
    return mx[..., 0], y


def softmax(cfg: AttentionConfig, dots, params: ScoreParams) -> SoftmaxResult:
    """The fixed-point softmax of dots (n,) or (m, n); see `AttentionConfig` for the formats."""
    check_params(cfg, params)
    dots = np.asarray(dots, dtype=np.int64)
    if dots.shape[-1] == 0:
        raise AttentionError("softmax of an empty row")
    mx, y = scores_to_y(cfg, dots, params)
    e = exp2_neg(cfg, y)
    esum = e.sum(axis=-1)
    norm = _bit_length(esum) - (cfg.prob_bits + 1)
    m = esum >> norm
    recip = np.minimum(((np.int64(1) << (2 * cfg.prob_bits + 2)) // m + 1) >> 1,
                       (1 << (cfg.prob_bits + 1)) - 1)
    pmax_val = (1 << cfg.prob_bits) - 1

    def normalise(ev):
        sh = (norm + cfg.prob_bits + 1)[..., None] if ev.ndim == esum.ndim + 1 else \
            norm + cfg.prob_bits + 1
        r = recip[..., None] if ev.ndim == esum.ndim + 1 else recip
        return np.minimum((ev * r + (np.int64(1) << (sh - 1))) >> sh, pmax_val)

    p = normalise(e)
    p_max = normalise(np.full(esum.shape, 1 << cfg.prob_bits, dtype=np.int64))
    return SoftmaxResult(mx, y, e, esum, norm, recip, p, p_max)


def value_select(cfg: AttentionConfig, p, k_v: int | None) -> np.ndarray:
    """Indices (ascending) of the ``k_v`` largest probabilities of one row, ties to the lowest
    index (what `hw.attention.value_select.ValueSelect` keeps); ``k_v = None`` or ``k_v >= n`` keeps
    every key."""
    p = np.asarray(p, dtype=np.int64)
    n = p.shape[0]
    if k_v is None or k_v >= n:
        return np.arange(n, dtype=np.int64)
    if k_v < 1:
        raise AttentionError(f"k_v = {k_v}: value pruning must keep at least one key")
    order = np.lexsort((np.arange(n), -p))          # largest first, then the lowest index
    return np.sort(order[:int(k_v)])


@dataclass
class PvResult:
    acc: np.ndarray      # (d,) exact sum of p * v
    psum: int            # sum of the kept probabilities
    recip: int           # renormalisation reciprocal (0 when not renormalising)
    out: np.ndarray      # (d,) output row, out_width signed (v's scale / 2**out_frac_bits)


def pv(cfg: AttentionConfig, p_kept, v_kept, renorm: bool = False) -> PvResult:
    """prob x V over the kept keys: p_kept (k,) U0.16, v_kept (k, d) -> one output row in
    S(data_width + out_frac_bits), v's scale times 2**-out_frac_bits.

    With F = out_frac_bits and pb = prob_bits (16): without renormalisation
    out = (acc + 2**(pb-F-1)) >> (pb - F). With it, out = round(acc * 2**F / psum) through
    m2 = psum normalised to [2**15, 2**16) and recip = round(2**31 / m2):
    out = (acc * recip + 2**(14 - F + L)) >> (15 - F + L) with L = bit_length(psum); psum = 0
    gives 0. Rounding is half up (towards +inf); the result saturates to out_width bits."""
    p_kept = np.asarray(p_kept, dtype=np.int64)
    v_kept = np.asarray(v_kept, dtype=np.int64)
    acc = p_kept @ v_kept if p_kept.size else np.zeros(v_kept.shape[1], dtype=np.int64)
    psum = int(p_kept.sum())
    pb, F = cfg.prob_bits, cfg.out_frac_bits
    recip = 0
    if not renorm:
        sh = pb - F
        out = (acc + (1 << (sh - 1))) >> sh
    elif psum == 0:
        out = np.zeros_like(acc)
    else:
        bl = psum.bit_length()
        m2 = psum << (pb - bl) if bl <= pb else psum >> (bl - pb)
        recip = ((1 << (2 * pb)) // m2 + 1) >> 1
        sh = pb - 1 - F + bl          # >= 8 since bl >= 1 and F <= 8
        # |acc| < 2**37 and recip <= 2**16: the product fits int64
        out = (acc * np.int64(recip) + (np.int64(1) << (sh - 1))) >> sh
    out = np.clip(out, cfg.out_min, cfg.out_max)
    return PvResult(acc, psum, recip, out)


# --------------------------------------------------------------------------------------------
# The per-query pipeline
# --------------------------------------------------------------------------------------------

@dataclass
class QueryResult:
    dots: np.ndarray
    softmax: SoftmaxResult
    kept: np.ndarray
    pv: PvResult

    @property
    def out(self) -> np.ndarray:
        return self.pv.out

    @property
    def p(self) -> np.ndarray:
        return self.softmax.p

    @property
    def p_max(self) -> int:
        return int(self.softmax.p_max)


def attention_query(cfg: AttentionConfig, q, k, v, params: ScoreParams,
                    k_v: int | None = None, renorm: bool = False) -> QueryResult:
    """One query row q (d,) against keys k (n, d) and values v (n, d)."""
    q, k, v = check_qkv(cfg, q, k, v)
    dots = qk(cfg, q[0], k)
    sm = softmax(cfg, dots, params)
    kept = value_select(cfg, sm.p, k_v)
    res = pv(cfg, sm.p[kept], v[kept], renorm)
    return QueryResult(dots, sm, kept, res)


@dataclass
class AttentionResult:
    out: np.ndarray       # (m, d)
    p: np.ndarray         # (m, n) probabilities (before value pruning)
    p_max: np.ndarray     # (m,)
    kept: list            # per query, the kept key indices
    dots: np.ndarray      # (m, n)


def attention(cfg: AttentionConfig, q, k, v, params: ScoreParams, k_v: int | None = None,
              renorm: bool = False) -> AttentionResult:
    """Every query of q (m, d) against k, v (n, d): the same integers the query pipeline emits."""
    q, k, v = check_qkv(cfg, q, k, v)
    if k_v is not None and not (isinstance(k_v, (int, np.integer)) and k_v >= 1):
        raise AttentionError(f"k_v must be a positive integer, not {k_v!r}")
    dots = qk(cfg, q, k)
    sm = softmax(cfg, dots, params)
    n = k.shape[0]
    outs, kept = [], []
    for i in range(q.shape[0]):
        sel = value_select(cfg, sm.p[i], k_v)
        kept.append(sel)
        if k_v is None or k_v >= n:
            res = pv(cfg, sm.p[i], v, renorm)
        else:
            res = pv(cfg, sm.p[i, sel], v[sel], renorm)
        outs.append(res.out)
    return AttentionResult(np.array(outs, dtype=np.int64), sm.p, sm.p_max, kept, dots)


def fixed_point_attention(cfg: AttentionConfig, kv_keep: float | None = None,
                          renorm: bool = False, stats: list | None = None):
    """An attention function for `golden.minilm.MiniLM.forward`: quantize q, k, v per tensor
    to data_width bits, run `attention`, dequantize the output with v's scale.

    ``kv_keep`` is the fraction of each row's keys kept by value pruning (``None``: no pruning;
    k_v = max(1, round(kv_keep * n))). With ``stats`` (a list), each call appends a dict of its
    layer, head, float and fixed-point probabilities for accuracy measurements."""
    from .quant import quantize

    def attend(q, k, v, layer, head):
        n, d = k.shape
        qi, qs = quantize(q, cfg.data_width)
        ki, ks = quantize(k, cfg.data_width)
        vi, vs = quantize(v, cfg.data_width)
        params = score_params(cfg, qs, ks, d)
        k_v = None if kv_keep is None else max(1, int(round(kv_keep * n)))
        res = attention(cfg, qi, ki, vi, params, k_v, renorm)
        out = (res.out * (vs / (1 << cfg.out_frac_bits))).astype(np.float32)
        if stats is not None:
            stats.append({"layer": layer, "head": head, "p": res.p, "out": out,
                          "q": qi, "k": ki, "v": vi, "scales": (qs, ks, vs), "params": params,
                          "k_v": k_v})
        return out

    return attend
