"""Layouts, sizes and helpers shared by the prob x V array (`hw/attention/pv.py`) and its sub-units
(`hw/attention/pv_issue.py`, `hw/attention/pv_accumulate.py`, `hw/attention/pv_fold.py`,
`hw/attention/pv_lane.py`, `hw/attention/pv_output.py`).

Shared layouts (also used by the query pipeline and the testbenches):

- `input_layout(cfg)`: one beat of kept pairs ``{index: ArrayLayout(unsigned(index_width), S),
  prob: ArrayLayout(unsigned(16), S), count: range(S+1), last: 1}``.
- `output_layout(cfg)`: one beat per query ``{data: ArrayLayout(signed(out_width), Mv),
  psum: unsigned(psum_width)}`` (out_width = W + out_frac_bits).
- `v_word_layout(cfg)`: one word of the V buffer, ``ArrayLayout(signed(W), Mv)``; word w holds
  flat elements [w*Mv, (w+1)*Mv), V row r is flat elements r*d .. r*d+d-1, so word w holds rows
  w*gv .. w*gv+gv-1 (gv = Mv/d).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Const, Mux, signed, unsigned
from amaranth.lib import data

from spatten.config import AttentionConfig

__all__ = ["MIN_D_LOG2", "ProbVSizes", "input_layout", "output_layout", "v_word_layout",
           "v_depth", "run_beat_layout", "issued_word_layout", "pairwise_sums", "saturate",
           "saturate_increment", "log2"]

#: the smallest head dimension is 2**MIN_D_LOG2 = 8: a block of 8 multipliers holds one row-slot
MIN_D_LOG2 = 3


def log2(x: int) -> int:
    return x.bit_length() - 1


def input_layout(cfg: AttentionConfig) -> data.StructLayout:
    S = cfg.softmax_lanes
    return data.StructLayout({
        "index": data.ArrayLayout(unsigned(cfg.index_width), S),
        "prob": data.ArrayLayout(unsigned(cfg.prob_bits), S),
        "count": range(S + 1),
        "last": 1,
    })


def output_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.out_width), cfg.pv_mults),
        "psum": unsigned(cfg.psum_width),
    })


def v_word_layout(cfg: AttentionConfig) -> data.ArrayLayout:
    return data.ArrayLayout(signed(cfg.data_width), cfg.pv_mults)


def v_depth(cfg: AttentionConfig) -> int:
    """Words of the V buffer: capacity (capacity rows of the largest d = Mv)."""
    return cfg.capacity


@dataclass(frozen=True)
class ProbVSizes:
    """The sizes of the prob x V array for a config and ``p_sum_bits`` (see
    `hw.attention.pv.ProbV`)."""

    cfg: AttentionConfig
    p_sum_bits: int | None = None

    @staticmethod
    def of(config, p_sum_bits=None) -> ProbVSizes:
        """The sizes for `config` (an AttentionConfig, else TypeError) and `p_sum_bits` (None,
        or an int from prob_bits to psum_width, else ValueError)."""
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be a spatten.config.AttentionConfig, not {config!r}")
        if p_sum_bits is not None:
            full = config.psum_width
            if not isinstance(p_sum_bits, int) or isinstance(p_sum_bits, bool) \
                    or not config.prob_bits <= p_sum_bits <= full:
                raise ValueError(f"p_sum_bits must be an int from {config.prob_bits} to {full} "
                                 f"(the kept probabilities of a query sum below "
                                 f"2**p_sum_bits), not {p_sum_bits!r}")
        return ProbVSizes(config, p_sum_bits)

    @property
    def mults_log2(self) -> int:
        """log2 Mv."""
        return log2(self.cfg.pv_mults)

    @property
    def slot_bits(self) -> int:
        """A word holds gv = Mv/d <= Mv/8 = 2**slot_bits row-slots."""
        return self.mults_log2 - MIN_D_LOG2

    @property
    def blocks(self) -> int:
        """Blocks of 8 multipliers, each taking one probability a word."""
        return 1 << self.slot_bits

    @property
    def slot_width(self) -> int:
        """Bits of a row-slot number (at least 1)."""
        return max(1, self.slot_bits)

    @property
    def segment_shape(self):
        """A run number within a beat."""
        return range(max(2, self.cfg.softmax_lanes))

    @property
    def psum_levels(self) -> int:
        """Levels of the adder tree that sums a beat's probabilities (log2 S)."""
        return log2(self.cfg.softmax_lanes)

    @property
    def sum_width(self) -> int:
        """Bits of the accumulators, the fold register and the lane's read multiplexers:
        acc_width, or with p_sum_bits W + p_sum_bits + 1, which holds any such sum of
        products plus the rounding constant with room to spare."""
        cfg = self.cfg
        if self.p_sum_bits is None:
            return cfg.acc_width
        return min(cfg.acc_width, cfg.data_width + self.p_sum_bits + 1)

    @property
    def plain_shift(self) -> int:
        """Output shift without renorm: 16 - out_frac_bits."""
        return self.cfg.prob_bits - self.cfg.out_frac_bits

    @property
    def renorm_shift(self) -> int:
        """Output shift with renorm (the column sum normalised to psum_width)."""
        return self.cfg.prob_bits - 1 - self.cfg.out_frac_bits + self.cfg.psum_width

    @property
    def rounding(self) -> int:
        """The rounding constant 2**(plain_shift - 1) the fold register carries (0 if none)."""
        return (1 << (self.plain_shift - 1)) if self.plain_shift else 0


def run_beat_layout(sizes: ProbVSizes) -> data.StructLayout:
    """An input beat with its runs (stage B): per pair its word, row-slot, probability, whether
    it is kept and its run (``segment``: pairs in one word get one run number, runs numbered
    from 0 to ``last_segment``); the beat's probability sum, count, first/last flags and the
    query's renorm and d_log2."""
    cfg, S = sizes.cfg, sizes.cfg.softmax_lanes
    return data.StructLayout({
        "segment": data.ArrayLayout(sizes.segment_shape, S),
        "last_segment": sizes.segment_shape,
        "word": data.ArrayLayout(unsigned(cfg.index_width), S),
        "slot": data.ArrayLayout(unsigned(sizes.slot_width), S),
        "prob": data.ArrayLayout(unsigned(cfg.prob_bits), S),
        "kept": data.ArrayLayout(unsigned(1), S),
        "psum": unsigned(cfg.prob_bits + sizes.psum_levels),
        "count": range(S + 1),
        "first": 1,
        "last": 1,
        "renorm": 1,
        "d_log2": range(sizes.mults_log2 + 1),
    })


def issued_word_layout(sizes: ProbVSizes) -> data.StructLayout:
    """A V word as issued (register R1): ``valid`` (a word was issued; its V data arrives in
    this cycle), ``last`` (the query's last word), ``first`` (its first), the query's renorm,
    d_log2 and kept-probability sum so far, and the probability of each block of 8 multipliers
    (0 where the word has no row for the block, and in cycles without a word)."""
    cfg = sizes.cfg
    return data.StructLayout({
        "valid": 1,
        "last": 1,
        "first": 1,
        "renorm": 1,
        "d_log2": range(sizes.mults_log2 + 1),
        "psum": unsigned(cfg.psum_width),
        "block_prob": data.ArrayLayout(unsigned(cfg.prob_bits), sizes.blocks),
    })


def pairwise_sums(vals: list, levels: int) -> list:
    """`levels` levels of pairwise sums (each widening by one bit)."""
    for _ in range(levels):
        vals = [vals[2 * k] + vals[2 * k + 1] for k in range(len(vals) // 2)]
    return vals


def saturate(v, width: int):
    """v (a signed value) saturated to signed(width) (pure selection: its top bits decide)."""
    top = v[width - 1:]
    fits = top.all() | ~top.any()
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return Mux(fits, v[:width].as_signed(),
               Mux(v[-1], Const(lo, signed(width)), Const(hi, signed(width))))


def saturate_increment(v, inc, width: int):
    """sat(v + inc) to signed(width), for a signed value v and a 1-bit inc: the fit of v is
    decided from its top bits, so the only carry chain is width bits long."""
    top = v[width - 1:]
    fits = top.all() | ~top.any()
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    low = v[:width]
    at_max = ~low[-1] & low[:width - 1].all()
    return Mux(fits,
               Mux(at_max & inc, Const(hi, signed(width)), (low + inc)[:width].as_signed()),
               Mux(v[-1], Const(lo, signed(width)), Const(hi, signed(width))))
