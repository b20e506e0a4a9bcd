"""The prob x V array's accumulators: one per multiplier, summing the products of a query's
words, with the side information of the words (registers R2, R3) beside them."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..common.fanout import copies
from .pv_common import ProbVSizes, issued_word_layout

__all__ = ["Accumulators", "arriving_layout"]


def arriving_layout(sizes: ProbVSizes) -> data.StructLayout:
    """A word's side information at R2 and R3: ``valid``, ``last`` (the query's last word),
    the query's renorm, d_log2 and kept-probability sum."""
    return data.StructLayout({
        "valid": 1,
        "last": 1,
        "renorm": 1,
        "d_log2": range(sizes.mults_log2 + 1),
        "psum": sizes.cfg.psum_width,
    })


class Accumulators(wiring.Component):
    """Mv accumulators: lane e adds the products of multiplier e, word after word, from a
    query's first word to its last; the sums then go to the fold register.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`; the accumulators are
    `ProbVSizes.sum_width`
        bits)

    Ports
    -----
    word : In(issued_word_layout(sizes))
        R1, the issued word (`WordIssue.word`).
    products : In(ArrayLayout(signed(W + 16), Mv))
        The multipliers' products of the word at R1 two cycles earlier (their inputs are
        registered at R2, their products at R3).
    sums : Out(ArrayLayout(signed(sum_width), Mv))
        Each accumulator plus its product: at the query's last word (``arriving.last``) the
        query's sums, which the fold register takes at the end of that cycle.
    arriving : Out(arriving_layout(sizes))
        R3: the side information of the word whose products are in ``products``.
    last_in_flight : Out(1); busy : Out(1)
        A query's last word, or any word, is at R2 or R3.
    load_next : Out(1)
        A copy of R2's ``last`` in a register of its own: the fold register loads the sums at
        the end of the next cycle (its per-lane load enables are taken from this).

    Arithmetic: each accumulator is cleared after a query's last word has left it (and after
    a reset), and set as a query's first word reaches R2 to the rounding constant 2**(15 -
    out_frac_bits) in the lanes e < d (0 above), so that each folded column holds its exact sum
    plus that constant once. No stall: every word is added in its cycle.
    """

    #: registers of a word's side information here (R2, R3), beside the multipliers'
    STAGES = 2

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        cfg = sizes.cfg
        Mv, product_width = cfg.pv_mults, cfg.data_width + cfg.prob_bits
        super().__init__({
            "word": In(issued_word_layout(sizes)),
            "products": In(data.ArrayLayout(signed(product_width), Mv)),
            "sums": Out(data.ArrayLayout(signed(sizes.sum_width), Mv)),
            "arriving": Out(arriving_layout(sizes)),
            "last_in_flight": Out(1),
            "busy": Out(1),
            "load_next": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        Mv, word = cfg.pv_mults, self.word

        # R2 (the multipliers' inputs), R3 (their products)
        side = arriving_layout(sizes)
        r2, r3 = Signal(side, name="r2"), Signal(side, name="r3")
        m.d.sync += [r2.valid.eq(word.valid), r2.last.eq(word.last), r2.d_log2.eq(word.d_log2),
                     r2.renorm.eq(word.renorm), r2.psum.eq(word.psum), r3.eq(r2)]
        m.d.comb += [self.arriving.eq(r3), self.last_in_flight.eq(r2.last | r3.last),
                     self.busy.eq(r2.valid | r3.valid)]

        # cleared (per-lane copies of R3's last, set by a reset) when a query's last word has
        # left them for F, and after a reset (the copies of R2's last take it from a register of
        # their own, so that their loads across the array do not pull R2 away from the issue)
        load_next = copies(m, platform, word.last, 1, "r2_last_fan")[0]
        m.d.comb += self.load_next.eq(load_next)
        clear = copies(m, platform, load_next | ResetSignal("sync"), Mv, "acc_clr", init=1)
        # ... and set, as a query's first word reaches R2 (the accumulators are then free or
        # being cleared), to the rounding constant in the lanes e < d of that query and 0 above
        start = copies(m, platform, word.first, Mv, "acc_init")
        bias = [start[e] if e < 8 else
                copies(m, platform, word.first & (word.d_log2 >= e.bit_length()), 1,
                       f"acc_bias{e}_")[0] for e in range(Mv)]
        for e in range(Mv):
            acc = Signal(signed(sizes.sum_width), name=f"acc{e}", reset_less=True)
            total = Signal(signed(sizes.sum_width), name=f"accsum{e}")
            m.d.comb += [total.eq(acc + self.products[e]), self.sums[e].eq(total)]
            with m.If(clear[e] | start[e]):
                m.d.sync += acc.eq(Mux(bias[e], sizes.rounding, 0))
            with m.Else():
                m.d.sync += acc.eq(total)
        return m
