"""The single source of every width, depth and lane count.

Plain data: no Amaranth, no numpy. The RTL (`hw/`), the golden models (`golden/`), the testbenches
(`sim/`), the board builds (`fpga/`) and the command line all read a `Config`; none of them keeps a
copy of its numbers.

    >>> from spatten.config import preset
    >>> cfg = preset("default")
    >>> cfg.topk.lanes, cfg.topk.value_width, cfg.topk.capacity
    (16, 16, 1024)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["TopKConfig", "AttentionConfig", "MemoryConfig", "Config", "DEFAULT", "PRESETS",
           "preset", "preset_names", "zero_eliminator_latency", "z_table"]


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], not {value}")


@dataclass(frozen=True)
class TopKConfig:
    """Parameters of the top-k engine (`hw/topk/topk.py`).

    lanes        P, values per input/output beat and comparisons per cycle (power of two, 1..32)
    value_width  W, bits of each signed input value (2..32)
    capacity     n_max, the largest n one run may hold (a multiple of `lanes`, up to 65536)
    digit_bits   D, bits of one radix-select digit; each pass keeps 2**D - 1 running counts
    z_frac_bits  fraction bits of the Phi^-1 table of the statistical mode
    ratio_bits   k/n is quantized to this many fraction bits to index that table
    """

    lanes: int = 16
    value_width: int = 16
    capacity: int = 1024
    digit_bits: int = 4
    z_frac_bits: int = 8
    ratio_bits: int = 6

    def __post_init__(self):
        _check_int("lanes", self.lanes, 1, 32)
        if not _is_pow2(self.lanes):
            raise ValueError(
                f"lanes must be a power of two (1, 2, 4, 8, 16 or 32), not {self.lanes}")
        _check_int("value_width", self.value_width, 2, 32)
        _check_int("capacity", self.capacity, 1, 65536)
        if self.capacity % self.lanes:
            raise ValueError(
                f"capacity must be a multiple of lanes ({self.lanes}), not {self.capacity}")
        _check_int("digit_bits", self.digit_bits, 1, 6)
        _check_int("z_frac_bits", self.z_frac_bits, 2, 16)
        _check_int("ratio_bits", self.ratio_bits, 2, 10)

    # Derived quantities: computed here once so that every user agrees on them.
    @property
    def rows(self) -> int:
        """Depth of each on-chip buffer, in beats of `lanes` values."""
        return self.capacity // self.lanes

    @property
    def digits(self) -> int:
        """Number of radix digits that cover a value: ceil(W / D)."""
        return -(-self.value_width // self.digit_bits)

    @property
    def key_width(self) -> int:
        """Width of the unsigned sort key (value with its sign bit flipped, zero-extended)."""
        return self.digits * self.digit_bits

    @property
    def index_width(self) -> int:
        """Bits of an element index (0..capacity-1)."""
        return max(1, (self.capacity - 1).bit_length())

    @property
    def count_width(self) -> int:
        """Bits of a count (0..capacity), such as n and k."""
        return self.capacity.bit_length()

    @property
    def value_min(self) -> int:
        return -(1 << (self.value_width - 1))

    @property
    def value_max(self) -> int:
        return (1 << (self.value_width - 1)) - 1

    @property
    def lane_bits(self) -> int:
        """log2(lanes)."""
        return int(math.log2(self.lanes))


@dataclass(frozen=True)
class AttentionConfig:
    """The fixed-point contract and the sizes of the attention datapath (`hw/attention/qk.py`,
    `hw/attention/softmax.py`, `hw/attention/pv.py`, `hw/attention/attention.py`). Every width below
    is derived from the worst case the formats allow; `golden/attention.py` follows the same rules
    bit for bit.

    Formats (``S`` signed, ``U`` unsigned; ``a.b`` = integer.fraction bits)
    ---------------------------------------------------------------------
    q, k, v        S`data_width` integers; real value = integer x per-tensor scale (host side)
    dot            q.k over d <= qk_mults terms: S`dot_width` (2W + log2 M; exact, never wraps)
    t              max(dot) - dot >= 0, U`dot_width`
    y              -log2 of the unnormalised probability, U`y_int_bits`.`y_frac_bits`:
                   y = min(((min(t >> shift, 2**t_bits - 1)) * scale + half) >> post_shift, y_max),
                   with run-time registers shift, scale (U`scale_bits`) and post_shift chosen by the
                   host so that y = t * q_scale * k_scale * log2(e) / sqrt(d) (golden
                   `score_params`); y saturates at y_max (2**-32 is far below one probability LSB)
    e              2**-y as U1.16: exp_table()[y fraction] (round(2**16 * 2**-f)), then shifted
                   right by the integer part with rounding; the row maximum has e = 2**16 exactly
    esum           sum of e over the row: U(17 + log2 n_max); >= 2**16 since the max is in it
    recip          round(2**33 / m), m = esum normalised to [2**16, 2**17) (truncated), capped at
                   2**17 - 1: U17
    p              probability, U0.`prob_bits`: min((e * recip + half) >> (17 + norm), 2**16 - 1)
    acc            sum of p * v over the kept keys: S(prob_bits + W + log2 n_max), exact (the
                   pipeline's prob x V holds it in S(W + prob_bits + 2): a softmax row's
                   probabilities sum below 2**16 + 2 + n/2 < 2**17, `hw.attention.pv.ProbV`
                   p_sum_bits)
    out            S(data_width + out_frac_bits): v's scale with out_frac_bits more fraction bits (a
                   convex combination of v rows stays in v's range; the extra bits keep rows of
                   small norm accurate): round(acc / 2**(prob_bits - out_frac_bits)), or with
                   renormalisation round(acc * 2**out_frac_bits / sum(p kept)) through a
                   normalised reciprocal; saturated, never wrapped

    Sizes
    -----
    qk_mults       M, multipliers of the Q.K array (power of two, 8..256); head dim d is a run-time
                   power of two in [8, M]; the array computes M/d keys a cycle
    pv_mults       multipliers of the prob x V array (power of two, 8..256)
    capacity       n_max, keys (and values) one head may hold on chip
    softmax_lanes  S, scores the softmax handles per cycle (power of two, <= qk_mults / 8 keeps the
                   Q.K array busy down to d = M / S)
    topk_lanes     P, keys a pass of value pruning's selector reads a cycle
    (`hw/attention/value_select.py`) topk_digit_bits  D, bits of the selector's radix digit:
    ceil(prob_bits / D) passes a row
    """

    data_width: int = 12
    qk_mults: int = 64
    pv_mults: int = 64
    capacity: int = 1024
    softmax_lanes: int = 4
    y_int_bits: int = 5
    y_frac_bits: int = 10
    t_bits: int = 18
    scale_bits: int = 16
    prob_bits: int = 16
    topk_lanes: int = 16
    topk_digit_bits: int = 4
    out_frac_bits: int = 4

    def __post_init__(self):
        _check_int("data_width", self.data_width, 4, 16)
        _check_int("out_frac_bits", self.out_frac_bits, 0, 8)
        for name in ("qk_mults", "pv_mults"):
            value = getattr(self, name)
            _check_int(name, value, 8, 256)
            if not _is_pow2(value):
                raise ValueError(f"{name} must be a power of two (8..256), not {value}")
        _check_int("capacity", self.capacity, 1, 65536)
        _check_int("softmax_lanes", self.softmax_lanes, 1, 32)
        if not _is_pow2(self.softmax_lanes):
            raise ValueError(f"softmax_lanes must be a power of two, not {self.softmax_lanes}")
        _check_int("topk_lanes", self.topk_lanes, 1, 32)
        if not _is_pow2(self.topk_lanes):
            raise ValueError(f"topk_lanes must be a power of two, not {self.topk_lanes}")
        if self.softmax_lanes > self.topk_lanes:
            raise ValueError(f"softmax_lanes ({self.softmax_lanes}) must not exceed topk_lanes "
                             f"({self.topk_lanes})")
        if self.capacity % self.topk_lanes or self.capacity % self.softmax_lanes:
            raise ValueError(f"capacity ({self.capacity}) must be a multiple of topk_lanes and "
                             f"softmax_lanes")
        for name in ("pv_mults", "qk_mults"):
            if (self.capacity * 8) % getattr(self, name):
                raise ValueError(f"capacity x 8 must be a multiple of {name}")
        _check_int("y_int_bits", self.y_int_bits, 3, 6)
        _check_int("y_frac_bits", self.y_frac_bits, 4, 12)
        _check_int("t_bits", self.t_bits, 8, 24)
        _check_int("scale_bits", self.scale_bits, 8, 24)
        if self.prob_bits != 16:
            raise ValueError(
                f"prob_bits is fixed at 16 (U0.16 probabilities), not {self.prob_bits}")
        _check_int("topk_digit_bits", self.topk_digit_bits, 1, 6)

    # --- derived widths: computed here once so that every user agrees on them ---
    @property
    def dot_width(self) -> int:
        """|q_i k_i| <= 2**(2W-2) (from (-2**(W-1))**2), times at most M terms: S(2W + log2 M)."""
        return 2 * self.data_width + int(math.log2(self.qk_mults))

    @property
    def head_dims(self) -> tuple:
        """The head dimensions the arrays accept at run time: powers of two from 8 to M."""
        top = min(self.qk_mults, self.pv_mults)
        return tuple(1 << i for i in range(3, int(math.log2(top)) + 1))

    @property
    def y_width(self) -> int:
        return self.y_int_bits + self.y_frac_bits

    @property
    def y_max(self) -> int:
        return (1 << self.y_width) - 1

    @property
    def e_width(self) -> int:
        """e in U1.16: 2**16 is reachable (the row maximum), so 17 bits."""
        return self.prob_bits + 1

    @property
    def esum_width(self) -> int:
        """n_max values of at most 2**16 each."""
        return self.e_width + max(1, (self.capacity - 1).bit_length())

    @property
    def recip_width(self) -> int:
        return self.prob_bits + 1

    @property
    def acc_width(self) -> int:
        """|p v| < 2**16 * 2**(W-1); n_max of them: S(16 + W + log2 n_max)."""
        return self.prob_bits + self.data_width + max(1, (self.capacity - 1).bit_length())

    @property
    def psum_width(self) -> int:
        """Sum of up to n_max probabilities of at most 2**16 - 1."""
        return self.prob_bits + max(1, (self.capacity - 1).bit_length())

    @property
    def post_shift_max(self) -> int:
        """Largest post_shift the score scaling accepts (5-bit register)."""
        return 31

    @property
    def index_width(self) -> int:
        return max(1, (self.capacity - 1).bit_length())

    @property
    def out_width(self) -> int:
        """Bits of an output element: v's width plus out_frac_bits fraction bits."""
        return self.data_width + self.out_frac_bits

    @property
    def out_min(self) -> int:
        return -(1 << (self.out_width - 1))

    @property
    def out_max(self) -> int:
        return (1 << (self.out_width - 1)) - 1

    @property
    def data_min(self) -> int:
        return -(1 << (self.data_width - 1))

    @property
    def data_max(self) -> int:
        return (1 << (self.data_width - 1)) - 1

    @property
    def qk_read_latency(self) -> int:
        """Cycles of the Q.K array (`hw.attention.qk.QKArray`) from the K read that completes an
        output beat to that beat on its output: the K buffer's read (1), the K word's fabric
        register (1), the multipliers' input and product registers (2), one register per adder-tree
        level (log2 M), gather (1), pack (1) and the output FIFO (2)."""
        return int(math.log2(self.qk_mults)) + 8

    @property
    def qk_latency(self) -> int:
        """Cycles of the Q.K array from a query's ``q`` transfer to its first output beat,
        nothing else in flight: its first K read the next cycle, then `qk_read_latency` (when
        one K word holds all the keys of the beat, see `golden.qk_cycles.qk_schedule`)."""
        return self.qk_read_latency + 1

    @property
    def issue_ahead(self) -> int:
        """Progressive quantization: the MSB passes issued before the first refetch decision is
        acted on (the issuer runs one query ahead: M0 M1 [F0] M2 [F1] ...); the RTL's query
        issuer and `golden.progressive.issue_order` both follow it."""
        return 2

    def exp_table(self) -> list[int]:
        """round(2**16 * 2**(-f / 2**y_frac_bits)) for every fraction f: the exponent ROM."""
        size = 1 << self.y_frac_bits
        return [round((1 << self.prob_bits) * 2.0 ** (-f / size)) for f in range(size)]

    # --- latencies: the cycle counts the RTL is built with (or asserts at elaboration) and the
    # cycle models (golden/softmax_cycles.py, golden/pv_cycles.py) use; one copy of each ---
    @property
    def softmax_ingest_latency(self) -> int:
        """Softmax: a row's last input beat -> its exp pass may start (the row maximum known):
        the accepted beat, the row descriptor, log2 S levels of the maximum tree, the score
        bank's ready flag: 3 + log2 S."""
        return 3 + int(math.log2(self.softmax_lanes))

    @property
    def softmax_exp_latency(self) -> int:
        """Softmax: the exp pass's last read -> the reciprocal may start (esum known): 12
        pipeline stages (read, dot, subtract, two shifts, product, two shifts, ROM address, ROM
        data, two rounding steps), log2 S adder-tree levels, the e bank's done flag:
        13 + log2 S (the model's exp start + B + this)."""
        return 13 + int(math.log2(self.softmax_lanes))

    @property
    def softmax_recip_cycles(self) -> int:
        """Softmax: the reciprocal's start -> the normalise pass may start, and the reciprocal's
        occupancy per row: take esum, normalise, e_width + 2 quotient bits (one a cycle), round,
        the e bank's ready flag: 22."""
        return self.e_width + 2 + 3

    @property
    def softmax_out_latency(self) -> int:
        """Softmax: the normalise pass's last read -> the last ``o`` transfer: the read, 3
        pipeline stages (e, product, shift), the output FIFO's write and read: 6."""
        return 6

    @property
    def softmax_row_gap(self) -> int:
        """Softmax: the least number of cycles between the starts of two normalise passes: the
        ``row`` beat is computed (p_max in 2 cycles) and taken first: 4."""
        return 4

    @property
    def pv_recip_ready(self) -> int:
        """Prob x V: the issue of a renormalised query's last word -> its reciprocal is ready for
        the renormalisation lane: the word's R1 register, the reciprocal's start, normalise,
        prob_bits + 2 quotient bits (one a cycle), round, the lane's start flag: 22."""
        return self.prob_bits + 2 + 4

    @property
    def pv_grant_lookahead(self) -> int:
        """Prob x V: a query's last word is issued when the fold register is sure to be free this
        many cycles later: the depth of the multiplier pipeline (R1, R2, R3): 3."""
        return 3

    @property
    def pv_lane_depth(self) -> int:
        """Prob x V: registers of the renormalisation lane from reading a column of the fold
        register to writing it into the output register: ceil(log2(Mv) / 2) levels of 4:1 read
        multiplexers, the multipliers' input registers, their products, two adds."""
        return (self.pv_mults.bit_length()) // 2 + 4


@dataclass(frozen=True)
class MemoryConfig:
    """The memory side: DRAM beats, bursts and the K bit planes of progressive quantization.

    beat_bytes      bytes per DRAM data beat (B); addresses of requests are B-aligned
    max_burst       most beats one request asks for (runs of rows are split into such bursts)
    max_outstanding DRAM requests in flight at once (issued, last beat not yet received)
    msb_bits        bits of each K element in the MSB plane; the LSB plane holds the other
                    data_width - msb_bits (8 + 4 by default, 6 + 6 is the other split measured)
    align           byte alignment of every plane in the DRAM image
    addr_width      bits of a DRAM byte address (requests, plane bases)
    token_bits      bits of a token index, a row of a plane (up to 2**token_bits rows)
    group_size      query heads per head group the core (`hw.memory.core.Core`) serves from one K
    and V
                    (grouped-query attention: 3 as in SmolLM2; MiniLM has 1), 1..8
    q_slots         Q rows the core fetches ahead of the pipeline (each one DRAM run), 1..16
    """

    beat_bytes: int = 16
    max_burst: int = 16
    max_outstanding: int = 4
    msb_bits: int = 8
    align: int = 4096
    addr_width: int = 32
    token_bits: int = 16
    group_size: int = 3
    q_slots: int = 4

    def __post_init__(self):
        if not (isinstance(self.beat_bytes, int) and _is_pow2(self.beat_bytes)
                and 1 <= self.beat_bytes <= 64):
            raise ValueError(f"beat_bytes must be a power of two from 1 to 64, "
                             f"not {self.beat_bytes!r}")
        for name, lo, hi in (("max_burst", 1, 256), ("max_outstanding", 1, 64),
                             ("msb_bits", 1, 23), ("addr_width", 1, 64), ("token_bits", 1, 32),
                             ("group_size", 1, 8), ("q_slots", 1, 16)):
            v = getattr(self, name)
            if not (isinstance(v, int) and lo <= v <= hi):
                raise ValueError(f"{name} must be an integer from {lo} to {hi}, not {v!r}")
        if not (isinstance(self.align, int) and self.align % self.beat_bytes == 0
                and self.align > 0):
            raise ValueError(f"align must be a positive multiple of beat_bytes "
                             f"({self.beat_bytes}), not {self.align!r}")

    def lsb_bits(self, data_width: int) -> int:
        """Bits of each K element in the LSB plane."""
        if not 1 <= self.msb_bits < data_width:
            raise ValueError(f"msb_bits {self.msb_bits} must be below data_width {data_width}")
        return data_width - self.msb_bits


@dataclass(frozen=True)
class Config:
    """The whole accelerator's configuration: one field per unit."""

    name: str = "default"
    topk: TopKConfig = field(default_factory=TopKConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    #: clock the board builds are constrained at, in MHz, per board name
    target_mhz: dict = field(default_factory=lambda: {"ulx3s-85f": 100.0, "icebreaker": 40.0})

    def replace(self, **changes) -> "Config":
        """A copy with `changes`; `topk_<field>=` keywords change the top-k engine's fields,
        `attn_<field>=` keywords the attention datapath's, `mem_<field>=` the memory side's."""
        topk = {k[5:]: v for k, v in changes.items() if k.startswith("topk_")}
        attn = {k[5:]: v for k, v in changes.items() if k.startswith("attn_")}
        mem = {k[4:]: v for k, v in changes.items() if k.startswith("mem_")}
        rest = {k: v for k, v in changes.items()
                if not k.startswith(("topk_", "attn_", "mem_"))}
        cfg = dataclasses.replace(self, **rest)
        if mem:
            cfg = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, **mem))
        if topk:
            cfg = dataclasses.replace(cfg, topk=dataclasses.replace(cfg.topk, **topk))
        if attn:
            cfg = dataclasses.replace(cfg, attention=dataclasses.replace(cfg.attention, **attn))
        return cfg


#: The default configuration; every preset is built from it with `Config.replace`.
DEFAULT = Config()

PRESETS: dict[str, Config] = {
    # SpAtten-1/8 scale for the ULX3S-85F (ECP5-85F).
    "default": DEFAULT,
    # Fits the iCEBreaker's iCE40UP5K (5280 LUTs, 120 kbit of block RAM).
    "small": DEFAULT.replace(name="small", topk_lanes=4, topk_value_width=12, topk_capacity=256,
                             topk_digit_bits=3, attn_qk_mults=8, attn_pv_mults=8,
                             attn_capacity=128, attn_softmax_lanes=1, attn_y_frac_bits=8,
                             attn_topk_lanes=4, attn_topk_digit_bits=3),
    # The default pipeline with half the multipliers (32 in the Q.K array, 32 in prob x V):
    # a point of comparison for the FPGA builds of the whole pipeline.
    "half": DEFAULT.replace(name="half", attn_qk_mults=32, attn_pv_mults=32),
    # The default engine with room for 4096 values (benchmarks at n = 4096).
    "large": DEFAULT.replace(name="large", topk_capacity=4096),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> Config:
    """The named preset; a clear error lists the names that exist."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown configuration {name!r}; choose one of: {', '.join(PRESETS)}") from None


def zero_eliminator_latency(lanes: int) -> int:
    """Cycles from a beat entering `hw.common.zero_elim.ZeroEliminator` to its compacted beat
    leaving it, when the output is never stalled: one register after the prefix count, then one
    after every second of the log2(lanes) shift stages (rounded up)."""
    stages = int(math.log2(lanes))
    return 1 + (stages + 1) // 2


def z_table(ratio_bits: int, z_frac_bits: int) -> list[int]:
    """Phi^-1 table of the statistical top-k: entry r (0 <= r < 2**ratio_bits) is
    round(Phi^-1(1 - (r + 0.5) / 2**ratio_bits) * 2**z_frac_bits), the number of standard
    deviations above the mean that leaves a fraction (r + 0.5) / 2**ratio_bits of a normal
    population above it. Standard library only, so RTL and golden model build the same table."""
    from statistics import NormalDist

    nd = NormalDist()
    size = 1 << ratio_bits
    return [round(nd.inv_cdf(1.0 - (r + 0.5) / size) * (1 << z_frac_bits)) for r in range(size)]
