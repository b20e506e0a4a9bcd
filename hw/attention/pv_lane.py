"""The prob x V array's renormalisation lane: a renormalised query's folded columns, one a
cycle, divided by the query's probability sum through its reciprocal."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..common.dsp import Multiplier
from ..common.fanout import copies
from .pv_common import ProbVSizes, saturate, saturate_increment

__all__ = ["RenormLane"]


class RenormLane(wiring.Component):
    """out[j] = sat(((F[j] - c) << s) * recip + 2**(SH - 1)) >> SH) for the columns j < d of the
    query in the fold register, one a cycle (c: the rounding constant F carries; s = psum_width
    - bit_length(psum), recip = round(2**31 / m) of the normalised sum,
    `hw.common.recip.Reciprocal`; SH = 15 - out_frac_bits + psum_width): the golden renormalisation
    round(acc * 2**out_frac_bits / psum), scaled by 2**s (exact, since |acc| <= 2**(W-1) psum).

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`)

    Ports
    -----
    start : In(1)
        Start on the query in F: ``last_column`` (d - 1), ``psum``, ``recip`` and
        ``leading_zeros`` (s) are sampled.
    columns : In(ArrayLayout(signed(sum_width), Mv))
        The fold register F.
    operand : Out(signed(acc_width)); recip_operand : Out(unsigned(prob_bits + 1))
        The inputs of the lane's multipliers: chunk k of ``operand`` (bits `chunks`[k], the top
        one signed) times ``recip_operand``, by a registered multiplier of two cycles each
        (`add_multipliers` puts them into the parent: ``lane_mul{k}`` of `hw.attention.pv.ProbV`,
        beside the array's)...
    products : In(StructLayout({"p0", "p1", ..}))
        ... whose products come back here.
    busy : Out(1)
        From the start to the cycle of the last result.
    reading : Out(1); columns_left : Out(range(Mv))
        A column is read in this cycle, and this many after it.
    result_valid, result_last : Out(1); result : Out(signed(out_width)); result_psum : Out
        A column's result (out[j], j from 0 up; last: j = d - 1), `config.pv_lane_depth`
        cycles after its read; the query's psum.

    Timing: started in cycle t, the lane reads column j in cycle t + 1 + j and its result is
    valid in t + 1 + j + pv_lane_depth (ceil(log2(Mv) / 2) registered 4:1 multiplexer levels,
    the multipliers' input and product registers, two adds); ``busy`` falls after the last.
    The first multiplexer level's selects are registered copies, one per multiplexer.
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        cfg = sizes.cfg
        Mv, PB, AW = cfg.pv_mults, cfg.prob_bits, cfg.acc_width
        chunk = PB + 1                       # bits of the column per multiplier
        #: (lowest bit, width) of each chunk of the operand; the top one is signed
        self.chunks = [(lo, min(chunk, AW - lo)) for lo in range(0, AW, chunk)]
        assert 2 <= len(self.chunks) <= 3, self.chunks
        last = len(self.chunks) - 1
        super().__init__({
            "start": In(1),
            "last_column": In(range(Mv)),
            "psum": In(cfg.psum_width),
            "recip": In(PB + 1),
            "leading_zeros": In(range(cfg.psum_width + 1)),
            "columns": In(data.ArrayLayout(signed(sizes.sum_width), Mv)),
            "operand": Out(signed(AW)),
            "recip_operand": Out(PB + 1),
            "products": In(data.StructLayout({
                f"p{k}": (signed if k == last else unsigned)(w + PB + 1)
                for k, (_, w) in enumerate(self.chunks)})),
            "busy": Out(1),
            "reading": Out(1),
            "columns_left": Out(range(Mv)),
            "result_valid": Out(1),
            "result_last": Out(1),
            "result": Out(signed(cfg.out_width)),
            "result_psum": Out(cfg.psum_width),
        })

    def add_multipliers(self, m: Module, name: str = "lane_mul") -> None:
        """Add the lane's multipliers to module `m` (its parent's: their names are then
        ``{name}{k}`` there, which fpga/floorplan.py pins) and connect them: chunk k of
        ``operand`` times ``recip_operand`` into ``products``."""
        PB = self.sizes.cfg.prob_bits
        for k, (low, width) in enumerate(self.chunks):
            top = k == len(self.chunks) - 1
            mul = m.submodules[f"{name}{k}"] = Multiplier(
                a_shape=signed(width) if top else unsigned(width), b_shape=unsigned(PB + 1))
            m.d.comb += [mul.a.eq(self.operand[low:low + width]), mul.b.eq(self.recip_operand),
                         self.products[f"p{k}"].eq(mul.p)]

    @property
    def mux_levels(self) -> int:
        """Registered 4:1 multiplexer levels that read a column: ceil(log2(Mv) / 2)."""
        return (self.sizes.mults_log2 + 1) // 2

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        Mv, LMV, PB = cfg.pv_mults, sizes.mults_log2, cfg.prob_bits
        depth = cfg.pv_lane_depth
        # the read multiplexers, the multipliers' two registers, the two adds
        assert self.mux_levels + 4 == depth, (self.mux_levels, depth)

        reading = Signal(name="ap_v")
        column = Signal(range(Mv), name="ap_j")
        columns_left = Signal(range(Mv), name="ap_rem")
        shift = Signal(range(cfg.psum_width + 1), name="lane_s")
        recip = Signal(PB + 1, name="lane_recip")
        busy = Signal(name="lane_busy")
        m.d.comb += [self.reading.eq(reading), self.columns_left.eq(columns_left),
                     self.recip_operand.eq(recip), self.busy.eq(busy)]
        column_next = Signal.like(column, name="ap_j_nx")
        m.d.comb += column_next.eq(Mux(self.start, 0, Mux(reading, column + 1, column)))
        m.d.sync += column.eq(column_next)
        with m.If(self.start):
            m.d.sync += [reading.eq(1), columns_left.eq(self.last_column),
                         shift.eq(self.leading_zeros), recip.eq(self.recip),
                         self.result_psum.eq(self.psum)]
        with m.If(reading):
            m.d.sync += columns_left.eq(columns_left - 1)
            with m.If(columns_left == 0):
                m.d.sync += reading.eq(0)
        # each read's valid, last and column, through the lane's registers
        valid = [Signal(name=f"l{k}_v") for k in range(1, depth + 1)]
        last = [Signal(name=f"l{k}_last") for k in range(1, depth + 1)]
        index = [Signal(range(Mv), name=f"l{k}_j") for k in range(1, depth + 1)]
        m.d.sync += [valid[0].eq(reading), last[0].eq(reading & (columns_left == 0)),
                     index[0].eq(column)]
        for k in range(1, depth):
            m.d.sync += [valid[k].eq(valid[k - 1]), last[k].eq(last[k - 1]),
                         index[k].eq(index[k - 1])]
        done = valid[-1] & last[-1]
        m.d.comb += [self.result_valid.eq(valid[-1]), self.result_last.eq(last[-1])]
        m.d.sync += busy.eq(Mux(self.start, 1, Mux(done, 0, busy)))

        # read F[j]: registered 4:1 multiplexer levels, the top bits of j first: the inputs of
        # a first-level multiplexer (F[j], F[j + Mv/4], ..) are also partners of the fold
        values = [self.columns[e] for e in range(Mv)]
        bits_left = LMV
        for k in range(self.mux_levels):
            bits = min(2, bits_left)
            bits_left -= bits
            regs = [Signal(signed(sizes.sum_width), name=f"lm{k}_{g}", reset_less=True)
                    for g in range(1 << bits_left)]
            if k == 0:
                # the first level's selects: a copy of the column's top bits per multiplexer
                # (they sit with the lanes they read, across the array)
                selects = copies(m, platform, column_next[bits_left:bits_left + bits],
                                 len(regs), "ap_j_sel")
            else:
                selects = [index[k - 1][bits_left:bits_left + bits]] * len(regs)
            m.d.sync += [r.eq(Array(values[g + (t << bits_left)] for t in range(1 << bits))[sel])
                         for g, (r, sel) in enumerate(zip(regs, selects, strict=True))]
            values = regs
        # the column sum less the rounding constant, normalised by the sum's leading zeros
        # (exact, see the docstring), into the multipliers' input registers
        m.d.comb += self.operand.eq(((values[0] - sizes.rounding) << shift)[:cfg.acc_width]
                                    .as_signed())

        # their sum, with the rounding constant 2**(SH - 1) put into bits that the first
        # product leaves zero when it can (the output is then a pure saturation)
        SH, CH = sizes.renorm_shift, PB + 1
        products = [self.products[f"p{k}"] for k in range(len(self.chunks))]
        free_round = SH - 1 >= len(products[0])
        first = products[0] | (1 << (SH - 1)) if free_round else products[0]
        width = cfg.acc_width + PB + 2
        low = Signal(signed(width), name="l4_s", reset_less=True)
        high = Signal.like(products[-1], name="l4_hi", reset_less=True)
        total = Signal(signed(width), name="l5_p", reset_less=True)
        m.d.sync += [low.eq(first + (products[1] << CH)), high.eq(products[-1])]
        if len(self.chunks) == 3:
            m.d.sync += total.eq(low + (high << (2 * CH)))
        else:
            m.d.sync += total.eq(low)
        if free_round:
            m.d.comb += self.result.eq(saturate(total[SH:].as_signed(), cfg.out_width))
        else:
            m.d.comb += self.result.eq(saturate_increment(total[SH:].as_signed(),
                                                          total[SH - 1], cfg.out_width))
        return m
