"""Cycle model of the streaming softmax (`hw/attention/softmax.py`), exact when nothing stalls.

The unit takes a row through four phases, each with its own resources (two score banks, two e
banks, one reciprocal unit, one output pipeline), so successive rows overlap. Cycles count from
the first input beat of the first row (cycle 0). With the input always valid, ``o`` and ``row``
always ready, the events of row r (B = ceil(n/S) beats, 1 for an error row; Bi = input beats;
R = log2 S) are::

    first_in[r]  = max(last_in[r-1] + 1, exp_start[r-2] + B[r-2] + 1)   score bank r % 2 free
    last_in[r]   = first_in[r] + Bi[r] - 1
    exp_start[r] = max(last_in[r] + 3 + R,                              row max known
                       exp_start[r-1] + B[r-1],                         exp reader free
                       norm_start[r-2] + B[r-2] + 1)                    e bank r % 2 free
    recip[r]     = max(exp_start[r] + B[r] + 13 + R, recip[r-1] + 22)   esum known, divider free
    norm_start[r]= max(recip[r] + 22,                                   reciprocal known
                       norm_start[r-1] + max(B[r-1], 4))                reader free, row taken
    last_out[r]  = norm_start[r] + B[r] + 6

(the constants are the latencies of `spatten.config.AttentionConfig`: 3 + R =
``softmax_ingest_latency``, 13 + R = ``softmax_exp_latency``, 22 = ``softmax_recip_cycles``, 4 =
``softmax_row_gap``, 6 = ``softmax_out_latency``, which the RTL is built with.)

A row alone takes ``Bi + 2 B + 44 + 2 R`` cycles from its first input beat to its last output
beat, inclusive. Back-to-back rows of B beats come one every ``max(B + 18 + R/2, 22)`` cycles
on average (the e banks are the limit: each is held from a row's exp pass to the end of its
normalise pass, ``2 B + 36 + R`` cycles for two rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from spatten.config import AttentionConfig

__all__ = ["RowCycles", "softmax_cycle_model", "softmax_latency", "softmax_interval"]


@dataclass(frozen=True)
class RowCycles:
    """Cycles of one row's events (see the module docstring)."""

    first_in: int
    last_in: int
    exp_start: int
    recip_start: int
    norm_start: int
    last_out: int

    @property
    def latency(self) -> int:
        """First input beat to last output beat, inclusive."""
        return self.last_out - self.first_in + 1


def _beats(cfg: AttentionConfig, row) -> tuple[int, int]:
    """(input beats, pass beats) of a row: an int n (a good row of n dots) or ("error", Bi)."""
    S = cfg.softmax_lanes
    if isinstance(row, tuple):
        kind, bi = row
        if kind != "error" or bi < 1:
            raise ValueError(f"a row is an int n or ('error', input_beats >= 1), not {row!r}")
        return int(bi), 1
    n = int(row)
    if not 1 <= n <= cfg.capacity:
        raise ValueError(f"row length {n} is outside 1..{cfg.capacity}")
    b = -(-n // S)
    return b, b


def softmax_cycle_model(cfg: AttentionConfig, rows) -> list[RowCycles]:
    """Event cycles of each row of `rows` (ints n, or ("error", input_beats)), fed back to back
    from cycle 0 with no input gap and no output backpressure."""
    recip_cycles = cfg.softmax_recip_cycles
    out: list[RowCycles] = []
    for r, row in enumerate(rows):
        bi, b = _beats(cfg, row)
        prev = out[r - 1] if r >= 1 else None
        prev2 = out[r - 2] if r >= 2 else None
        pb = _beats(cfg, rows[r - 1])[1] if prev else 0
        pb2 = _beats(cfg, rows[r - 2])[1] if prev2 else 0
        first_in = 0
        if prev:
            first_in = prev.last_in + 1
        if prev2:
            first_in = max(first_in, prev2.exp_start + pb2 + 1)
        last_in = first_in + bi - 1
        exp_start = last_in + cfg.softmax_ingest_latency
        if prev:
            exp_start = max(exp_start, prev.exp_start + pb)
        if prev2:
            exp_start = max(exp_start, prev2.norm_start + pb2 + 1)
        recip = exp_start + b + cfg.softmax_exp_latency
        if prev:
            recip = max(recip, prev.recip_start + recip_cycles)
        norm = recip + recip_cycles
        if prev:
            norm = max(norm, prev.norm_start + max(pb, cfg.softmax_row_gap))
        last_out = norm + b + cfg.softmax_out_latency
        out.append(RowCycles(first_in, last_in, exp_start, recip, norm, last_out))
    return out


def softmax_latency(cfg: AttentionConfig, n: int) -> int:
    """Cycles of one row of n dots through an idle unit, first input beat to last output beat
    inclusive: Bi + 2 B + 44 + 2 R with Bi = B = ceil(n / S)."""
    return softmax_cycle_model(cfg, [n])[0].latency


def softmax_interval(cfg: AttentionConfig, n: int, rows: int = 16) -> float:
    """Average cycles between successive rows of n dots in steady state (fed back to back):
    max(B + 18 + R/2, 22), measured on the model over the last `rows` // 2 rows (an even number
    of them: the two e banks make rows alternate)."""
    ev = softmax_cycle_model(cfg, [n] * rows)
    k = (rows // 4) * 2
    return (ev[-1].last_out - ev[-1 - k].last_out) / k
