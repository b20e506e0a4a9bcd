"""The prob x V array's output register: one beat per query, loaded from the fold register at
once, or column by column from the renormalisation lane."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.fanout import copies
from .pv_common import MIN_D_LOG2, ProbVSizes, output_layout, saturate

__all__ = ["OutputRegister"]


class OutputRegister(wiring.Component):
    """The ``o`` register of `hw.attention.pv.ProbV`: data[j] for j < d, 0 above, and the query's
    psum.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`)

    Ports
    -----
    o : Out(stream.Signature(output_layout(config)))
        The beats (valid and payload from registers).
    free : Out(1); valid : Out(1)
        The register may be loaded in this cycle (empty, or being taken); it holds a beat.
    columns : In(ArrayLayout(signed(sum_width), Mv)); loaded : In(Mv)
        The fold register and its per-lane load enables (`FoldRegister`).
    d_log2, d_log2_next, psum : In
        The fold register's query: its d_log2 (and its next value) and psum.
    to_output, to_lane, output_next, lane_next : In(1)
        The fold register moves into this register (data[j] = sat(F[j] >> (16 -
        out_frac_bits)): F carries the rounding constant) / the lane starts (the register is
        cleared), and what each will be in the next cycle but for the terms of a lane's own
        (`FoldRegister`); each lane takes registered copies.
    lane_valid, lane_done : In(1); lane_result : In(signed(out_width)); lane_psum : In
        The renormalisation lane's results: each shifts in at lane d - 1 (d of the lane's
        query) and on down to lane 0, so that d shifts put column j in lane j; done with the
        last, which completes the beat.

    Every control that reaches every lane is a registered copy per lane (`hw.common.fanout.copies`),
    so that no net but ``o.ready`` crosses the array.
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        cfg = sizes.cfg
        Mv, LMV = cfg.pv_mults, sizes.mults_log2
        super().__init__({
            "o": Out(stream.Signature(output_layout(cfg))),
            "free": Out(1),
            "valid": Out(1),
            "columns": In(data.ArrayLayout(signed(sizes.sum_width), Mv)),
            "loaded": In(Mv),
            "d_log2": In(range(LMV + 1)),
            "d_log2_next": In(range(LMV + 1)),
            "psum": In(cfg.psum_width),
            "to_output": In(1),
            "to_lane": In(1),
            "output_next": In(1),
            "lane_next": In(1),
            "lane_valid": In(1),
            "lane_done": In(1),
            "lane_result": In(signed(cfg.out_width)),
            "lane_psum": In(cfg.psum_width),
        })

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        Mv, OW = cfg.pv_mults, cfg.out_width
        valid = Signal(name="o_v")
        column_out = [Signal(signed(OW), name=f"o_data{e}") for e in range(Mv)]
        psum = Signal(cfg.psum_width, name="o_psum")
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.psum.eq(psum), self.valid.eq(valid),
                     self.free.eq(~valid | self.o.ready)]
        m.d.comb += [self.o.payload.data[e].eq(column_out[e]) for e in range(Mv)]

        # Lanes >= d, and every lane when the lane starts, are cleared (synchronous resets).
        # (top: copies of lane_d_log2 == log2(e + 1), a cycle late: the first output of a lane
        # run comes pv_lane_depth + 1 cycles after its start)
        lane_d_log2 = Signal(range(sizes.mults_log2 + 1), name="lane_dl")
        with m.If(self.to_lane):
            m.d.sync += lane_d_log2.eq(self.d_log2)
        output_next = copies(m, platform, self.output_next, Mv, "o_pre_q")
        lane_next = copies(m, platform, self.lane_next, Mv, "ap_pre_q")
        loaded = [copies(m, platform, self.loaded[e], 1, f"f_loaded{e}_")[0] for e in range(Mv)]
        valid_next = Signal(name="o_v_nx")
        m.d.comb += valid_next.eq(Mux(self.to_output, 1, Mux(self.to_lane, 0, Mux(
            self.lane_done, 1, valid & ~self.o.ready))))
        m.d.sync += valid.eq(valid_next)
        valid_copy = copies(m, platform, valid_next, Mv, "o_valid")
        for e in range(Mv):
            b = e.bit_length()
            keep = (copies(m, platform, self.d_log2_next >= b, 1, f"o_keep{e}_")[0]
                    if b > MIN_D_LOG2 else Const(1))
            top = (copies(m, platform, lane_d_log2 == b, 1, f"o_top{e}_")[0]
                   if b >= MIN_D_LOG2 and e == (1 << b) - 1 else Const(0))
            load, clear = Signal(name=f"o_ld{e}"), Signal(name=f"ap_start{e}")
            loaded_before = Signal(name=f"o_ld{e}_q")
            cleared_before = Signal(name=f"ap_start{e}_q")
            free = ~valid_copy[e] | self.o.ready
            m.d.comb += [load.eq(output_next[e] & ~(loaded_before & ~loaded[e]) & free),
                         clear.eq(lane_next[e] & ~cleared_before & free)]
            m.d.sync += [loaded_before.eq(load), cleared_before.eq(clear)]
            rounded = saturate(self.columns[e][sizes.plain_shift:].as_signed(), OW)
            shift_in = column_out[e + 1] if e + 1 < Mv else Const(0, signed(OW))
            with m.If(clear | (load & ~keep)):
                m.d.sync += column_out[e].eq(0)
            with m.Elif(load):
                m.d.sync += column_out[e].eq(rounded)
            with m.Elif(self.lane_valid):
                m.d.sync += column_out[e].eq(Mux(top, self.lane_result, shift_in))
        with m.If(self.to_output):
            m.d.sync += psum.eq(self.psum)
        with m.Elif(~self.to_lane & self.lane_done):
            m.d.sync += psum.eq(self.lane_psum)
        return m
