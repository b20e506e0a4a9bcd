"""Symmetric per-tensor fixed-point quantization, the bridge from the float workload to the
integers the datapath works on.

A ``width``-bit signed integer ``i`` stands for the real value ``i * scale`` (real value =
integer x scale). With ``qmax = 2**(width-1) - 1``:

- ``quantize(x, width)`` picks ``scale = max|x| / qmax`` (1.0 for an all-zero or empty tensor),
  so the integers are symmetric in ``[-qmax, qmax]`` and ``max|x|`` maps to ``+-qmax``;
- ``quantize(x, width, scale)`` uses the given scale; values beyond the range saturate to
  ``[-2**(width-1), qmax]`` (the full two's-complement range);
- rounding is to nearest, ties to even (``numpy.rint``), computed in float64 as
  ``rint(x / scale)``; within range the round-trip error is at most ``scale / 2``.

    >>> ints, scale = quantize([0.5, -1.0, 0.25], width=4)
    >>> ints.tolist(), scale
    ([4, -7, 2], 0.14285714285714285)
    >>> dequantize(ints, scale).tolist()
    [0.5714285714285714, -1.0, 0.2857142857142857]
"""

from __future__ import annotations

import math

import numpy as np

from spatten.config import DEFAULT

__all__ = ["MIN_WIDTH", "MAX_WIDTH", "quantize", "dequantize", "int_range"]

MIN_WIDTH = 2
MAX_WIDTH = 32


def int_range(width: int) -> tuple[int, int]:
    """``(-2**(width-1), 2**(width-1) - 1)``: the signed range of ``width`` bits (2..32)."""
    _check_width(width)
    return -(1 << (width - 1)), (1 << (width - 1)) - 1


def _check_width(width) -> None:
    if not isinstance(width, (int, np.integer)) or isinstance(width, (bool, np.bool_)):
        raise TypeError(f"width must be an integer, not {width!r}")
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"width must be in [{MIN_WIDTH}, {MAX_WIDTH}], not {width}")


def _check_scale(scale) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number, not {scale!r}") from None
    if not (math.isfinite(s) and s > 0.0):
        raise ValueError(f"scale must be finite and > 0, not {scale!r}")
    return s


def quantize(x, width: int = DEFAULT.attention.data_width,
             scale: float | None = None) -> tuple[np.ndarray, float]:
    """Quantize the real tensor ``x`` (any shape, finite values) to ``width``-bit signed
    integers.

    Returns ``(ints, scale)``: ``ints`` is int64 with the shape of ``x``, ``scale`` a Python
    float with ``x ~= ints * scale``. Without ``scale`` it is ``max|x| / (2**(width-1) - 1)``
    (1.0 when ``x`` is all zeros or empty); with it, out-of-range values saturate.
    Raises TypeError/ValueError for a width outside 2..32, a non-positive or non-finite scale,
    and a non-real or non-finite ``x``.
    """
    _check_width(width)
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"x must hold real numbers, not dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("x must be finite (it holds inf or nan)")
    lo, hi = int_range(width)
    if scale is None:
        m = float(np.max(np.abs(a))) if a.size else 0.0
        scale = m / hi if m > 0.0 else 1.0
    else:
        scale = _check_scale(scale)
    ints = np.clip(np.rint(a / scale), lo, hi).astype(np.int64)
    return ints, scale


def dequantize(ints, scale: float) -> np.ndarray:
    """The real values ``ints * scale`` (float64, the shape of ``ints``) of an integer tensor."""
    a = np.asarray(ints)
    if a.dtype.kind not in "iu":
        raise ValueError(f"ints must be an integer array, not dtype {a.dtype}")
    return a.astype(np.float64) * _check_scale(scale)
