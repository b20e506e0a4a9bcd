"""The front of the prob x V array: kept pairs into runs of pairs that share a V word
(`PairRuns`: stages A and B), and one V word issued a cycle (`WordIssue`: stage C and R1)."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.fanout import copies
from .pv_common import (
    MIN_D_LOG2,
    ProbVSizes,
    input_layout,
    issued_word_layout,
    pairwise_sums,
    run_beat_layout,
)

__all__ = ["PairRuns", "WordIssue"]


class PairRuns(wiring.Component):
    """Stages A and B: each input beat's pairs with their V words and row-slots (A), then their
    runs (B: consecutive kept pairs in one word share a run number), and the beat's probability
    sum.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`)

    Ports
    -----
    i : In(stream.Signature(input_layout(config))); d_log2 : In; renorm : In(1)
        As `hw.attention.pv.ProbV`'s (d_log2 clamped to 3 .. log2 Mv and renorm sampled at a query's
        first beat, kept for its other beats).
    runs : Out(stream.Signature(run_beat_layout(sizes)))
        The beats with their runs, in order (word of pair j: index >> log2(Mv/d); row-slot: the
        low bits; probability 0 for pairs at and above the count).
    busy : Out(1)
        A beat is in A or B.

    Timing: an elastic two-stage pipeline, both stages registers: a beat accepted in cycle t is
    offered on ``runs`` from t + 2; one beat a cycle. ``i.ready`` is high when A is empty or
    hands its beat to B in the same cycle.
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        super().__init__({
            "i": In(stream.Signature(input_layout(sizes.cfg))),
            "d_log2": In(range(sizes.mults_log2 + 1)),
            "renorm": In(1),
            "runs": Out(stream.Signature(run_beat_layout(sizes))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        S, LMV, PB = cfg.softmax_lanes, sizes.mults_log2, cfg.prob_bits
        levels_a = (sizes.psum_levels + 1) // 2       # of the probability sum's tree, in A
        pairs = range(S)

        # the query's registers: sampled at its first beat
        in_first = Signal(init=1)            # the next input beat starts a packet
        query_d_log2 = Signal(range(LMV + 1), init=MIN_D_LOG2, name="q_dl")
        query_renorm = Signal(name="q_rn")
        clamped = Mux(self.d_log2 < MIN_D_LOG2, MIN_D_LOG2, Mux(self.d_log2 > LMV, LMV,
                                                                 self.d_log2))
        d_log2 = Signal(range(LMV + 1), name="dl_now")
        renorm = Signal(name="rn_now")
        m.d.comb += [d_log2.eq(Mux(in_first, clamped, query_d_log2)),
                     renorm.eq(Mux(in_first, self.renorm, query_renorm))]

        # each pair's word and row-slot, probability (0 unless kept)
        beat = self.i.payload
        word = [Signal(cfg.index_width, name=f"w_in{j}") for j in pairs]
        slot = [Signal(sizes.slot_width, name=f"s_in{j}") for j in pairs]
        with m.Switch(d_log2):
            for dl in range(MIN_D_LOG2, LMV + 1):
                shift = LMV - dl
                with (m.Default() if dl == LMV else m.Case(dl)):
                    for j in pairs:
                        m.d.comb += word[j].eq(beat.index[j] >> shift)
                        if shift:
                            m.d.comb += slot[j].eq(beat.index[j][:shift])
        kept = [Signal(name=f"pv_in{j}") for j in pairs]
        prob = [Signal(PB, name=f"p_in{j}") for j in pairs]
        m.d.comb += [kept[j].eq(beat.count > j) for j in pairs]
        m.d.comb += [prob[j].eq(Mux(kept[j], beat.prob[j], 0)) for j in pairs]

        # stage A: the pairs, and the first levels of their probability sum
        a_valid = Signal(name="a_v")
        a = Signal(run_beat_layout(self.sizes), name="a")      # (segment fields unused)
        part_in = pairwise_sums(prob, levels_a)
        part = [Signal(PB + levels_a, name=f"a_part{k}") for k in range(len(part_in))]

        # stage B: the runs (the ``runs`` register)
        b_valid = Signal(name="b_v")
        b = Signal(run_beat_layout(self.sizes), name="b")
        m.d.comb += [self.runs.valid.eq(b_valid), self.runs.payload.eq(b),
                     self.busy.eq(a_valid | b_valid)]

        b_take = Signal()   # A -> B
        a_take = Signal()   # input -> A
        m.d.comb += [b_take.eq(a_valid & (~b_valid | (self.runs.valid & self.runs.ready))),
                     self.i.ready.eq(~a_valid | b_take),
                     a_take.eq(self.i.valid & self.i.ready)]

        with m.If(a_take):
            m.d.sync += [a_valid.eq(1), in_first.eq(beat.last), query_d_log2.eq(d_log2),
                         query_renorm.eq(renorm), a.count.eq(beat.count), a.first.eq(in_first),
                         a.last.eq(beat.last), a.d_log2.eq(d_log2), a.renorm.eq(renorm)]
            m.d.sync += [[a.word[j].eq(word[j]), a.slot[j].eq(slot[j]), a.prob[j].eq(prob[j]),
                          a.kept[j].eq(kept[j])] for j in pairs]
            m.d.sync += [r.eq(v) for r, v in zip(part, part_in, strict=True)]
        with m.Elif(b_take):
            m.d.sync += a_valid.eq(0)

        # runs of pairs in one word get consecutive segment numbers: a prefix sum of the starts
        starts = [Const(0, 1)] + [a.kept[j] & (a.word[j] != a.word[j - 1]) for j in pairs[1:]]
        segment = list(starts)
        step = 1
        while step < S:     # Hillis-Steele
            segment = [segment[j] + segment[j - step] if j >= step else segment[j]
                       for j in pairs]
            step *= 2
        with m.If(b_take):
            m.d.sync += [b_valid.eq(1), b.last_segment.eq(segment[S - 1]),
                         b.psum.eq(pairwise_sums(part, sizes.psum_levels - levels_a)[0]),
                         b.count.eq(a.count), b.first.eq(a.first), b.last.eq(a.last),
                         b.d_log2.eq(a.d_log2), b.renorm.eq(a.renorm)]
            m.d.sync += [[b.segment[j].eq(segment[j]), b.word[j].eq(a.word[j]),
                          b.slot[j].eq(a.slot[j]), b.prob[j].eq(a.prob[j]),
                          b.kept[j].eq(a.kept[j])] for j in pairs]
        with m.Elif(self.runs.valid & self.runs.ready):
            m.d.sync += b_valid.eq(0)
        return m


class WordIssue(wiring.Component):
    """Stage C and R1: issues one V word a cycle, the current run of the current beat (its
    pairs' probabilities going to the blocks of multipliers that hold their rows), a query's
    last word only when ``grant`` is high.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
    p_sum_bits : None or int (see `hw.attention.pv.ProbV`)

    Ports
    -----
    runs : In(stream.Signature(run_beat_layout(sizes)))
        Beats with their runs (`PairRuns`). A beat is taken as the last run of the previous
        one issues, except after a query's last beat: then C empties first (a cycle).
    grant : In(1)
        The query's last word may be issued in this cycle.
    read_addr : Out(index_width); read_enable : Out(1)
        The V buffer's read: the issued word (enable only when the run has kept pairs).
    word : Out(issued_word_layout(sizes))
        R1: the word issued in the previous cycle (its V data arrives in this cycle).
    word_read : Out(min(8, Mv))
        R1: a V word was read (one registered copy per fold group, the multipliers' load
        enables).
    macs : Out(32)
        Multiply-accumulates since reset (d per kept pair), wrapping.
    busy : Out(1)
        A beat is in C.

    Timing: a beat taken in cycle t issues its runs in t + 1, t + 2, .. (one a cycle, at least
    one per beat), a query's last run waiting for ``grant``; ``runs.ready`` depends on no input.
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        cfg = sizes.cfg
        super().__init__({
            "runs": In(stream.Signature(run_beat_layout(sizes))),
            "grant": In(1),
            "read_addr": Out(cfg.index_width),
            "read_enable": Out(1),
            "word": Out(issued_word_layout(sizes)),
            "word_read": Out(min(8, cfg.pv_mults)),
            "macs": Out(32),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        sizes, cfg = self.sizes, self.sizes.cfg
        S, LMV, PB = cfg.softmax_lanes, sizes.mults_log2, cfg.prob_bits
        pairs, blocks = range(S), range(sizes.blocks)
        run = self.runs.payload

        c_valid = Signal(name="c_v")
        c = Signal(run_beat_layout(sizes), name="c")           # (slot unused: see in_block)
        current = Signal(sizes.segment_shape, name="c_cnt")    # the run being issued
        final = Signal(name="c_fin")                           # it is the beat's last
        first = Signal(name="c_first")        # the beat starts a query, not yet issued
        # in_block[j][b]: pair j's row-slot is the one of block b (multipliers 8b .. 8b+7)
        in_block = [Signal(sizes.blocks, name=f"c_bm{j}") for j in pairs]
        psum = Signal(cfg.psum_width, name="psum_q")          # the query's probabilities so far
        macs = Signal(32)
        m.d.comb += [self.macs.eq(macs), self.busy.eq(c_valid)]

        # the issue: the pairs of the current run, their word, each block's probability
        match = [Signal(name=f"match{j}") for j in pairs]
        m.d.comb += [match[j].eq(c.kept[j] & (c.segment[j] == current)) for j in pairs]
        block_prob = []
        for b in blocks:
            terms = [Mux(match[j] & in_block[j][b], c.prob[j], 0) for j in pairs]
            value = terms[0]
            for t in terms[1:]:
                value = value | t
            bp = Signal(PB, name=f"bp_now{b}")
            m.d.comb += bp.eq(value)
            block_prob.append(bp)
        address = Mux(match[0], c.word[0], 0)
        for j in pairs[1:]:
            address = address | Mux(match[j], c.word[j], 0)
        any_match = Signal()
        last_op = Signal()
        issue = Signal()
        done = Signal()
        m.d.comb += [any_match.eq(Cat(*match).any()),
                     last_op.eq(c.last & final),
                     issue.eq(c_valid & (~last_op | self.grant)),
                     done.eq(issue & final),
                     self.read_enable.eq(issue & any_match),
                     self.read_addr.eq(address),
                     self.runs.ready.eq(~c_valid | (final & ~c.last))]

        with m.If(self.runs.valid & self.runs.ready):
            m.d.sync += [c_valid.eq(1), current.eq(0), final.eq(run.last_segment == 0),
                         c.last_segment.eq(run.last_segment), c.last.eq(run.last),
                         c.d_log2.eq(run.d_log2), c.renorm.eq(run.renorm), first.eq(run.first),
                         psum.eq(Mux(run.first, 0, psum) + run.psum),
                         macs.eq(macs + (run.count << run.d_log2))]
            for j in pairs:
                m.d.sync += [c.segment[j].eq(run.segment[j]), c.word[j].eq(run.word[j]),
                             c.prob[j].eq(run.prob[j]), c.kept[j].eq(run.kept[j])]
                with m.Switch(run.d_log2):
                    for dl in range(MIN_D_LOG2, LMV + 1):
                        with (m.Default() if dl == LMV else m.Case(dl)):
                            m.d.sync += [in_block[j][b].eq(run.slot[j] == (b >> (dl - MIN_D_LOG2)))
                                         for b in blocks]
        with m.Elif(done):
            m.d.sync += [c_valid.eq(0), first.eq(0)]
        with m.Elif(issue):
            m.d.sync += [current.eq(current + 1), final.eq(current + 1 == c.last_segment),
                         first.eq(0)]

        # R1: the issued word; the multipliers' load enables (a V word is being read, its data
        # next cycle): a copy per fold group (lanes of equal e mod 8, neighbours on the FPGA:
        # fpga/floorplan.py)
        word = Signal(issued_word_layout(sizes), name="r1")
        m.d.comb += self.word.eq(word)
        m.d.sync += [word.valid.eq(issue), word.last.eq(issue & last_op),
                     word.first.eq(issue & first)]
        m.d.comb += self.word_read.eq(Cat(copies(m, platform, issue & any_match,
                                                 min(8, cfg.pv_mults), "r1_rd_g")))
        m.d.sync += [word.block_prob[b].eq(Mux(issue, block_prob[b], 0)) for b in blocks]
        with m.If(issue):
            m.d.sync += [word.d_log2.eq(c.d_log2), word.renorm.eq(c.renorm), word.psum.eq(psum)]
        return m
