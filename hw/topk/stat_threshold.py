"""Threshold unit of the statistical top-k: ``thr = ceil(mean + z * sigma)`` from running sums.

Bit-exact to `spatten.golden.stat_threshold.stat_threshold`, whose docstring states the integer
definition. Small and sequential: fixed-length phases of shift-add, digit-by-digit square root and
restoring division steps, so the latency depends on the configuration only.

One wide adder does every multiplication, LSB first: ``acc += bit ? +-M : 0`` then ``M <<= 1``,
with the multiplier bits shifting out of ``bsh``. A step whose bit is 0 just holds ``acc`` (the
register's enable), and every cycle has one carry chain. Phases, after the cycle that samples
``start`` (RB = ratio_bits, W = value_width, ZF = z_frac_bits, CW = count_width; S1B, K, L from
`StatThreshold.widths`, the same numbers as `spatten.golden.stat_threshold.widths`):

======  =====  ============================================================================
phase   steps  work per step
======  =====  ============================================================================
RDIV    RB     one bit of r = floor(k * 2**RB / n) (restoring division, CW+1-bit subtract)
VN      CW     acc += n[j] * (S2 << j)                                     acc = n * S2
VS      S1B    acc += s1[j] * (-S1 << j), the sign bit of S1 subtracted    acc = var
SQRT    K      one bit of sd = isqrt(var), digit by digit from acc's bit pairs, MSB first;
               the root shifts into M
Z       L      from acc = -S1 << ZF: acc -= |z|[j] * sign(z) * (sd << j)   acc = -num
DLOAD   1      p = acc >> ZF = floor(-num / 2**ZF); the divider gets u = p or ~p (p < 0)
DIV     W      one bit of q = floor(u / n) (restoring division, CW+1-bit subtract)
FINAL   1      thr = -floor(p / n) = (p >= 0 ? -q : q + 1), saturated; flags; ``done`` next
======  =====  ============================================================================

``floor(p / n)`` is ``q`` for p >= 0 and ``~floor(~p / n)`` for p < 0, so nothing is negated
after the loops; the only negation is of S1, when the inputs are latched.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import TopKConfig, z_table

__all__ = ["StatThreshold"]


def _signed_width(lo: int, hi: int) -> int:
    """Bits of the narrowest two's-complement number that holds every integer in [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


class _Phase(enum.Enum, shape=4):
    IDLE = 0
    RDIV = 1
    VN = 2
    VS = 3
    SQRT = 4
    Z = 5
    DLOAD = 6
    DIV = 7
    FINAL = 8


class StatThreshold(wiring.Component):
    """Statistical top-k threshold from ``n``, ``k`` and the sums ``S1``, ``S2``.

    Ports
    -----
    start : In(1)
        Pulse. ``n``, ``k``, ``s1``, ``s2`` are sampled in the cycle ``start`` is high while the
        unit is idle (``busy`` low). A ``start`` while busy is ignored.
    n : In(count_width)                   number of values, 1..capacity
    k : In(count_width)                   how many to keep, 0..n
    s1 : In(signed(widths["s1"]))         sum of the n values
    s2 : In(unsigned(widths["s2"]))       sum of their squares
        The widths hold the worst case: S1 in [capacity*value_min, capacity*value_max],
        S2 <= capacity*value_min**2. Inputs outside the contract (n = 0, k > n, sums that no n
        values have) give an unspecified threshold after the same latency.
    busy : Out(1)
        High from the cycle after an accepted ``start`` to the cycle before ``done``.
    done : Out(1)
        One-cycle pulse, `latency` cycles after the ``start`` cycle. ``busy`` is low with it, so
        a ``start`` in the ``done`` cycle is accepted.
    threshold : Out(signed(value_width))
    select_all, select_none : Out(1)
        Valid with ``done`` and held until the next ``done``. ``select_none`` (k = 0): threshold
        ``value_max``; ``select_all`` (k = n > 0): threshold ``value_min``; otherwise both are
        low and the engine keeps every value >= threshold.

    Latency: ``latency = 1 + RB + CW + S1B + K + L + 1 + W + 1`` cycles whatever the data
    (97 for the "default" preset, 79 for "small"); one result per `latency` cycles.
    Synchronous reset returns to idle with the outputs cleared.
    """

    def __init__(self, cfg: TopKConfig):
        if not isinstance(cfg, TopKConfig):
            self._MustUse__silence = True  # never elaborated: no "created but never used"
            raise TypeError(f"cfg must be a spatten.config.TopKConfig, not {cfg!r}")
        self.cfg = cfg
        C, W, CW = cfg.capacity, cfg.value_width, cfg.count_width
        RB, ZF = cfg.ratio_bits, cfg.z_frac_bits
        ztab = z_table(RB, ZF)
        # Z[r] = -Z[2**RB - 1 - r] (true for every legal ratio_bits / z_frac_bits), so the ROM
        # holds the first half, |z| for r < 2**(RB-1); the sign of z is the top bit of r.
        half = ztab[: 1 << (RB - 1)]
        if any(ztab[-1 - i] != -z for i, z in enumerate(half)) or min(half) < 0:
            self._MustUse__silence = True
            raise ValueError(f"z_table({RB}, {ZF}) is not antisymmetric; this unit needs it")
        self._zrom = half

        # Every width from the worst case: n = capacity and the values at their extremes.
        s_max = C << (W - 1)                    # |S1|, |-S1| <= capacity * 2**(W-1)
        s2_max = C * cfg.value_min ** 2         # S2 (all values value_min)
        var_max = (C * (2 ** W - 1)) ** 2 // 4  # n**2 * variance; half at each extreme, n = C
        sd_max = math.isqrt(var_max)
        z_max = max(half)
        w = {}
        w["s1"] = _signed_width(C * cfg.value_min, C * cfg.value_max)
        w["ns1"] = _signed_width(-C * cfg.value_max, -C * cfg.value_min)  # one bit more
        w["s2"] = s2_max.bit_length()
        w["var"] = var_max.bit_length()
        w["K"] = (w["var"] + 1) // 2            # radicand bit pairs
        w["sd"] = max(sd_max.bit_length(), 1)
        w["L"] = max(z_max.bit_length(), 1)     # bits of |z|
        # M, the shifted multiplicand: S2 << (CW-1) in VN, -S1 << (S1B-1) in VS, the root
        # (< 2**sd) in SQRT, sd << (L-1) in Z.
        w["m"] = max(_signed_width(0, s2_max << (CW - 1)),
                     _signed_width(-s_max << (w["s1"] - 1), s_max << (w["s1"] - 1)),
                     _signed_width(0, sd_max << (w["L"] - 1)))
        # acc: VN partial sums in [0, C*s2_max]; VS partial sums n*S2 - S1 * (low bits of S1),
        # within s_max * 2**(S1B-1) of them; Z partial sums, |-S1 * 2**ZF - z * sd| <= q_max.
        q_max = (s_max << ZF) + z_max * sd_max
        w["q"] = _signed_width(-q_max, q_max)
        w["acc"] = max(_signed_width(-s_max << (w["s1"] - 1),
                                     C * s2_max + (s_max << (w["s1"] - 1))),
                       w["q"], w["m"])
        w["bsh"] = max(CW, w["s1"], w["L"])
        # The divider: u = p or ~p, p = acc >> ZF, so u < 2**(q - ZF - 1). Its remainder
        # register keeps CW + W bits: a larger u means a quotient >= 2**W, which saturates.
        w["u"] = w["q"] - ZF - 1
        w["rd"] = CW + W
        self.widths = w
        self.latency = 1 + RB + CW + w["s1"] + w["K"] + w["L"] + 1 + W + 1

        super().__init__({
            "start": In(1),
            "n": In(CW),
            "k": In(CW),
            "s1": In(signed(w["s1"])),
            "s2": In(unsigned(w["s2"])),
            "busy": Out(1),
            "done": Out(1),
            "threshold": Out(signed(W)),
            "select_all": Out(1),
            "select_none": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, w = self.cfg, self.widths
        W, CW, RB, ZF = cfg.value_width, cfg.count_width, cfg.ratio_bits, cfg.z_frac_bits
        K = w["K"]

        P = _Phase
        lengths = {P.RDIV: RB, P.VN: CW, P.VS: w["s1"], P.SQRT: K, P.Z: w["L"], P.DLOAD: 1,
                   P.DIV: W, P.FINAL: 1}
        order = list(lengths)
        phase = Signal(P)
        cnt = Signal(range(max(lengths.values())))  # steps left in the phase, minus one
        last = cnt == 0

        n_r = Signal(CW)
        s1_r = Signal(signed(w["s1"]))
        ns1_r = Signal(signed(w["ns1"]))
        none_r = Signal()
        all_r = Signal()

        acc = Signal(signed(w["acc"]))
        mpl = Signal(signed(w["m"]))  # M, the multiplicand, shifted left every step
        bsh = Signal(w["bsh"])        # multiplier bits, LSB first
        sq_r = Signal(w["sd"] + 1)    # isqrt remainder, <= 2 * root
        pair = Signal(2)              # the radicand bit pair of the current SQRT step
        rd = Signal(w["rd"])          # divider remainder, shifted left one bit per step
        qd = Signal(max(W, RB))       # divider quotient, LSB enters
        psign = Signal()
        big = Signal()
        done = Signal()

        m.d.comb += [self.busy.eq(phase != P.IDLE), self.done.eq(done)]
        m.d.sync += done.eq(0)

        # Phase sequencing: every phase runs a fixed number of steps.
        with m.If(phase == P.IDLE):
            with m.If(self.start):
                m.d.sync += [phase.eq(P.RDIV), cnt.eq(RB - 1)]
        with m.Elif(last):
            for cur, nxt in zip(order, order[1:] + [P.IDLE], strict=True):
                with m.If(phase == cur):
                    m.d.sync += phase.eq(nxt)
                    if nxt != P.IDLE:
                        m.d.sync += cnt.eq(lengths[nxt] - 1)
        with m.Else():
            m.d.sync += cnt.eq(cnt - 1)

        # The wide adder: acc + M or acc - M, as acc + (M ^ sub) + sub (one carry chain).
        # `sub` is a register, set up the cycle before it is needed.
        sub = Signal()
        m_ext = Signal(signed(w["acc"]))
        acc_sum = Signal(signed(w["acc"]))
        m.d.comb += [
            m_ext.eq(mpl),
            acc_sum.eq(acc + (m_ext ^ sub.replicate(w["acc"])).as_signed() + sub),
        ]
        m_shift = Cat(Const(0, 1), mpl[:-1]).as_signed()

        # Divider step, shared by RDIV and DIV: the window rd[W-1:] (CW+1 bits) is compared with
        # n; before every step it is < 2n while the quotient fits, so one subtraction decides
        # the bit; then everything shifts left. RDIV starts from rd = k << W (window 2k).
        win = rd[W - 1:]
        diff = Signal(signed(CW + 2))
        m.d.comb += diff.eq(win - n_r)
        ge = ~diff[-1]
        new_win = Mux(ge, diff[:CW + 1], win)
        div_next = Cat(Const(0, 1), rd[:W - 1], new_win)[:w["rd"]]
        q_next = Cat(ge, qd)[:len(qd)]

        # Z table ROM (first half, |z|) and its index from r = qd[:RB].
        r = qd[:RB]
        m.submodules.ztab = zrom = Memory(shape=unsigned(w["L"]), depth=len(self._zrom),
                                          init=self._zrom)
        zrd = zrom.read_port(domain="comb")
        m.d.comb += zrd.addr.eq(r[:RB - 1] ^ r[RB - 1].replicate(RB - 1))

        with m.Switch(phase):
            with m.Case(P.IDLE):
                with m.If(self.start):
                    m.d.sync += [
                        n_r.eq(self.n), s1_r.eq(self.s1), ns1_r.eq(-self.s1),
                        none_r.eq(self.k == 0), all_r.eq(self.k == self.n),
                        rd.eq(self.k << W), qd.eq(0),
                        acc.eq(0), mpl.eq(self.s2), bsh.eq(self.n), sub.eq(0),
                    ]

            with m.Case(P.RDIV, P.DIV):
                m.d.sync += [rd.eq(div_next), qd.eq(q_next)]

            with m.Case(P.VN):
                with m.If(bsh[0]):
                    m.d.sync += acc.eq(acc_sum)
                m.d.sync += [mpl.eq(m_shift), bsh.eq(bsh >> 1)]
                with m.If(last):
                    m.d.sync += [mpl.eq(ns1_r), bsh.eq(s1_r)]

            with m.Case(P.VS):
                # -S1*S1 = sum over the bits s_j of S1 of s_j * 2**j * (-S1), except that the
                # sign bit (the last step) weighs -2**j: there the product is subtracted.
                with m.If(cnt == 1):
                    m.d.sync += sub.eq(1)
                with m.If(bsh[0]):
                    m.d.sync += acc.eq(acc_sum)
                m.d.sync += [mpl.eq(m_shift), bsh.eq(bsh >> 1)]
                with m.If(last):
                    # SQRT starts from R = 0, root = 0 and the top bit pair of var prefetched
                    top = slice(2 * K - 2, 2 * K)
                    m.d.sync += [mpl.eq(0), sq_r.eq(0),
                                 pair.eq(Mux(bsh[0], acc_sum[top], acc[top]))]

            with m.Case(P.SQRT):
                # Digit by digit: R = 4R + next bit pair of var; subtract 4*root + 1 when it
                # fits, and the root takes one more bit (shifted into M).
                # (the next pair is prefetched, so no multiplexer lies before the subtraction)
                rp = Cat(pair, sq_r)
                m.d.sync += pair.eq(Cat(Const(0, 2), acc[:2 * K - 2]).bit_select(2 * cnt, 2))
                trial = Signal(signed(w["sd"] + 4))
                m.d.comb += trial.eq(rp - Cat(Const(1, 2), mpl[:w["sd"]]))
                fits = ~trial[-1]
                m.d.sync += [
                    sq_r.eq(Mux(fits, trial, rp)),
                    mpl.eq(Cat(fits, mpl[:-1])),
                ]
                with m.If(last):
                    # Start of the Z phase: acc = -S1 << ZF, |z| from the ROM, and subtract
                    # when z >= 0 (r in the first half of the table).
                    m.d.sync += [acc.eq(ns1_r << ZF), bsh.eq(zrd.data), sub.eq(~r[RB - 1])]

            with m.Case(P.Z):
                # acc -= sign(z) * |z|[j] * (sd << j)
                with m.If(bsh[0]):
                    m.d.sync += acc.eq(acc_sum)
                m.d.sync += [mpl.eq(m_shift), bsh.eq(bsh >> 1)]

            with m.Case(P.DLOAD):
                p = acc[ZF:w["q"]].as_signed()
                u = (p ^ p[-1].replicate(len(p)))[:w["u"]]
                m.d.sync += [rd.eq(u[:w["rd"]]), psign.eq(p[-1]), qd.eq(0)]
                if w["u"] > w["rd"]:
                    m.d.sync += big.eq(u[w["rd"]:].any())
                else:
                    m.d.sync += big.eq(0)

            with m.Case(P.FINAL):
                # thr = -floor(p/n): -q for p >= 0, q + 1 for p < 0 (q = floor(~p/n) there).
                # q >= 2**(W-1) (or u past the divider) saturates, and so does q + 1 = 2**(W-1).
                q = qd[:W]
                sat = big | q[W - 1] | (psign & (q[:W - 1] == (1 << (W - 1)) - 1))
                thr = (Mux(psign, q, ~q) + 1)[:W].as_signed()
                m.d.sync += [
                    done.eq(1),
                    self.select_none.eq(none_r),
                    self.select_all.eq(all_r & ~none_r),
                ]
                with m.If(none_r):
                    m.d.sync += self.threshold.eq(cfg.value_max)
                with m.Elif(all_r):
                    m.d.sync += self.threshold.eq(cfg.value_min)
                with m.Elif(sat):
                    m.d.sync += self.threshold.eq(Mux(psign, cfg.value_max, cfg.value_min))
                with m.Else():
                    m.d.sync += self.threshold.eq(thr)

        return m
