"""Cycle model of the value-pruning selector (`hw/attention/value_select.py`), exact for a row alone
with its input always valid and ``o`` always ready.

Cycles count from the transfer of the row's first input beat (cycle 0). With B = ceil(n/S)
input beats, r = ceil(n/P) rows of A and L digits of D bits::

    last_in      = B - 1
    take         = B + 2                 the selector takes the row (its top-digit counts are in)
    bin_select_0 = B + 4                 after a cycle of checks
    bin_select_h = bin_select_0 + h (r + 4)   one candidate pass (read, filter, count) per digit
    output pass  from bin_select_(L-1) + 1: one row of A read a cycle, compared, its keep flags
                 formed (4 stages), then into a two-entry skid buffer; the serializer sends each
                 row's flagged keys S a cycle (a row that keeps none takes one cycle too), and
                 stalls the reader when the buffer is full
    last_out     = the serializer's last cycle + 3 (skid buffer, beat packer), + 1 when the
                 packer splits the last beat

A row that keeps nothing (k = 0) or that is refused (an error) leaves as one empty beat at
B + 8. `select_cycles` returns last_out + 1: the cycles from the first input beat to the last
output beat, both counted.

Rows in a stream overlap: row i + 1 is loaded into the other bank of A while row i is selected,
and taken by the selector once it is free: take[i + 1] = max(take[i] + B[i + 1] + 3,
free[i]), with free[i] - take[i] as for the row alone (`select_stream_starts`). That is exact
when no row of A (P keys) keeps more than S of them: the serializer then sends every row in one
cycle and never holds the reader. Otherwise a row's kept keys may still be on their way through
the serializer when the next row is taken, and hold its passes (or its empty packet) back by a
few cycles, which the model does not count.
"""

from __future__ import annotations

import math

import numpy as np

from spatten.config import AttentionConfig

__all__ = ["select_cycles", "select_timeline", "select_stream_starts", "kept_per_row"]

TAIL = 3                # serializer -> skid buffer -> beat packer -> o


def _digits(cfg: AttentionConfig) -> int:
    return -(-cfg.prob_bits // cfg.topk_digit_bits)


def kept_per_row(cfg: AttentionConfig, n: int, kept: np.ndarray) -> list[int]:
    """How many of the kept indices fall into each P-key row of buffer A."""
    P = cfg.topk_lanes
    rows = -(-n // P)
    counts = np.bincount(np.asarray(kept, dtype=np.int64) // P, minlength=rows)
    return [int(c) for c in counts[:rows]]


def _output_pass(S: int, per_row: list[int], start: int) -> tuple[int, int]:
    """The output pass from its bin select in cycle `start`: (the serializer's last cycle, the
    cycle at whose end the reader pipeline has emptied R1: the selector sees it the next cycle
    and is free, in its idle state, the cycle after)."""
    cost = [max(1, math.ceil(c / S)) for c in per_row]
    pipe = [None] * 5                 # M, R1, R2, R3, R4: row numbers
    main, spare = None, None          # skid buffer entries: [row, cycles left]
    nxt, t, last_ser, free_at = 0, start + 1, None, None
    while True:
        skid_ready = spare is None
        adv = pipe[4] is None or skid_ready
        taken = False
        if main is not None:
            main[1] -= 1
            if main[1] == 0:
                taken = True
                if main[0] == len(cost) - 1:
                    last_ser = t
        if main is None or taken:
            if spare is not None:
                main, spare = spare, None
            elif adv and pipe[4] is not None:
                main = [pipe[4], cost[pipe[4]]]
            else:
                main = None
        elif adv and pipe[4] is not None:
            spare = [pipe[4], cost[pipe[4]]]
        if adv:
            issued = nxt if nxt < len(cost) else None
            if issued is not None:
                nxt += 1
            pipe = [issued] + pipe[:4]
        if free_at is None and nxt == len(cost) and pipe[0] is None and pipe[1] is None:
            free_at = t
        if last_ser is not None:
            return last_ser, free_at
        t += 1


def select_timeline(cfg: AttentionConfig, p, k: int) -> dict:
    """Events of one row alone (cycle 0: its first input beat): ``last_in``, ``take``,
    ``final_bin_select``, ``free`` (the selector takes the next row from here), ``last_out``."""
    p = np.asarray(p, dtype=np.int64)
    n = int(p.shape[0])
    S, P = cfg.softmax_lanes, cfg.topk_lanes
    B = -(-n // S)
    ev = {"last_in": B - 1, "take": B + 2}
    if k == 0 or n == 0 or k > n or n > cfg.capacity:
        ev.update(final_bin_select=None, free=B + 5, last_out=B + 8)
        return ev
    r, L = -(-n // P), _digits(cfg)
    y = B + 4 + (L - 1) * (r + 4)
    order = np.lexsort((np.arange(n), -p))
    kept = np.sort(order[:k])
    per_row = kept_per_row(cfg, n, kept)
    last_ser, free_at = _output_pass(S, per_row, y)
    # the beat packer: the residual before the last chunk, and whether the last beat splits
    cnt_last = per_row[-1] - S * (max(1, math.ceil(per_row[-1] / S)) - 1)
    before = k - cnt_last
    fill = 0 if before == 0 else (before % S or S)
    split = fill + cnt_last > S
    ev.update(final_bin_select=y, free=free_at + 2, last_out=last_ser + TAIL + int(split))
    return ev


def select_cycles(cfg: AttentionConfig, p, k: int) -> int:
    """Cycles of one row alone, from its first input beat to its last output beat, inclusive."""
    return select_timeline(cfg, p, k)["last_out"] + 1


def select_stream_starts(cfg: AttentionConfig, rows, ks) -> list[int]:
    """The cycles in which the first input beat of each row of a stream is taken (cycle 0: the
    first row's), with the input always valid and ``o`` always ready; exact when no row of A
    keeps more than S keys (see the module docstring)."""
    starts, t = [], 0
    take = None  # the cycle row i is taken by the selector (known once row i - 1 is timed)
    for i, (p, k) in enumerate(zip(rows, ks, strict=True)):
        starts.append(t)
        ev = select_timeline(cfg, p, k)
        if i + 1 < len(rows):
            b_next = -(-len(rows[i + 1]) // cfg.softmax_lanes)
            if take is None:
                take = t + ev["take"]
            take_now = take
            take = max(take_now + b_next + 3, take_now + ev["free"] - ev["take"])
            t = take_now + 1
    return starts
