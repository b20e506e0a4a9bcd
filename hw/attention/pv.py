"""The prob x V array: Mv multipliers that weight the kept V rows of one query by their
probabilities and sum them into one output row (`ProbV`).

Its sub-units: `hw.attention.pv_issue` (PairRuns: the pairs' words and runs; WordIssue: one V word a
cycle), `hw.attention.pv_accumulate` (Accumulators), `hw.attention.pv_fold` (FoldRegister),
`hw.common.recip` (Reciprocal, with renorm), `hw.attention.pv_lane` (RenormLane),
`hw.attention.pv_output` (OutputRegister); the multipliers are this unit's own submodules
(``mul{e}``, ``lane_mul{k}``: fpga/floorplan.py pins them by these names). Shared layouts
(`input_layout`, `output_layout`, `v_word_layout`) are in `hw.attention.pv_common`.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..common.dsp import Multiplier
from ..common.recip import Reciprocal
from .pv_accumulate import Accumulators
from .pv_common import (
    MIN_D_LOG2,
    ProbVSizes,
    input_layout,
    log2,
    output_layout,
    v_depth,
    v_word_layout,
)
from .pv_fold import FoldRegister
from .pv_issue import PairRuns, WordIssue
from .pv_lane import RenormLane
from .pv_output import OutputRegister

__all__ = ["ProbV", "input_layout", "output_layout", "v_word_layout", "v_depth", "pv_latency"]

#: quotient bits the reciprocal unit computes a cycle (of prob_bits + 2)
DIV_STEPS = 1


def pv_latency(cfg: AttentionConfig, d: int, renorm: bool = False) -> int:
    """Cycles from the transfer of a one-beat query whose pairs fall in one V word to its ``o``
    beat, nothing else in flight: 8 + log2(Mv/d), or 4 + pv_recip_ready + pv_lane_depth + d
    with renorm (the latencies of the config)."""
    if renorm:
        return 4 + cfg.pv_recip_ready + cfg.pv_lane_depth + d
    return 8 + log2(cfg.pv_mults // d)


class ProbV(wiring.Component):
    """out = golden.attention.pv(cfg, p_kept, V[kept, :d], renorm).out for each query, bit-exact.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)
        W = data_width, Mv = pv_mults, S = softmax_lanes, N = capacity, fb = out_frac_bits,
        acc_width, psum_width, out_width = W + fb.

    Ports
    -----
    i : In(stream.Signature(input_layout(cfg)))
        The kept (index, probability) pairs of one query in ascending index order, one packet per
        query: every beat full (count = S) except the last (last = 1, count 1..S); a query that
        keeps nothing is one beat with count = 0, last = 1. Lanes >= count are ignored.
    d_log2 : In(range(log2(Mv) + 1))
        log2 of the head dimension d, sampled at a packet's first beat (clamped to 3..log2 Mv).
    renorm : In(1)
        Divide by the sum of the kept probabilities instead of 2**16; sampled at a first beat.
    v_rd : In(ReadPort.Signature(addr_width=ceil(log2(N)), shape=ArrayLayout(signed(W), Mv)))
        Synchronous read port of the V buffer (data the cycle after ``en``/``addr``; depth
        `v_depth` = N words: every index < N at every d). ``en`` is high exactly in the cycles
        that read a word.
    o : Out(stream.Signature(output_layout(cfg)))
        One beat per query, in order: ``data[j]`` = out[j] (S(out_width), v's scale /
        2**out_frac_bits) for j < d, 0 above; ``psum`` = the sum of the query's kept
        probabilities. ``o.valid`` and the payload come from registers.
    busy : Out(1)
        A query is in the unit (accepted and its ``o`` beat not yet transferred).
    macs : Out(32)
        Useful multiply-accumulates since reset (d per kept pair), wrapping.
    overflow : Out(1)
        With ``p_sum_bits``: a query whose kept probabilities summed to 2**p_sum_bits or more has
        been issued since reset (its output may have wrapped). Always 0 without.

    ``p_sum_bits`` (keyword-only, default None): the user promises that the kept probabilities
    of every query sum below 2**p_sum_bits; the accumulators, the fold register F and the
    renormalisation lane's read multiplexers are then W + p_sum_bits + 1 bits instead of
    acc_width (the query pipeline: the softmax's probabilities of a row sum below
    2**16 + 2 + n/2, so 17 bits, 30 instead of 38 at the default formats).

    Throughput. Each cycle the array takes, from the current input beat, the run of its remaining
    pairs that fall into one V word (at most gv = Mv/d of them), reads that word, multiplies each
    of its gv rows by the row's probability (0 for rows not in the run) and adds the Mv products
    into Mv per-lane accumulators (lane e holds column e mod d of row-slot e div d). A beat thus
    takes as many cycles as it touches V words (one cycle for an empty beat); a dense query
    (every index kept) takes ceil(n / min(gv, S)) cycles, n*d/Mv when gv <= S with the
    multipliers all busy. Consecutive queries cost one cycle more each: the issue stage empties
    after a query's last beat (so that no handshake waits on the fold register). A query's last
    word is issued only when nothing else is on its way to the fold register F and F is sure to
    be free when the word reaches it (``config.pv_grant_lookahead`` cycles later), so queries of
    few words run at one per max(4, log2(gv) + 1) cycles (4.4 on average at gv = 8: every fifth
    query waits a cycle for the output register to drain), renormalised ones at one per
    d + pv_recip_ready - pv_grant_lookahead cycles (d + 19); longer queries run at one word a
    cycle.

    Latency (unstalled, nothing in flight). Stages A (word address and row-slot of each pair), B
    (runs: a segment number per pair), C (issue, one word a cycle, from the cycle after B); a
    word issued in cycle t is read (data at t+1), registered with its probabilities as
    multiplier inputs (t+2; multiplier e takes the probability of block e div 8, chosen at the
    issue), multiplied (products registered, t+3) and added into the accumulators in t+3; the
    query's last word moves the sums into F (the accumulators are cleared). F folds the
    row-slots column-wise in log2(gv) cycles (F[e] += F[e+h], h = Mv/2, Mv/4, .., d); the next
    cycle rounds and saturates F[e] / 2**(16 - out_frac_bits) into the output register. From
    the first beat's transfer to the ``o`` beat: `pv_latency` = 8 + log2(gv), plus the query's
    issue cycles - 1. With renorm the reciprocal of the probability sum is computed from the
    issue of the last word on (`hw.common.recip.Reciprocal`: count leading zeros, normalise to
    [2**15, 2**16), 18-bit quotient by restoring division, DIV_STEPS bits a cycle; ready
    ``config.pv_recip_ready`` cycles after that issue); then one column a cycle is read from F
    and goes through the ``config.pv_lane_depth`` registers of the lane (4:1 read multiplexers,
    multiplier inputs: the column shifted by the leading zeros, partial products of 17-bit
    chunks by the reciprocal, two adds; then saturate into the output register, where the
    columns shift in at lane d - 1 and on down to lane 0): `pv_latency` = 4 + pv_recip_ready +
    pv_lane_depth + d, plus the issue cycles - 1. The exact schedule is
    `spatten.golden.pv_cycles.pv_schedule`.

    Arithmetic: the accumulators hold the exact sums (acc_width bits) per lane, plus the rounding
    constant 2**(15 - fb) (fb = out_frac_bits) in the lanes e < d, set as a query's first word
    comes in, so that each folded column F[j] holds its sum plus that constant once. Without
    renorm, out = sat((sum + 2**(15 - fb)) >> (16 - fb)) is then F's upper bits, saturated. The
    renormalisation lane subtracts the constant from each column it reads. With renorm the column
    sum is first shifted left by
    s = psum_width - bit_length(psum) (exact and in range since |acc| <= 2**(W-1) psum), so the
    product by the reciprocal needs a constant final shift: out = sat(((acc << s) * recip +
    2**(SH - 1)) >> SH), SH = 15 - fb + psum_width: the golden formula scaled by 2**s (the
    rounding constant rides in bits the lowest partial product leaves zero).

    On an ECP5 platform (``platform.family == "ecp5"``) every multiplier is a MULT18X18D with
    its own input and output registers, and the controls that reach every lane (F's load and
    fold step, the accumulators' clear, the output register's load) are registered once per lane,
    the multipliers' load enable once per fold group and the renormalisation lane's first read
    select once per multiplexer (TRELLIS_FF instances next to their loads,
    `hw.common.fanout.copies`), so that no path crosses the array through more than one long net;
    elsewhere the same registers are inferred.

    Backpressure: ``o`` may stall at will; the pipeline behind a word read never stalls (the last
    word of a query waits for its fold slot instead); ``i.ready`` depends on no output and on no
    wait for the fold register.
    """

    def __init__(self, *, config, p_sum_bits=None):
        self.sizes = sizes = ProbVSizes.of(config, p_sum_bits)
        self.p_sum_bits = p_sum_bits
        self.config = cfg = sizes.cfg
        self.depth = v_depth(cfg)
        self.addr_width = max(1, (self.depth - 1).bit_length())
        #: the reciprocal unit of the last elaboration (a test watches it: it is idle whenever
        #: a renormalised query's last word starts it)
        self.reciprocal = None
        super().__init__({
            "i": In(stream.Signature(input_layout(cfg))),
            "d_log2": In(range(sizes.mults_log2 + 1)),
            "renorm": In(1),
            "v_rd": In(ReadPort.Signature(addr_width=self.addr_width, shape=v_word_layout(cfg))),
            "o": Out(stream.Signature(output_layout(cfg))),
            "busy": Out(1),
            "macs": Out(32),
            "overflow": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        Mv, W, PB, PW = cfg.pv_mults, cfg.data_width, cfg.prob_bits, cfg.psum_width
        units = dict(config=cfg, p_sum_bits=self.p_sum_bits)
        m.submodules.runs = runs = PairRuns(**units)
        m.submodules.issue = issue = WordIssue(**units)
        m.submodules.accumulators = acc = Accumulators(**units)
        m.submodules.fold = fold = FoldRegister(**units)
        m.submodules.reciprocal = self.reciprocal = recip = Reciprocal(
            value_width=PW, divisor_bits=PB, steps_per_cycle=DIV_STEPS, normalise_up=True,
            saturate=False)
        m.submodules.lane = lane = RenormLane(**units)
        m.submodules.output = out = OutputRegister(**units)
        # the config's latencies from the structure: the word's registers from the issue to F
        # (R1, R2, R3); the reciprocal from the issue: R1, the unit, the lane's start flag
        assert 1 + Accumulators.STAGES == cfg.pv_grant_lookahead
        assert 1 + recip.latency + 1 == cfg.pv_recip_ready, (recip.latency, cfg.pv_recip_ready)

        # pairs -> runs -> one word a cycle -> the multipliers -> the accumulators
        wiring.connect(m, wiring.flipped(self.i), runs.i)
        m.d.comb += [runs.d_log2.eq(self.d_log2), runs.renorm.eq(self.renorm)]
        wiring.connect(m, runs.runs, issue.runs)
        word = issue.word
        m.d.comb += [self.v_rd.addr.eq(issue.read_addr), self.v_rd.en.eq(issue.read_enable),
                     self.macs.eq(issue.macs), acc.word.eq(word)]
        # (V data is taken only from cycles that read, never the port's unread value)
        for e in range(Mv):
            mul = m.submodules[f"mul{e}"] = Multiplier(a_shape=signed(W), b_shape=unsigned(PB),
                                                       a_enable=True)
            m.d.comb += [mul.a.eq(self.v_rd.data[e]), mul.a_en.eq(issue.word_read[e % 8]),
                         mul.b.eq(word.block_prob[e >> MIN_D_LOG2]), acc.products[e].eq(mul.p)]

        # a query's last word is issued only when nothing else is on its way to F and F is
        # sure to be free when the word reaches it
        ahead = cfg.pv_grant_lookahead
        lane_done = lane.result_valid & lane.result_last
        m.d.comb += issue.grant.eq(~(word.last | acc.last_in_flight) & (
            ~fold.holding
            | (~fold.renorm & (fold.steps_left <= ahead) & ~out.valid & ~lane.busy)
            | (fold.renorm & lane.reading & (lane.columns_left <= ahead))))

        m.d.comb += [fold.sums.eq(acc.sums), fold.arriving.eq(acc.arriving),
                     fold.load_next.eq(acc.load_next), fold.lane_busy.eq(lane.busy),
                     fold.lane_done.eq(lane_done), fold.lane_reading.eq(lane.reading),
                     fold.lane_columns_left.eq(lane.columns_left),
                     fold.recip_ready.eq(~word.last & recip.o.valid), fold.out_free.eq(out.free)]

        # the reciprocal: started by a renormalised query's last word (at R1; the unit is idle
        # then: the previous one's lane has started, see the grant), taken by its lane's start
        m.d.comb += [recip.i.valid.eq(word.last & word.renorm), recip.i.payload.eq(word.psum),
                     recip.o.ready.eq(fold.to_lane)]

        m.d.comb += [lane.start.eq(fold.to_lane), lane.last_column.eq(fold.last_column),
                     lane.psum.eq(fold.psum), lane.recip.eq(recip.o.payload.recip),
                     lane.leading_zeros.eq(recip.o.payload.leading_zeros),
                     lane.columns.eq(fold.columns)]
        lane.add_multipliers(m)

        wiring.connect(m, out.o, wiring.flipped(self.o))
        m.d.comb += [out.columns.eq(fold.columns), out.loaded.eq(fold.loaded),
                     out.d_log2.eq(fold.d_log2), out.d_log2_next.eq(fold.d_log2_next),
                     out.psum.eq(fold.psum), out.to_output.eq(fold.to_output),
                     out.to_lane.eq(fold.to_lane), out.output_next.eq(fold.output_next),
                     out.lane_next.eq(fold.lane_next), out.lane_valid.eq(lane.result_valid),
                     out.lane_done.eq(lane_done), out.lane_result.eq(lane.result),
                     out.lane_psum.eq(lane.result_psum)]

        # a query whose kept probabilities reach 2**p_sum_bits may have wrapped: flagged
        overflow = Signal()
        m.d.comb += self.overflow.eq(overflow)
        if self.p_sum_bits is not None and self.p_sum_bits < PW:
            with m.If(word.last & (word.psum >= (1 << self.p_sum_bits))):
                m.d.sync += overflow.eq(1)
        m.d.comb += self.busy.eq(runs.busy | issue.busy | word.valid | acc.busy | fold.holding
                                 | lane.busy | out.valid)
        return m
