"""The prob x V array's fold register F: a query's sums, folded column-wise, then handed to the
output register or to the renormalisation lane."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..common.fanout import copies
from .pv_accumulate import arriving_layout
from .pv_common import ProbVSizes

__all__ = ["FoldRegister"]


class FoldRegister(wiring.Component):
    """F: takes a query's Mv sums, folds its row-slots into d columns in log2(Mv/d) cycles
    (F[e] += F[e + h], h = Mv/2, Mv/4, .., d), then hands them on: into the output register
    (without renorm) or to the renormalisation lane (with renorm, once the reciprocal is ready),
    when that is free.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`)

    Ports
    -----
    sums : In(ArrayLayout(signed(sum_width), Mv)); arriving : In(arriving_layout(sizes))
        The accumulators' sums and R3's side information (`Accumulators`): F loads the sums at
        the end of a cycle with ``arriving.last``.
    load_next : In(1)
        ``arriving.last`` of the next cycle (`Accumulators.load_next`): F's per-lane load
        enables are registered copies of it.
    lane_busy, lane_done, lane_reading : In(1); lane_columns_left : In(range(Mv))
        The renormalisation lane: busy, its last result written this cycle, reading F (with
        this many columns left after this one).
    recip_ready : In(1)
        The reciprocal of the query in F (or arriving) is ready by the next cycle.
    out_free : In(1)
        The output register may be loaded in this cycle.
    columns : Out(ArrayLayout(signed(sum_width), Mv))
        F (column j of the folded query in F[j], j < d, with the rounding constant).
    holding, renorm : Out(1); steps_left : Out(range(log2(Mv/8) + 1))
        F holds a query (released when it has gone to the output register, or when the lane
        reads its last column), whether it is renormalised, fold steps left.
    d_log2, d_log2_next : Out(range(log2 Mv + 1)); psum : Out(psum_width);
    last_column : Out(range(Mv))
        The query's d_log2 (and its next value), kept-probability sum, d - 1.
    loaded : Out(Mv)
        Per-lane copies of F's load enable (the output register's lanes take them).
    to_output, to_lane : Out(1)
        F moves into the output register / the lane starts, in this cycle.
    output_next, lane_next : Out(1)
        Registered copies of these in each lane of the output register are taken from these:
        what the next cycle's to_output / to_lane are, but for the terms the lanes add.

    Timing: F is loaded at the end of the cycle with ``arriving.last``, folds in the next
    log2(Mv/d) cycles and moves on the cycle after (when the output register or the lane and
    the reciprocal allow). The controls that reach every lane (load, fold step and its select)
    are registered copies per lane (`hw.common.fanout.copies`).
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        cfg = sizes.cfg
        Mv, LMV = cfg.pv_mults, sizes.mults_log2
        column = signed(sizes.sum_width)
        super().__init__({
            "sums": In(data.ArrayLayout(column, Mv)),
            "arriving": In(arriving_layout(sizes)),
            "load_next": In(1),
            "lane_busy": In(1),
            "lane_done": In(1),
            "lane_reading": In(1),
            "lane_columns_left": In(range(Mv)),
            "recip_ready": In(1),
            "out_free": In(1),
            "columns": Out(data.ArrayLayout(column, Mv)),
            "holding": Out(1),
            "renorm": Out(1),
            "steps_left": Out(range(sizes.slot_bits + 1)),
            "d_log2": Out(range(LMV + 1)),
            "d_log2_next": Out(range(LMV + 1)),
            "psum": Out(cfg.psum_width),
            "last_column": Out(range(Mv)),
            "loaded": Out(Mv),
            "to_output": Out(1),
            "to_lane": Out(1),
            "output_next": Out(1),
            "lane_next": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        Mv, LMV, GB = cfg.pv_mults, sizes.mults_log2, sizes.slot_bits
        new = self.arriving                    # the query arriving (when new.last)
        F = [Signal(signed(sizes.sum_width), name=f"F{e}", reset_less=True) for e in range(Mv)]
        holding, renorm = Signal(name="f_v"), Signal(name="f_rn")
        d_log2 = Signal(range(LMV + 1), name="f_dl")
        steps_left = Signal(range(GB + 1), name="f_rem")
        steps_done = Signal(range(GB + 1), name="f_lvl")
        folding = Signal()                      # steps_left != 0
        m.d.comb += [self.columns[e].eq(F[e]) for e in range(Mv)]
        m.d.comb += [self.holding.eq(holding), self.renorm.eq(renorm),
                     self.steps_left.eq(steps_left), self.d_log2.eq(d_log2)]
        with m.If(new.last):
            m.d.sync += [self.psum.eq(new.psum), self.last_column.eq((1 << new.d_log2) - 1)]

        # the fold: the partner of lane e at step k is e + Mv/2**(k+1); lanes at or above that
        # step's half keep adding (garbage nobody reads), so lane e only chooses among the
        # steps with e < Mv/2**(k+1), and the last of them needs no choice. Loads and fold
        # steps are per-lane copies of their enables.
        folding_next = Signal(name="folding_nx")
        steps_done_next = Signal.like(steps_done, name="f_lvl_nx")
        m.d.comb += [
            folding_next.eq(Mux(new.last, new.d_log2 != LMV,
                                Mux(folding, steps_left != 1, folding))),
            steps_done_next.eq(Mux(new.last, 0, Mux(folding, steps_done + 1, steps_done))),
            self.d_log2_next.eq(Mux(new.last, new.d_log2, d_log2)),
        ]
        load = copies(m, platform, self.load_next, Mv, "f_load")
        m.d.comb += self.loaded.eq(Cat(load))
        fold = copies(m, platform, folding_next, Mv // 2, "f_fold")
        partner = {}
        for e in range(Mv // 2):
            steps = [k for k in range(GB) if e < Mv >> (k + 1)]
            if not steps:                       # Mv = 8: d = Mv always, nothing to fold
                continue
            partner[e] = Signal(signed(sizes.sum_width), name=f"fold_add{e}")
            m.d.comb += partner[e].eq(F[e + (Mv >> (steps[-1] + 1))])
            if len(steps) > 1:
                select = copies(m, platform, Cat(steps_done_next == k for k in steps[:-1]), 1,
                                f"f_step{e}_")[0]
                for i, k in reversed(list(enumerate(steps[:-1]))):
                    with m.If(select[i]):
                        m.d.comb += partner[e].eq(F[e + (Mv >> (k + 1))])
        for e in range(Mv):
            with m.If(load[e]):
                m.d.sync += F[e].eq(self.sums[e])
            if e in partner:
                with m.Elif(fold[e]):
                    m.d.sync += F[e].eq(F[e] + partner[e])
        m.d.sync += [folding.eq(folding_next), steps_done.eq(steps_done_next),
                     d_log2.eq(self.d_log2_next)]

        # F moves into the output register, or the lane starts, when F has folded, the lane is
        # idle and the output register free; to_output_early / to_lane_early (registered, one
        # copy per lane) say all but the last
        to_output_early, to_lane_early = Signal(name="o_pre"), Signal(name="ap_pre")
        m.d.comb += [self.to_output.eq(to_output_early & self.out_free),
                     self.to_lane.eq(to_lane_early & self.out_free)]
        # F is released when its contents have gone to the output register (or into the lane)
        lane_last_read = self.lane_reading & (self.lane_columns_left == 0)
        m.d.sync += [
            holding.eq(new.last | (holding & ~(self.to_output | lane_last_read))),
            renorm.eq(Mux(new.last, new.renorm, renorm)),
            steps_left.eq(Mux(new.last, LMV - new.d_log2,
                              Mux(folding, steps_left - 1, steps_left))),
        ]
        # to_output_early = next holding & ~renorm & (steps_left == 0) & ~lane_busy, and
        # to_lane_early the same with renorm & recip_ready, computed as output_next &
        # ~(to_output & ~new.last) and lane_next & ~to_lane, where the parts in *_next depend on
        # no input (the output register's per-lane copies take them registered, and to_output,
        # to_lane from their own lane). Used: F's release by the lane's last read needs no term
        # (the lane is busy then); folding = (steps_left != 0); a query's last word never
        # reaches F as the lane starts (a word that could was not granted), and to_lane needs
        # renorm.
        folded = Signal(name="f_fin")         # F holds a query, folded by the next cycle
        lane_stays = Signal(name="lb_hold")   # the lane stays busy unless it starts
        m.d.comb += [
            folded.eq(Mux(new.last, new.d_log2 == LMV, holding & (steps_left <= 1))),
            lane_stays.eq(self.lane_busy & ~self.lane_done),
            self.output_next.eq(~lane_stays & folded & Mux(new.last, ~new.renorm, ~renorm)),
            self.lane_next.eq(~lane_stays & folded & self.recip_ready &
                              Mux(new.last, new.renorm, renorm)),
        ]
        m.d.sync += [to_output_early.eq(self.output_next & ~(self.to_output & ~new.last)),
                     to_lane_early.eq(self.lane_next & ~self.to_lane)]
        return m
