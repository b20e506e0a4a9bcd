"""Golden model of the top-k engine: the exact selection, the radix-select trace the hardware
follows, the hardware's cycle model, and a model of the paper's random-pivot quick-select.

Contract of the selection (`select`):

* input: signed integers ``v[0..n-1]`` that fit ``cfg.value_width`` bits, and ``k``;
* the ``k`` largest values are selected; among values equal to the k-th largest (the
  *threshold*), the lowest indices win, so exactly ``k`` indices are selected;
* the selected indices come out in ascending order;
* ``k = 0`` selects nothing (the threshold is then reported as ``value_max``), ``k = n`` selects
  everything; ``k > n``, ``n = 0``, ``n > capacity`` and values that do not fit are errors.

The hardware finds the threshold by radix select over D-bit digits of the *key*, the value with
its sign bit flipped (so unsigned order equals signed order). The histogram of the top digit is
gathered while the input streams in; each later pass reads the candidates that share the digits
chosen so far and histograms the next digit. `radix_trace` returns exactly what each pass sees,
which is what the cycle model needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spatten.config import TopKConfig, zero_eliminator_latency

__all__ = [
    "TopKError", "TopKResult", "RadixTrace", "check_input", "to_keys", "select", "radix_trace",
    "select_statistical", "cycle_model", "random_pivot_cycles", "MODES",
]

MODES = ("exact", "statistical")


class TopKError(ValueError):
    """Bad input to the top-k engine: the message says what was wrong."""


@dataclass
class TopKResult:
    indices: np.ndarray          # selected indices, ascending
    threshold: int               # the k-th largest value (value_max when k = 0)
    mode: str = "exact"


def check_input(cfg: TopKConfig, values, k: int) -> np.ndarray:
    """Validate ``values`` and ``k`` for ``cfg``; return the values as an int64 array."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise TopKError(f"values must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.floor(arr) == arr):
            pass
        else:
            raise TopKError(f"values must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    n = arr.size
    if n == 0:
        raise TopKError("n = 0: the input holds no values")
    if n > cfg.capacity:
        raise TopKError(f"n = {n} is over the capacity {cfg.capacity} of this configuration")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TopKError(f"k must be an integer, not {k!r}")
    if k < 0 or k > n:
        raise TopKError(f"k = {k} is out of range 0..n (n = {n})")
    lo, hi = cfg.value_min, cfg.value_max
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        i = int(bad[0])
        raise TopKError(
            f"value {int(arr[i])} at index {i} does not fit {cfg.value_width} signed bits "
            f"[{lo}, {hi}]")
    return arr


def to_keys(cfg: TopKConfig, values: np.ndarray) -> np.ndarray:
    """Unsigned sort keys: the value with its sign bit flipped (v + 2**(W-1))."""
    return np.asarray(values, dtype=np.int64) + (1 << (cfg.value_width - 1))


def select(cfg: TopKConfig, values, k: int) -> TopKResult:
    """The exact top-k selection (see the module docstring)."""
    v = check_input(cfg, values, k)
    if k == 0:
        return TopKResult(np.zeros(0, dtype=np.int64), cfg.value_max)
    # Stable sort by descending value: equal values keep ascending index order.
    order = np.argsort(-v, kind="stable")
    chosen = np.sort(order[:k])
    threshold = int(v[order[k - 1]])
    return TopKResult(chosen.astype(np.int64), threshold)


@dataclass
class RadixPass:
    """One histogram pass of the radix select."""

    digit: int           # which digit this pass histograms (digits-1 is the top one)
    rows: int            # beats read (for the input pass: beats received)
    candidates: int      # elements that take part (match all digits chosen before)
    bin: int             # the bin chosen for this digit
    above: int           # candidates whose digit is above the chosen bin
    in_bin: int          # candidates in the chosen bin
    k_before: int        # how many still had to be found before this pass


@dataclass
class RadixTrace:
    passes: list = field(default_factory=list)
    threshold: int = 0
    ties_kept: int = 0   # how many elements equal to the threshold are selected


def radix_trace(cfg: TopKConfig, values, k: int) -> RadixTrace:
    """The passes the hardware makes to find the k-th largest value (1 <= k <= n)."""
    v = check_input(cfg, values, k)
    if k == 0:
        raise TopKError("radix_trace needs k >= 1")
    D, L, P = cfg.digit_bits, cfg.digits, cfg.lanes
    mask = (1 << D) - 1
    keys = to_keys(cfg, v)
    cand = keys                      # candidates of the current pass, in buffer order
    k_rem = k
    trace = RadixTrace()
    n_src = v.size                   # elements the pass reads: n for the input pass and the
    for j in range(L - 1, -1, -1):   # first candidate pass, then the previous pass's survivors
        digit = (cand >> (j * D)) & mask
        hist = np.bincount(digit, minlength=1 << D)
        above = 0
        b = (1 << D) - 1
        while above + hist[b] < k_rem:
            above += int(hist[b])
            b -= 1
        trace.passes.append(RadixPass(
            digit=j, rows=-(-n_src // P), candidates=int(cand.size), bin=b, above=above,
            in_bin=int(hist[b]), k_before=k_rem))
        k_rem -= above
        n_src = cand.size
        cand = cand[digit == b]
    key = 0
    for p in trace.passes:
        key = (key << D) | p.bin
    trace.threshold = int(key - (1 << (cfg.value_width - 1)))
    trace.ties_kept = k_rem
    return trace


def select_statistical(cfg: TopKConfig, values, k: int) -> TopKResult:
    """The approximate selection of the `statistical` mode: every value >= mean + z * sigma,
    with the threshold computed bit-exactly as the hardware does (golden/stat_threshold.py)."""
    from spatten.golden.stat_threshold import stat_threshold_from_values

    v = check_input(cfg, values, k)
    st = stat_threshold_from_values(cfg, v, k)
    if st.select_none:
        idx = np.zeros(0, dtype=np.int64)
    elif st.select_all:
        idx = np.arange(v.size, dtype=np.int64)
    else:
        idx = np.flatnonzero(v >= st.threshold).astype(np.int64)
    return TopKResult(idx, int(st.threshold), mode="statistical")


def _packer_writes(counts, arrivals, lanes):
    """Cycles in which `hw.common.packer.BeatPacker` (output never stalled) emits its beats, for a
    packet whose beats carry `counts` items and arrive (are accepted) in cycles `arrivals`: two
    cycles after the beat that releases a beat, three for the remainder of a split last beat."""
    out, fill = [], 0
    for idx, (c, a) in enumerate(zip(counts, arrivals, strict=True)):
        total = fill + c
        if idx < len(counts) - 1:
            if total > lanes:
                out.append(a + 2)
                fill = total - lanes
            else:
                fill = total
        elif total <= lanes:
            out.append(a + 2)
        else:
            out += [a + 2, a + 3]
    return out


def cycle_model(cfg: TopKConfig, values, k: int, mode: str = "exact") -> dict:
    """Cycle counts of `hw.topk.topk.TopK` when an input beat arrives every cycle and the output is
    never stalled: ``select`` (from the cycle after the last input beat until the threshold is
    known, inclusive) and ``total`` (first input beat to last output beat, inclusive), plus the
    radix passes' row counts.

    The model follows the RTL's pipeline: a row read in cycle x is in R1 at x + 2 (histogram
    flags H1 at x + 3, counts at x + 4; candidate passes feed the skid buffer in front of the
    zero eliminator from R2 at x + 3, the output pass from R4 at x + 5, one more cycle to the
    zero eliminator, one more from it to the packer); a pass's bin is selected 4 cycles after its
    last read and committed the
    cycle after, while the next pass already reads; a buffer row may be read from the cycle after
    it is written.
    """
    if mode not in MODES:
        raise TopKError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    v = check_input(cfg, values, k)
    P, n = cfg.lanes, v.size
    lz = zero_eliminator_latency(P)
    beats = -(-n // P)
    t_in = beats - 1                         # last input beat accepted
    info = {"passes": []}

    def output_pass(first_read, keep):
        """Cycle of the last output beat for an output pass whose reads start at first_read."""
        counts = [int(keep[r * P:(r + 1) * P].sum()) for r in range(beats)]
        arrivals = [first_read + r + 2 + 3 + 1 + lz + 1 for r in range(beats)]
        return _packer_writes(counts, arrivals, P)[-1] + 1   # + the output skid buffer

    if k == 0:                               # one empty beat, through the output skid buffer
        return {"select": 3, "total": t_in + 4, **info}
    if mode == "statistical":
        from spatten.golden.stat_threshold import cycles as stat_cycles
        from spatten.golden.stat_threshold import stat_threshold_from_values

        depth = cfg.lane_bits
        t_start = t_in + 5 + depth           # moments drained, then a registered start
        t_done = t_start + stat_cycles(cfg, n=n, k=k)
        st = stat_threshold_from_values(cfg, v, k)
        if st.select_none:
            return {"select": t_done - t_in, "total": t_done + 3, **info}
        keep = np.ones(n, bool) if st.select_all else v >= st.threshold
        last = output_pass(t_done + 1, keep)
        return {"select": t_done - t_in, "total": last + 1, **info}

    tr = radix_trace(cfg, v, k)
    D, L = cfg.digit_bits, cfg.digits
    keys = to_keys(cfg, v)
    s = t_in + 3                             # bin select of the input pass
    src_keys = keys                          # what the next pass reads, in buffer order
    src_written = None                       # write cycle of each row of that buffer (None: A)
    for p in range(1, L):                    # candidate passes: histogram digit L-1-p
        # the pass keeps the keys whose digit `filter_digit` is the bin the last pass chose
        filter_digit, filter_bin = L - p, tr.passes[p - 1].bin
        rows = -(-src_keys.size // P)
        x, reads = s, []
        for r in range(rows):
            x = x + 1 if src_written is None else max(x + 1, src_written[r] + 1)
            reads.append(x)
        match = ((src_keys >> (filter_digit * D)) & ((1 << D) - 1)) == filter_bin
        counts = [int(match[r * P:(r + 1) * P].sum()) for r in range(rows)]
        src_written = _packer_writes(counts, [x_r + 3 + 1 + lz + 1 for x_r in reads], P)
        src_keys = src_keys[match]
        info["passes"].append({"rows": rows, "first_read": reads[0], "last_read": reads[-1]})
        s = reads[-1] + 4
    select = s + 1 - t_in
    res = select_exact_keep(cfg, v, k)
    last = output_pass(s + 1, res)
    return {"select": select, "total": last + 1, **info}


def select_exact_keep(cfg: TopKConfig, v: np.ndarray, k: int) -> np.ndarray:
    keep = np.zeros(v.size, bool)
    keep[select(cfg, v, k).indices] = True
    return keep


def random_pivot_cycles(values, k: int, lanes: int, rng: np.random.Generator,
                        round_overhead: int = 3) -> int:
    """Selection cycles of the paper's engine (uniformly random pivot, quick-select): each round
    reads the current candidates at `lanes` per cycle, ceil(m / lanes) + 3 cycles, and recurses
    into the side that holds the k-th largest value; it stops when the pivot is that value."""
    cand = np.asarray(values, dtype=np.int64)
    k_rem = k
    cycles = 0
    while True:
        m = cand.size
        cycles += -(-m // lanes) + round_overhead
        pivot = cand[rng.integers(m)]
        greater = cand[cand > pivot]
        n_eq = int(np.count_nonzero(cand == pivot))
        if k_rem <= greater.size:
            cand = greater
        elif k_rem <= greater.size + n_eq:
            return cycles
        else:
            k_rem -= greater.size + n_eq
            cand = cand[cand < pivot]
