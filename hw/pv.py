"""The prob x V array: Mv multipliers that weight the kept V rows of one query by their
probabilities and sum them into one output row.

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

from amaranth.hdl import (
    Array,
    Cat,
    Const,
    Module,
    Mux,
    ResetSignal,
    Shape,
    Signal,
    signed,
    unsigned,
)
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .dsp import mult18x18d
from .fanout import copies
from .recip import Reciprocal

__all__ = ["ProbV", "input_layout", "output_layout", "v_word_layout", "v_depth", "pv_latency"]

MIN_D_LOG2 = 3
#: quotient bits the reciprocal unit computes a cycle (of prob_bits + 2)
DIV_STEPS = 1


def _log2(x: int) -> int:
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


def pv_latency(cfg: AttentionConfig, d: int, renorm: bool = False) -> int:
    """Cycles from the transfer of a one-beat query whose pairs fall in one V word to its ``o``
    beat, nothing else in flight: 8 + log2(Mv/d), or 4 + pv_recip_ready + pv_lane_depth + d
    with renorm (the latencies of the config)."""
    if renorm:
        return 4 + cfg.pv_recip_ready + cfg.pv_lane_depth + d
    return 8 + _log2(cfg.pv_mults // d)


def _tree(vals: list, levels: int) -> list:
    """`levels` levels of pairwise sums (each widening by one bit)."""
    for _ in range(levels):
        vals = [vals[2 * k] + vals[2 * k + 1] for k in range(len(vals) // 2)]
    return vals


def _sat(v, width: int):
    """v (a signed value) saturated to signed(width) (pure selection: its top bits decide)."""
    top = v[width - 1:]
    fits = top.all() | ~top.any()
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return Mux(fits, v[:width].as_signed(),
               Mux(v[-1], Const(lo, signed(width)), Const(hi, signed(width))))


def _sat_inc(v, inc, width: int):
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


class _Mul(wiring.Component):
    """p = a x b, two cycles: the operands are registered (``a`` only in cycles with ``a_en``
    high; it holds otherwise, and resets to 0), then the product. ``a``, ``b`` may each be signed
    or unsigned; ``p`` is signed(len(a) + len(b)) when either is signed, else unsigned (the exact
    product fits).

    On an ECP5 platform, when both operands fit 18-bit signed values, it is one MULT18X18D with
    its own input and output registers (Yosys infers the block but never its registers; fabric
    registers around an inferred block crowd the routing next to it); elsewhere fabric registers
    around a ``*``.
    """

    def __init__(self, a_shape, b_shape):
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        self._sgn = a_shape.signed or b_shape.signed
        pw = a_shape.width + b_shape.width
        super().__init__({"a": In(a_shape), "a_en": In(1), "b": In(b_shape),
                          "p": Out(signed(pw) if self._sgn else unsigned(pw))})

    @staticmethod
    def _fits(shape) -> bool:
        return shape.width + (0 if shape.signed else 1) <= 18

    def elaborate(self, platform):
        m = Module()
        if (getattr(platform, "family", None) == "ecp5" and self._fits(self.a.shape())
                and self._fits(self.b.shape())):
            mult18x18d(m, self.a, self.b, self.p, ce_a=self.a_en)
        else:
            # (a resets, so that no unknown value reaches the product in a 4-state simulator)
            a = Signal.like(self.a, name="a_q")
            b = Signal.like(self.b, name="b_q", reset_less=True)
            p = Signal.like(self.p, name="p_q", reset_less=True)
            with m.If(self.a_en):
                m.d.sync += a.eq(self.a)
            m.d.sync += [b.eq(self.b), p.eq(a * b)]
            m.d.comb += self.p.eq(p)
        return m


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
    issue of the last word on (`hw.recip.Reciprocal`: count leading zeros, normalise to
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
    select once per multiplexer (TRELLIS_FF instances next to their loads, `hw.fanout.copies`),
    so that no path crosses the array through more than one long net; elsewhere the same
    registers are inferred.

    Backpressure: ``o`` may stall at will; the pipeline behind a word read never stalls (the last
    word of a query waits for its fold slot instead); ``i.ready`` depends on no output and on no
    wait for the fold register.
    """

    def __init__(self, *, config, p_sum_bits=None):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be a spatten.config.AttentionConfig, not {config!r}")
        cfg = config
        if p_sum_bits is not None:
            full = cfg.psum_width
            if not isinstance(p_sum_bits, int) or isinstance(p_sum_bits, bool) \
                    or not cfg.prob_bits <= p_sum_bits <= full:
                raise ValueError(f"p_sum_bits must be an int from {cfg.prob_bits} to {full} (the "
                                 f"kept probabilities of a query sum below 2**p_sum_bits), "
                                 f"not {p_sum_bits!r}")
        self.p_sum_bits = p_sum_bits
        self.config = cfg
        self.depth = v_depth(cfg)
        self.addr_width = max(1, (self.depth - 1).bit_length())
        self._LMV = _log2(cfg.pv_mults)
        super().__init__({
            "i": In(stream.Signature(input_layout(cfg))),
            "d_log2": In(range(self._LMV + 1)),
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
        S, Mv, W = cfg.softmax_lanes, cfg.pv_mults, cfg.data_width
        IW, PW, AW, PB = cfg.index_width, cfg.psum_width, cfg.acc_width, cfg.prob_bits
        # the accumulators, F and the lane's read multiplexers: AW bits, or with p_sum_bits
        # (a query's kept probabilities sum below 2**p_sum_bits) W + p_sum_bits + 1, which holds
        # any such sum of products, plus the rounding constant, with room to spare
        AN = AW if self.p_sum_bits is None else min(AW, W + self.p_sum_bits + 1)
        OW, FB = cfg.out_width, cfg.out_frac_bits
        SH0 = PB - FB                        # output shift without renorm
        SH1 = PB - 1 - FB + PW               # output shift with renorm (psum_width-normalised)
        BIAS = (1 << (SH0 - 1)) if SH0 else 0   # the rounding constant, carried in F
        LMV = self._LMV
        GB = LMV - MIN_D_LOG2                 # slot bits: gv <= Mv/8 = 2**GB row-slots a word
        GMAX = 1 << GB
        SW = max(1, GB)
        dls = range(MIN_D_LOG2, LMV + 1)
        seg_shape = range(max(2, S))
        tree_levels = _log2(S)
        levels_a = (tree_levels + 1) // 2

        # ------------------------------------------------------------ input: per-query registers
        in_first = Signal(init=1)            # the next input beat starts a packet
        q_dl = Signal(range(LMV + 1), init=MIN_D_LOG2)
        q_rn = Signal()
        dl_clamped = Mux(self.d_log2 < MIN_D_LOG2, MIN_D_LOG2,
                         Mux(self.d_log2 > LMV, LMV, self.d_log2))
        dl_now = Signal(range(LMV + 1))
        rn_now = Signal()
        m.d.comb += [dl_now.eq(Mux(in_first, dl_clamped, q_dl)),
                     rn_now.eq(Mux(in_first, self.renorm, q_rn))]

        pay = self.i.payload
        w_in = [Signal(IW, name=f"w_in{j}") for j in range(S)]
        s_in = [Signal(SW, name=f"s_in{j}") for j in range(S)]
        with m.Switch(dl_now):
            for dl in dls:
                sh = LMV - dl
                with (m.Default() if dl == LMV else m.Case(dl)):
                    for j in range(S):
                        m.d.comb += w_in[j].eq(pay.index[j] >> sh)
                        if sh:
                            m.d.comb += s_in[j].eq(pay.index[j][:sh])
        pv_in = [Signal(name=f"pv_in{j}") for j in range(S)]
        p_in = [Signal(PB, name=f"p_in{j}") for j in range(S)]
        for j in range(S):
            m.d.comb += [pv_in[j].eq(pay.count > j), p_in[j].eq(Mux(pv_in[j], pay.prob[j], 0))]

        # ------------------------------------------------------------ stage A
        a_v = Signal()
        a_word = [Signal(IW, name=f"a_word{j}") for j in range(S)]
        a_slot = [Signal(SW, name=f"a_slot{j}") for j in range(S)]
        a_prob = [Signal(PB, name=f"a_prob{j}") for j in range(S)]
        a_pv = [Signal(name=f"a_pv{j}") for j in range(S)]
        a_part_in = _tree(p_in, levels_a)
        a_part = [Signal(PB + levels_a, name=f"a_part{k}") for k in range(len(a_part_in))]
        a_count = Signal(range(S + 1))
        a_first, a_last, a_rn = Signal(), Signal(), Signal()
        a_dl = Signal(range(LMV + 1))

        # ------------------------------------------------------------ stage B
        b_v = Signal()
        b_seg = [Signal(seg_shape, name=f"b_seg{j}") for j in range(S)]
        b_lastseg = Signal(seg_shape)
        b_word = [Signal(IW, name=f"b_word{j}") for j in range(S)]
        b_slot = [Signal(SW, name=f"b_slot{j}") for j in range(S)]
        b_prob = [Signal(PB, name=f"b_prob{j}") for j in range(S)]
        b_pv = [Signal(name=f"b_pv{j}") for j in range(S)]
        b_psum = Signal(PB + tree_levels)
        b_count = Signal(range(S + 1))
        b_first, b_last, b_rn = Signal(), Signal(), Signal()
        b_dl = Signal(range(LMV + 1))

        # ------------------------------------------------------------ stage C (issue)
        c_v = Signal()
        c_cnt = Signal(seg_shape)
        c_fin = Signal()                      # the current run is the beat's last
        c_seg = [Signal(seg_shape, name=f"c_seg{j}") for j in range(S)]
        c_lastseg = Signal(seg_shape)
        c_word = [Signal(IW, name=f"c_word{j}") for j in range(S)]
        c_slot = [Signal(SW, name=f"c_slot{j}") for j in range(S)]
        c_prob = [Signal(PB, name=f"c_prob{j}") for j in range(S)]
        c_pv = [Signal(name=f"c_pv{j}") for j in range(S)]
        # c_bm[j][b]: pair j's row-slot is the one of block b (multipliers 8b .. 8b+7)
        c_bm = [Signal(GMAX, name=f"c_bm{j}") for j in range(S)]
        c_last, c_rn = Signal(), Signal()
        c_first = Signal()                    # the current beat starts a query, not yet issued
        c_dl = Signal(range(LMV + 1))
        psum_q = Signal(PW)                   # kept probabilities of the query so far
        macs = Signal(32)

        # ------------------------------------------------------------ MAC pipeline registers
        # r*_last: the query's last word (set only for an issued word); r1_bp is zero in cycles
        # without a word, so the products (and what the accumulators add) are zero then
        r1_v, r1_last, r1_rn = Signal(), Signal(), Signal()
        r1_dl = Signal(range(LMV + 1))
        r1_psum = Signal(PW)
        # the probability of each block of 8 multipliers (block b: row-slot b >> (d_log2 - 3))
        r1_bp = [Signal(PB, name=f"r1_bp{b}") for b in range(GMAX)]
        r2_v, r2_last, r2_rn = Signal(), Signal(), Signal()
        r2_dl = Signal(range(LMV + 1))
        r2_psum = Signal(PW)
        r3_v, r3_last, r3_rn = Signal(), Signal(), Signal()
        r3_dl = Signal(range(LMV + 1))
        r3_psum = Signal(PW)
        acc = [Signal(signed(AN), name=f"acc{e}", reset_less=True) for e in range(Mv)]
        # D inputs of control registers that also have per-lane copies
        folding_nx = Signal()
        f_lvl_nx = Signal(range(GB + 1))
        f_dl_nx = Signal(range(LMV + 1))

        # ------------------------------------------------------------ fold register F
        F = [Signal(signed(AN), name=f"F{e}", reset_less=True) for e in range(Mv)]
        f_v, f_rn = Signal(), Signal()
        f_dl = Signal(range(LMV + 1))
        f_psum = Signal(PW)
        f_cm1 = Signal(range(Mv))             # d - 1
        f_rem = Signal(range(GB + 1))         # fold steps left
        f_lvl = Signal(range(GB + 1))         # fold steps done
        folding = Signal()                    # f_rem != 0

        # reciprocal unit: started by a renormalised query's last word (in R1), its result taken
        # by that query's lane start
        m.submodules.reciprocal = recip = Reciprocal(
            value_width=PW, divisor_bits=PB, steps_per_cycle=DIV_STEPS, normalise_up=True,
            saturate=False)
        # R1, the unit, the lane's start flag (ap_pre)
        assert 1 + recip.latency + 1 == cfg.pv_recip_ready, (recip.latency, cfg.pv_recip_ready)

        # renormalisation lane: read F[j] (L1), shift (L2), partial products (L3), two adds
        # (L4, L5), round and saturate into O[j]
        lane_busy = Signal()
        ap_v = Signal()
        ap_j = Signal(range(Mv))
        ap_rem = Signal(range(Mv))
        lane_s = Signal(range(PW + 1))
        lane_recip = Signal(PB + 1)
        lane_psum = Signal(PW)
        PRW = AW + PB + 1
        CH = PB + 1                           # chunk of the shifted sum per multiplier
        chunks = [(lo, min(CH, AW - lo)) for lo in range(0, AW, CH)]
        assert 2 <= len(chunks) <= 3, chunks
        LD = cfg.pv_lane_depth
        lv = [Signal(name=f"l{k}_v") for k in range(1, LD + 1)]
        llast = [Signal(name=f"l{k}_last") for k in range(1, LD + 1)]
        lj = [Signal(range(Mv), name=f"l{k}_j") for k in range(1, LD + 1)]
        l2_x = Signal(signed(AW))             # (into the multipliers' input registers)
        l4_s = Signal(signed(PRW + 1), reset_less=True)
        l5_p = Signal(signed(PRW + 1), reset_less=True)

        # output register
        o_v = Signal()
        o_data = [Signal(signed(OW), name=f"o_data{e}") for e in range(Mv)]
        o_psum = Signal(PW)
        o_free = Signal()
        m.d.comb += [
            self.o.valid.eq(o_v),
            self.o.payload.psum.eq(o_psum),
            o_free.eq(~o_v | self.o.ready),
        ]
        m.d.comb += [self.o.payload.data[e].eq(o_data[e]) for e in range(Mv)]

        # ------------------------------------------------------------ issue decision
        match = [Signal(name=f"match{j}") for j in range(S)]
        m.d.comb += [match[j].eq(c_pv[j] & (c_seg[j] == c_cnt)) for j in range(S)]
        bp_now = []
        for b in range(GMAX):
            terms = [Mux(match[j] & c_bm[j][b], c_prob[j], 0) for j in range(S)]
            v = terms[0]
            for t in terms[1:]:
                v = v | t
            bp = Signal(PB, name=f"bp_now{b}")
            m.d.comb += bp.eq(v)
            bp_now.append(bp)
        addr = Signal(IW)
        av = Mux(match[0], c_word[0], 0)
        for j in range(1, S):
            av = av | Mux(match[j], c_word[j], 0)
        m.d.comb += addr.eq(av)
        any_match = Signal()
        m.d.comb += any_match.eq(Cat(*match).any())

        reserved = Signal()
        grant = Signal()
        la = cfg.pv_grant_lookahead
        m.d.comb += [
            reserved.eq(r1_last | r2_last | r3_last),
            grant.eq(~reserved & (
                ~f_v
                | (~f_rn & (f_rem <= la) & ~o_v & ~lane_busy)
                | (f_rn & ap_v & (ap_rem <= la)))),
        ]
        last_op = Signal()
        issue = Signal()
        c_done = Signal()
        m.d.comb += [
            last_op.eq(c_last & c_fin),
            issue.eq(c_v & (~last_op | grant)),
            c_done.eq(issue & c_fin),
            self.v_rd.en.eq(issue & any_match),
            self.v_rd.addr.eq(addr),
        ]

        # ------------------------------------------------------------ handshakes A -> B -> C
        # C takes the next beat as it issues the last run of a beat, except after a query's
        # last beat (whose last word may wait for the fold register): then C empties first, so
        # that no handshake depends on that wait
        c_take = Signal()   # B -> C
        b_take = Signal()   # A -> B
        i_take = Signal()
        m.d.comb += [
            c_take.eq(b_v & (~c_v | (c_fin & ~c_last))),
            b_take.eq(a_v & (~b_v | c_take)),
            self.i.ready.eq(~a_v | b_take),
            i_take.eq(self.i.valid & self.i.ready),
        ]

        # stage A load
        with m.If(i_take):
            m.d.sync += [
                a_v.eq(1), in_first.eq(pay.last), q_dl.eq(dl_now), q_rn.eq(rn_now),
                a_count.eq(pay.count), a_first.eq(in_first), a_last.eq(pay.last),
                a_dl.eq(dl_now), a_rn.eq(rn_now),
            ]
            for j in range(S):
                m.d.sync += [a_word[j].eq(w_in[j]), a_slot[j].eq(s_in[j]),
                             a_prob[j].eq(p_in[j]), a_pv[j].eq(pv_in[j])]
            m.d.sync += [a.eq(v) for a, v in zip(a_part, a_part_in, strict=True)]
        with m.Elif(b_take):
            m.d.sync += a_v.eq(0)

        # stage B load: runs of pairs in one word get consecutive segment numbers
        newseg = [Const(0, 1)] + [a_pv[j] & (a_word[j] != a_word[j - 1]) for j in range(1, S)]
        pre = list(newseg)
        k = 1
        while k < S:     # Hillis-Steele prefix sum
            pre = [pre[j] + pre[j - k] if j >= k else pre[j] for j in range(S)]
            k *= 2
        b_psum_in = _tree(a_part, tree_levels - levels_a)[0]
        with m.If(b_take):
            m.d.sync += [
                b_v.eq(1), b_lastseg.eq(pre[S - 1]), b_psum.eq(b_psum_in),
                b_count.eq(a_count), b_first.eq(a_first), b_last.eq(a_last),
                b_dl.eq(a_dl), b_rn.eq(a_rn),
            ]
            for j in range(S):
                m.d.sync += [b_seg[j].eq(pre[j]), b_word[j].eq(a_word[j]),
                             b_slot[j].eq(a_slot[j]), b_prob[j].eq(a_prob[j]),
                             b_pv[j].eq(a_pv[j])]
        with m.Elif(c_take):
            m.d.sync += b_v.eq(0)

        # stage C load / advance
        with m.If(c_take):
            m.d.sync += [
                c_v.eq(1), c_cnt.eq(0), c_lastseg.eq(b_lastseg), c_fin.eq(b_lastseg == 0),
                c_last.eq(b_last), c_dl.eq(b_dl), c_rn.eq(b_rn), c_first.eq(b_first),
                psum_q.eq(Mux(b_first, 0, psum_q) + b_psum),
                macs.eq(macs + (b_count << b_dl)),
            ]
            for j in range(S):
                m.d.sync += [c_seg[j].eq(b_seg[j]), c_word[j].eq(b_word[j]),
                             c_slot[j].eq(b_slot[j]), c_prob[j].eq(b_prob[j]),
                             c_pv[j].eq(b_pv[j])]
                with m.Switch(b_dl):
                    for dl in dls:
                        with (m.Default() if dl == LMV else m.Case(dl)):
                            m.d.sync += [c_bm[j][b].eq(b_slot[j] == (b >> (dl - MIN_D_LOG2)))
                                         for b in range(GMAX)]
        with m.Elif(c_done):
            m.d.sync += [c_v.eq(0), c_first.eq(0)]
        with m.Elif(issue):
            m.d.sync += [c_cnt.eq(c_cnt + 1), c_fin.eq(c_cnt + 1 == c_lastseg), c_first.eq(0)]
        m.d.comb += self.macs.eq(macs)

        # ------------------------------------------------------------ R1: the issued word
        r1_first = Signal()                   # the query's first issue
        m.d.sync += [r1_v.eq(issue), r1_last.eq(issue & last_op), r1_first.eq(issue & c_first)]
        # the multipliers' load enables (a V word is being read, its data next cycle): a copy per
        # fold group (lanes of equal e mod 8, neighbours on the FPGA: fpga/floorplan.py)
        r1_rd_g = copies(m, platform, issue & any_match, min(8, Mv), "r1_rd_g")
        m.d.sync += [r1_bp[b].eq(Mux(issue, bp_now[b], 0)) for b in range(GMAX)]
        with m.If(issue):
            m.d.sync += [r1_dl.eq(c_dl), r1_rn.eq(c_rn), r1_psum.eq(psum_q)]
        # a query whose kept probabilities reach 2**p_sum_bits may have wrapped: flagged
        overflow = Signal()
        m.d.comb += self.overflow.eq(overflow)
        if self.p_sum_bits is not None and self.p_sum_bits < PW:
            with m.If(r1_last & (r1_psum >= (1 << self.p_sum_bits))):
                m.d.sync += overflow.eq(1)

        # ------------------------------------------------------------ R2: multiplier inputs
        m.d.sync += [r2_v.eq(r1_v), r2_last.eq(r1_last), r2_dl.eq(r1_dl), r2_rn.eq(r1_rn),
                     r2_psum.eq(r1_psum)]
        # the multipliers' input registers (R2) and products (R3); V data is taken only from
        # cycles that read (never the port's unread, undefined value)
        r3_p = []
        for e in range(Mv):
            mul = m.submodules[f"mul{e}"] = _Mul(signed(W), unsigned(PB))
            m.d.comb += [mul.a.eq(self.v_rd.data[e]), mul.a_en.eq(r1_rd_g[e % 8]),
                         mul.b.eq(r1_bp[e >> MIN_D_LOG2])]
            r3_p.append(mul.p)

        # ------------------------------------------------------------ R3: products
        m.d.sync += [r3_v.eq(r2_v), r3_last.eq(r2_last), r3_dl.eq(r2_dl), r3_rn.eq(r2_rn),
                     r3_psum.eq(r2_psum)]

        # ------------------------------------------------------------ accumulators
        # cleared (per-lane copies of r3_last, set by a reset) when a query's last word has left
        # them for F, and after a reset
        # (the copies of r2_last take it from a register of their own, so that their loads across
        # the array do not pull r2_last away from the issue logic)
        r2_last_fan = copies(m, platform, r1_last, 1, "r2_last_fan")[0]
        acc_clr = copies(m, platform, r2_last_fan | ResetSignal("sync"), Mv, "acc_clr", init=1)
        # ... and set, as a query's first word reaches R2 (the accumulators are then free or
        # being cleared), to the rounding constant 2**(SH0 - 1) in the lanes e < d of that query
        # and 0 above: folded, each column holds exactly one, so the output register's rounding
        # is a plain shift (the renormalisation lane takes it off again)
        acc_init = copies(m, platform, r1_first, Mv, "acc_init")
        acc_bias = [acc_init[e] if e < 8 else
                    copies(m, platform, r1_first & (r1_dl >= e.bit_length()), 1,
                           f"acc_bias{e}_")[0] for e in range(Mv)]
        sums = []
        for e in range(Mv):
            sm = Signal(signed(AN), name=f"accsum{e}")
            m.d.comb += sm.eq(acc[e] + r3_p[e])
            sums.append(sm)
            with m.If(acc_clr[e] | acc_init[e]):
                m.d.sync += acc[e].eq(Mux(acc_bias[e], BIAS, 0))
            with m.Else():
                m.d.sync += acc[e].eq(sm)

        # ------------------------------------------------------------ fold register
        # the partner of lane e at fold step k is e + Mv/2**(k+1); lanes at or above that step's
        # half keep adding (garbage nobody reads), so lane e only chooses among the steps with
        # e < Mv/2**(k+1), and the last of them needs no choice. F's loads and fold steps are
        # driven by per-lane copies of r3_last, folding and the fold step.
        m.d.comb += [
            folding_nx.eq(Mux(r3_last, r3_dl != LMV, Mux(folding, f_rem != 1, folding))),
            f_lvl_nx.eq(Mux(r3_last, 0, Mux(folding, f_lvl + 1, f_lvl))),
            f_dl_nx.eq(Mux(r3_last, r3_dl, f_dl)),
        ]
        f_load = copies(m, platform, r2_last_fan, Mv, "f_load")
        f_fold = copies(m, platform, folding_nx, Mv // 2, "f_fold")
        fold_add = []
        for e in range(Mv // 2):
            steps = [k for k in range(GB) if e < Mv >> (k + 1)]
            fa = Signal(signed(AN), name=f"fold_add{e}")
            fold_add.append(fa)
            if not steps:                     # Mv = 8: d = Mv always, nothing to fold
                continue
            m.d.comb += fa.eq(F[e + (Mv >> (steps[-1] + 1))])
            if len(steps) > 1:
                sel = copies(m, platform, Cat(f_lvl_nx == k for k in steps[:-1]), 1,
                              f"f_step{e}_")[0]
                for i, k in reversed(list(enumerate(steps[:-1]))):
                    with m.If(sel[i]):
                        m.d.comb += fa.eq(F[e + (Mv >> (k + 1))])
        for e in range(Mv):
            with m.If(f_load[e]):
                m.d.sync += F[e].eq(sums[e])
            if e < Mv // 2:
                with m.Elif(f_fold[e]):
                    m.d.sync += F[e].eq(F[e] + fold_add[e])
        m.d.sync += [folding.eq(folding_nx), f_lvl.eq(f_lvl_nx), f_dl.eq(f_dl_nx)]
        with m.If(r3_last):
            m.d.sync += [f_psum.eq(r3_psum), f_cm1.eq((1 << r3_dl) - 1)]

        # F moves into O (non-renormalised: saturate(round(F / 2**(16 - fb))), lanes >= d zero),
        # or the lane starts, when F has folded, the lane is idle and O is free; o_pre / ap_pre
        # (registered, one copy per lane) say all but the last
        o_ld = Signal()
        ap_start = Signal()
        f_v_nx, f_rn_nx, lane_busy_nx, dv_done_nx = Signal(), Signal(), Signal(), Signal()
        f_rem_nx = Signal.like(f_rem)
        o_pre, ap_pre = Signal(), Signal()
        m.d.comb += [
            o_ld.eq(o_pre & o_free),
            ap_start.eq(ap_pre & o_free),
            # F is released when its contents have gone to O (or into the lane)
            f_v_nx.eq(r3_last | (f_v & ~(o_ld | (ap_v & (ap_rem == 0))))),
            f_rn_nx.eq(Mux(r3_last, r3_rn, f_rn)),
            f_rem_nx.eq(Mux(r3_last, LMV - r3_dl, Mux(folding, f_rem - 1, f_rem))),
            lane_busy_nx.eq(Mux(ap_start, 1, Mux(lv[-1] & llast[-1], 0, lane_busy))),
            dv_done_nx.eq(~r1_last & recip.o.valid),
        ]
        # o_pre_nx = f_v_nx & ~f_rn_nx & (f_rem_nx == 0) & ~lane_busy_nx and ap_pre_nx (the same
        # with f_rn_nx & dv_done_nx), as o_pre_q & ~(o_ld & ~r3_last) and ap_pre_q & ~ap_start,
        # where the parts in _q depend on no input (the output register's per-lane copies take
        # them registered, and o_ld, ap_start from their own lane). Used: F's release by the
        # lane's last read needs no term (the lane is busy then); folding = (f_rem != 0); a
        # query's last word never reaches F as the lane starts (a word that could was not
        # granted), and ap_start needs f_rn.
        o_pre_nx, ap_pre_nx = Signal(), Signal()
        o_pre_q, ap_pre_q = Signal(), Signal()
        f_fin = Signal()                      # F holds a query, folded by the next cycle
        lb_hold = Signal()                    # the lane stays busy unless it starts
        m.d.comb += [
            f_fin.eq(Mux(r3_last, r3_dl == LMV, f_v & (f_rem <= 1))),
            lb_hold.eq(lane_busy & ~(lv[-1] & llast[-1])),
            o_pre_q.eq(~lb_hold & f_fin & Mux(r3_last, ~r3_rn, ~f_rn)),
            ap_pre_q.eq(~lb_hold & f_fin & dv_done_nx & Mux(r3_last, r3_rn, f_rn)),
            o_pre_nx.eq(o_pre_q & ~(o_ld & ~r3_last)),
            ap_pre_nx.eq(ap_pre_q & ~ap_start),
        ]
        m.d.sync += [f_v.eq(f_v_nx), f_rn.eq(f_rn_nx), f_rem.eq(f_rem_nx),
                     lane_busy.eq(lane_busy_nx), o_pre.eq(o_pre_nx), ap_pre.eq(ap_pre_nx)]

        # ------------------------------------------------------------ reciprocal unit
        # (idle whenever a renormalised query's last word is issued: the previous one's lane has
        # started by then, see the grant)
        m.d.comb += [recip.i.valid.eq(r1_last & r1_rn), recip.i.payload.eq(r1_psum),
                     recip.o.ready.eq(ap_start)]

        # ------------------------------------------------------------ renormalisation lane
        ap_j_nx = Signal.like(ap_j)
        m.d.comb += ap_j_nx.eq(Mux(ap_start, 0, Mux(ap_v, ap_j + 1, ap_j)))
        m.d.sync += ap_j.eq(ap_j_nx)
        with m.If(ap_start):
            m.d.sync += [
                ap_v.eq(1), ap_rem.eq(f_cm1),
                lane_s.eq(recip.o.payload.leading_zeros), lane_recip.eq(recip.o.payload.recip),
                lane_psum.eq(f_psum),
            ]
        with m.If(ap_v):
            m.d.sync += ap_rem.eq(ap_rem - 1)
            with m.If(ap_rem == 0):
                m.d.sync += ap_v.eq(0)
        m.d.sync += [lv[0].eq(ap_v), llast[0].eq(ap_v & (ap_rem == 0)), lj[0].eq(ap_j)]
        for k in range(1, LD):
            m.d.sync += [lv[k].eq(lv[k - 1]), llast[k].eq(llast[k - 1]), lj[k].eq(lj[k - 1])]
        # read F[j]: registered 4:1 multiplexer levels, the top bits of j first: the inputs of a
        # first-level multiplexer (F[j], F[j + Mv/4], ..) are also partners of the fold
        vals = F
        rem = LMV
        for k in range((LMV + 1) // 2):
            bits = min(2, rem)
            rem -= bits
            regs = [Signal(signed(AN), name=f"lm{k}_{g}", reset_less=True)
                    for g in range(1 << rem)]
            if k == 0:
                # the first level's selects: a copy of ap_j's top bits per multiplexer (they
                # sit with the lanes they read, across the array)
                sels = copies(m, platform, ap_j_nx[rem:rem + bits], len(regs), "ap_j_sel")
            else:
                sels = [lj[k - 1][rem:rem + bits]] * len(regs)
            m.d.sync += [r.eq(Array(vals[g + (t << rem)] for t in range(1 << bits))[sel])
                         for g, (r, sel) in enumerate(zip(regs, sels, strict=True))]
            vals = regs
        l1_x = vals[0]
        # the column sum normalised by the sum's leading zeros (exact, see the docstring), into
        # the multipliers' input registers (L2); L3: products of 17-bit chunks (the top one
        # signed) by the reciprocal
        m.d.comb += l2_x.eq(((l1_x - BIAS) << lane_s)[:AW].as_signed())
        l3_pp = []
        for k, (lo, w) in enumerate(chunks):
            top = k == len(chunks) - 1
            mul = m.submodules[f"lane_mul{k}"] = _Mul(signed(w) if top else unsigned(w),
                                                      unsigned(PB + 1))
            m.d.comb += [mul.a.eq(l2_x[lo:lo + w]), mul.a_en.eq(1), mul.b.eq(lane_recip)]
            l3_pp.append(mul.p)
        # L4, L5: their sum, with the rounding constant 2**(SH1 - 1) put into bits that the first
        # product leaves zero when it can (the output is then a pure saturation)
        free_round = SH1 - 1 >= len(l3_pp[0])
        pp0 = l3_pp[0] | (1 << (SH1 - 1)) if free_round else l3_pp[0]
        l4_hi = Signal.like(l3_pp[-1], name="l4_hi", reset_less=True)
        m.d.sync += [l4_s.eq(pp0 + (l3_pp[1] << CH)), l4_hi.eq(l3_pp[-1])]
        if len(chunks) == 3:
            m.d.sync += l5_p.eq(l4_s + (l4_hi << (2 * CH)))
        else:
            m.d.sync += l5_p.eq(l4_s)
        lane_out = Signal(signed(OW))
        if free_round:
            m.d.comb += lane_out.eq(_sat(l5_p[SH1:].as_signed(), OW))
        else:
            m.d.comb += lane_out.eq(_sat_inc(l5_p[SH1:].as_signed(), l5_p[SH1 - 1], OW))

        # ------------------------------------------------------------ output register
        # Lanes >= d, and every lane when the lane starts, are cleared (synchronous resets). The
        # lane's results shift in at lane d - 1 (d of the lane's query, F may hold the next one
        # by then) and down to lane 0, d shifts in all (lanes >= d shift zeros), so that no net
        # reaches every lane but the per-lane copies of the controls and ``o.ready``.
        # (top: copies of lane_dl == log2(e + 1), a cycle late: the first output of a lane run
        # comes pv_lane_depth + 1 cycles after its start)
        lane_dl = Signal(range(LMV + 1))
        with m.If(ap_start):
            m.d.sync += lane_dl.eq(f_dl)
        o_q_l = copies(m, platform, o_pre_q, Mv, "o_pre_q")
        ap_q_l = copies(m, platform, ap_pre_q, Mv, "ap_pre_q")
        rl_l = [copies(m, platform, f_load[e], 1, f"f_loaded{e}_")[0] for e in range(Mv)]
        o_v_nx = Signal()
        m.d.comb += o_v_nx.eq(Mux(o_ld, 1, Mux(ap_start, 0, Mux(lv[-1] & llast[-1], 1,
                                                                 o_v & ~self.o.ready))))
        m.d.sync += o_v.eq(o_v_nx)
        o_v_l = copies(m, platform, o_v_nx, Mv, "o_valid")
        for e in range(Mv):
            b = e.bit_length()
            keep = (copies(m, platform, f_dl_nx >= b, 1, f"o_keep{e}_")[0]
                    if b > MIN_D_LOG2 else Const(1))
            top = (copies(m, platform, lane_dl == b, 1, f"o_top{e}_")[0]
                   if b >= MIN_D_LOG2 and e == (1 << b) - 1 else Const(0))
            ld_e = Signal(name=f"o_ld{e}")
            ap_e = Signal(name=f"ap_start{e}")
            ld_q, ap_q = Signal(name=f"o_ld{e}_q"), Signal(name=f"ap_start{e}_q")
            free_e = ~o_v_l[e] | self.o.ready
            m.d.comb += [ld_e.eq(o_q_l[e] & ~(ld_q & ~rl_l[e]) & free_e),
                         ap_e.eq(ap_q_l[e] & ~ap_q & free_e)]
            m.d.sync += [ld_q.eq(ld_e), ap_q.eq(ap_e)]
            rounded = _sat(F[e][SH0:].as_signed(), OW)     # (F holds the rounding constant)
            shift_in = o_data[e + 1] if e + 1 < Mv else Const(0, signed(OW))
            with m.If(ap_e | (ld_e & ~keep)):
                m.d.sync += o_data[e].eq(0)
            with m.Elif(ld_e):
                m.d.sync += o_data[e].eq(rounded)
            with m.Elif(lv[-1]):
                m.d.sync += o_data[e].eq(Mux(top, lane_out, shift_in))
        with m.If(o_ld):
            m.d.sync += o_psum.eq(f_psum)
        with m.Elif(~ap_start & lv[-1] & llast[-1]):
            m.d.sync += o_psum.eq(lane_psum)

        m.d.comb += self.busy.eq(a_v | b_v | c_v | r1_v | r2_v | r3_v | f_v | lane_busy | o_v)
        return m
