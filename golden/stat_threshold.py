"""Golden model of the statistical top-k threshold (`hw/topk/stat_threshold.py`), bit-exact.

The statistical mode of the top-k engine keeps every value ``v >= mean + z * sigma`` where ``z``
is the normal quantile that leaves a fraction ``k / n`` of a normal population above it; about
``k`` values survive when the data are near normal. From ``n``, ``k`` and the two running sums
``S1 = sum(v)`` and ``S2 = sum(v * v)`` the threshold is, in integers only:

* ``k == 0``: ``select_none``, threshold ``value_max`` (``value_max + 1`` does not fit);
* ``k == n``: ``select_all``, threshold ``value_min``;
* otherwise, with ``Z = spatten.config.z_table(ratio_bits, z_frac_bits)``::

      r   = floor(k * 2**ratio_bits / n)          0 <= r < 2**ratio_bits, as k < n
      z   = Z[r]                                   z * 2**-z_frac_bits standard deviations
      var = n * S2 - S1 * S1                       = n**2 * population variance >= 0
      sd  = isqrt(var)                             = floor(n * sigma)
      num = S1 * 2**z_frac_bits + z * sd
      thr = ceil(num / (n * 2**z_frac_bits))       then saturated to [value_min, value_max]

The hardware's latency depends on the configuration only (`cycles`); `widths` gives the widths it
derives from the worst case, which `cycles` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from spatten.config import TopKConfig, z_table

__all__ = ["StatResult", "StatWidths", "widths", "stat_threshold", "stat_threshold_from_values",
           "moments", "cycles"]


@lru_cache(maxsize=64)
def _z_table(ratio_bits: int, z_frac_bits: int) -> tuple[int, ...]:
    return tuple(z_table(ratio_bits, z_frac_bits))


@dataclass(frozen=True)
class StatResult:
    threshold: int
    select_all: bool
    select_none: bool


def _signed_width(lo: int, hi: int) -> int:
    """Bits of the narrowest two's-complement number that holds every integer in [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


@dataclass(frozen=True)
class StatWidths:
    """Widths the hardware derives from the worst case (n = capacity, every value extreme).

    s1          signed width of S1: S1 in [capacity * value_min, capacity * value_max]; also
                the steps of its shift-add of -S1 * S1 (one per bit of S1)
    s2          unsigned width of S2: S2 <= capacity * value_min**2 (all values value_min)
    var         unsigned width of var: n**2 times a population variance, largest with half the
                values at each extreme: var <= floor((capacity * (2**W - 1))**2 / 4)
    sqrt_steps  K = ceil(var / 2): the square root takes one radicand bit pair per step
    sd          unsigned width of sd = isqrt(var) <= isqrt(var_max)
    z_steps     L, unsigned width of max |Z[r]|: steps of the shift-add of z * sd
    """

    s1: int
    s2: int
    var: int
    sqrt_steps: int
    sd: int
    z_steps: int


def widths(cfg: TopKConfig) -> StatWidths:
    C, W = cfg.capacity, cfg.value_width
    var_max = (C * (2 ** W - 1)) ** 2 // 4
    var = var_max.bit_length()
    z_max = max(abs(z) for z in _z_table(cfg.ratio_bits, cfg.z_frac_bits))
    return StatWidths(s1=_signed_width(C * cfg.value_min, C * cfg.value_max),
                      s2=(C * cfg.value_min ** 2).bit_length(), var=var,
                      sqrt_steps=(var + 1) // 2, sd=max(math.isqrt(var_max).bit_length(), 1),
                      z_steps=max(z_max.bit_length(), 1))


def cycles(cfg: TopKConfig, n: int | None = None, k: int | None = None) -> int:
    """Cycles from the cycle `start` is sampled to the cycle `done` is high, in the hardware.

    The same for every input (``n`` and ``k`` are accepted and ignored):
    ``1 + RB + CW + S1B + K + L + 1 + W + 1``: one cycle to latch the inputs, RB steps of
    k * 2**RB / n, CW steps of n * S2, S1B steps of -S1 * S1, K steps of isqrt, L steps of
    z * sd, one cycle to load the divider, W steps of the division by n, one cycle to round and
    saturate (CW = count_width; S1B, K, L from `widths`).
    """
    w = widths(cfg)
    return (1 + cfg.ratio_bits + cfg.count_width + w.s1 + w.sqrt_steps + w.z_steps + 1
            + cfg.value_width + 1)


def _check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    return int(value)


def stat_threshold(cfg: TopKConfig, n: int, k: int, s1: int, s2: int) -> StatResult:
    """The threshold for `n` values whose sum is `s1` and sum of squares `s2`, keeping about `k`.

    Errors (ValueError): n outside 1..capacity, k outside 0..n, s1 or s2 impossible for n
    values of `cfg.value_width` bits (s1 outside [n*value_min, n*value_max], s2 outside
    [0, n*value_min**2], or n*s2 < s1**2).
    """
    n, k, s1, s2 = (_check_int(nm, v) for nm, v in (("n", n), ("k", k), ("s1", s1), ("s2", s2)))
    if not 1 <= n <= cfg.capacity:
        raise ValueError(f"n must be in [1, {cfg.capacity}], not {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], not {k}")
    if not n * cfg.value_min <= s1 <= n * cfg.value_max:
        raise ValueError(f"s1={s1} is not a sum of {n} values of {cfg.value_width} bits")
    if not 0 <= s2 <= n * cfg.value_min ** 2 or n * s2 < s1 * s1:
        raise ValueError(f"s2={s2} is not a sum of squares of {n} values with sum {s1}")
    if k == 0:
        return StatResult(cfg.value_max, select_all=False, select_none=True)
    if k == n:
        return StatResult(cfg.value_min, select_all=True, select_none=False)
    RB, ZF = cfg.ratio_bits, cfg.z_frac_bits
    r = (k << RB) // n
    z = _z_table(RB, ZF)[r]
    sd = math.isqrt(n * s2 - s1 * s1)
    num = (s1 << ZF) + z * sd
    thr = -((-num) // (n << ZF))  # ceil
    thr = min(max(thr, cfg.value_min), cfg.value_max)
    return StatResult(thr, select_all=False, select_none=False)


def moments(cfg: TopKConfig, values) -> tuple[int, int, int]:
    """(n, S1, S2) of an integer array whose values fit `cfg.value_width` signed bits."""
    v = np.asarray(values)
    if v.ndim != 1 or (v.size and not np.issubdtype(v.dtype, np.integer)):
        raise TypeError(f"values must be a 1-D integer array, not {v.dtype} of shape {v.shape}")
    v = v.astype(np.int64)
    if v.size and (v.min() < cfg.value_min or v.max() > cfg.value_max):
        raise ValueError(f"values must fit {cfg.value_width} signed bits "
                         f"([{cfg.value_min}, {cfg.value_max}])")
    # S1 fits int64 for every legal config (|S1| <= 2**47); S2 may not (up to 2**78): sum the
    # squares as Python ints.
    return int(v.size), int(v.sum()), sum(int(x) * int(x) for x in v.tolist())


def stat_threshold_from_values(cfg: TopKConfig, values, k: int) -> StatResult:
    """`stat_threshold` of the sums of `values` (a 1-D integer array)."""
    n, s1, s2 = moments(cfg, values)
    return stat_threshold(cfg, n, k, s1, s2)
