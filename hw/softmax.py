"""The streaming fixed-point softmax: one row of dots in, one row of U0.16 probabilities out,
bit for bit `golden.attention.softmax` (formats: `spatten.config.AttentionConfig`).

Contract
--------
Input ``i`` (stream, `dots_layout`): one row (one query) of n = 1..capacity dots, S =
``softmax_lanes`` per beat, ``data[0..count-1]`` valid, every beat full except the last
(``last = 1``, count 1..S). ``shift`` (0..dot_width), ``scale`` (U`scale_bits`) and
``post_shift`` (0..31) are sampled with each row's first beat and kept with that row.

Output ``o`` (stream, `probs_layout`): the row's n probabilities p in the same beat structure
(lanes at and above ``count`` read 0). Output ``row`` (stream, `row_info_layout`): one beat per row,
``{p_max, esum, n, max, error}`` (p_max: the probability of the row maximum; esum: the sum of
the U1.16 exponentials; max: the largest dot). It is offered before the row's first ``o`` beat
and may be taken at any time; the next row's ``o`` beats wait until it is taken.

Errors: a row of more than ``capacity`` dots, or a beat with count 0, count > S, or a partial
beat that is not the last: the row is read up to its ``last`` beat, its ``row`` beat has
``error = 1`` (and p_max, esum, n, max = 0) and its ``o`` packet is one beat with count 0,
last 1. The next row is processed normally.

Timing (unstalled; R = log2 S, B = ceil(n/S) beats, 1 for an error row, Bi = input beats)
-----------------------------------------------------------------------------------------
A row passes four phases, each with its own resources, so rows overlap:
ingest (two score banks used in turn, the row maximum tracked per lane, then an R-level tree),
exp (one read a cycle from a score bank, 12 pipeline stages: subtract, shift, saturate,
multiply, round, the 2**-frac ROM, the rounding shift; e written to one of two e banks, esum by
an R-level adder tree), reciprocal (22 cycles: normalise esum, 19-step restoring division,
rounding) and normalise (one read a cycle, 4 stages, an 8-entry output FIFO fed on credit, so
that ``o.ready`` reaches only the FIFO). Each pair of banks is one block-RAM memory (the bank is
the top address bit); every memory and ROM output and every multiplier input and output is a
register. ECP5-85F (speed grade 6), default config, alone in the synthesis harness: 123 MHz,
8 DP16KD, 8 MULT18X18D, 3.4k LUT4, 4.1k FF (harness registers included).

- Latency of a row entering an idle unit, from its first input beat to its last output beat
  (inclusive): ``Bi + 2 B + 44 + 2 R`` cycles (``3 B + 48`` at S = 4).
- Back-to-back rows of B beats: one row every ``max(B + 18 + R/2, 22)`` cycles on average
  (``B + 19`` at S = 4): the two e banks alternate, each held from the row's exp pass through its
  reciprocal to the end of its normalise pass.

`golden.softmax_cycles.softmax_cycle_model` gives the exact cycle of every event for a sequence
of rows; the tests compare it with this RTL.
"""

from __future__ import annotations

import math

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .recip import Reciprocal
from .rowstream import row_layout

__all__ = ["Softmax", "dots_layout", "probs_layout", "row_info_layout"]


def dots_layout(cfg: AttentionConfig) -> data.StructLayout:
    return row_layout(signed(cfg.dot_width), cfg.softmax_lanes)


def probs_layout(cfg: AttentionConfig) -> data.StructLayout:
    return row_layout(unsigned(cfg.prob_bits), cfg.softmax_lanes)


def row_info_layout(cfg: AttentionConfig) -> data.StructLayout:
    return data.StructLayout({
        "p_max": unsigned(cfg.prob_bits),
        "esum": unsigned(cfg.esum_width),
        "n": range(cfg.capacity + 1),
        "max": signed(cfg.dot_width),
        "error": 1,
    })


# e-bank states
_FREE, _EXP, _DONE, _RDY, _NORM = range(5)


class Softmax(wiring.Component):
    """The streaming softmax; see the module docstring for the contract.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig
        Formats and sizes: dot_width, softmax_lanes S, capacity, the score-scaling widths.

    Ports
    -----
    i : In(stream.Signature(dots_layout(config)))
    shift : In(range(dot_width + 1)); scale : In(unsigned(scale_bits));
    post_shift : In(range(post_shift_max + 1))
    o : Out(stream.Signature(probs_layout(config)))
    row : Out(stream.Signature(row_info_layout(config)))
    """

    #: depth of the output FIFO (and of the normalise pass's credit)
    OUT_DEPTH = 8
    #: e banks used in turn (the score banks are two)
    E_BANKS = 2

    def __init__(self, *, config: AttentionConfig):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        if config.prob_bits != 16:
            raise ValueError(f"prob_bits must be 16, not {config.prob_bits}")
        self.cfg = cfg = config
        super().__init__({
            "i": In(stream.Signature(dots_layout(cfg))),
            "shift": In(range(cfg.dot_width + 1)),
            "scale": In(unsigned(cfg.scale_bits)),
            "post_shift": In(range(cfg.post_shift_max + 1)),
            "o": Out(stream.Signature(probs_layout(cfg))),
            "row": Out(stream.Signature(row_info_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S = cfg.softmax_lanes
        R = int(math.log2(S))
        DW = cfg.dot_width
        TB, SB = cfg.t_bits, cfg.scale_bits
        YW, YF = cfg.y_width, cfg.y_frac_bits
        EW = cfg.esum_width
        PB = cfg.prob_bits                  # 16
        depth = cfg.capacity // S           # beats a bank holds
        NE = self.E_BANKS
        dmin = -(1 << (DW - 1))
        nrm_w = range(EW - PB)              # norm = bit_length(esum) - 17, 0..EW-17
        params = [("shift", self.shift.shape()), ("scale", self.scale.shape()),
                  ("ps", self.post_shift.shape())]

        def reg(shape, name, init=0):
            return Signal(shape, name=name, init=init)

        # ------------------------------------------------------------------ memories
        # Each pair of banks is one memory, the bank number its top address bit: no read
        # multiplexer between the block RAM (slow clock-to-out) and the register it feeds.
        m.submodules.scores = smem = Memory(shape=data.ArrayLayout(signed(DW), S),
                                            depth=2 * depth, init=[])
        s_wr, s_rd = smem.write_port(), smem.read_port()
        m.submodules.ebanks = emem = Memory(shape=data.ArrayLayout(unsigned(PB + 1), S),
                                            depth=NE * depth, init=[])
        e_wr, e_rd = emem.write_port(), emem.read_port()

        def bank_addr(bank, addr):
            if depth & (depth - 1) == 0:                    # a power of two: just wires
                return Cat(addr[:depth.bit_length() - 1], bank)
            return bank * depth + addr

        rom = Memory(shape=unsigned(PB + 1), depth=1 << YF, init=cfg.exp_table())
        m.submodules.exp_rom = rom
        rom_rd = [rom.read_port() for _ in range(S)]

        # ------------------------------------------------------------------ ingest
        in_bank = reg(1, "in_bank")
        in_first = reg(1, "in_first", init=1)
        s_full = [reg(1, f"s_full{j}") for j in range(2)]
        s_ready = [reg(1, f"s_ready{j}") for j in range(2)]
        cur = {k: reg(shp, f"cur_{k}") for k, shp in params}
        m.d.comb += self.i.ready.eq(~Mux(in_bank, s_full[1], s_full[0]))
        accept = self.i.valid & self.i.ready

        b = Signal(dots_layout(cfg), name="b")          # the accepted beat, one cycle later
        b_v, b_first, b_bank = reg(1, "b_v"), reg(1, "b_first"), reg(1, "b_bank")
        m.d.sync += b_v.eq(accept)
        with m.If(accept):
            m.d.sync += [b.eq(self.i.payload), b_first.eq(in_first), b_bank.eq(in_bank),
                         in_first.eq(self.i.payload.last)]
            with m.If(in_first):
                m.d.sync += [cur["shift"].eq(self.shift), cur["scale"].eq(self.scale),
                             cur["ps"].eq(self.post_shift)]
            with m.If(self.i.payload.last):
                m.d.sync += in_bank.eq(~in_bank)
                for j in range(2):
                    with m.If(in_bank == j):
                        m.d.sync += s_full[j].eq(1)

        idx = reg(range(depth + 1), "in_idx")            # beat index of b in its row
        r_err = reg(1, "in_err")
        cnt = b.count
        over = idx == depth
        bad = (cnt == 0) | (cnt > S) | (~b.last & (cnt != S)) | over
        err_now = bad | r_err
        m.d.comb += [s_wr.addr.eq(bank_addr(b_bank, idx)),
                     s_wr.data.eq(b.data), s_wr.en.eq(b_v & ~over)]
        with m.If(b_v):
            with m.If(b.last):
                m.d.sync += [idx.eq(0), r_err.eq(0)]
            with m.Else():
                m.d.sync += [idx.eq(Mux(over, idx, idx + 1)), r_err.eq(err_now)]

        # running maximum per lane, then a registered tree
        lane_max = [reg(signed(DW), f"lane_max{lane}") for lane in range(S)]
        with m.If(b_v):
            for lane in range(S):
                ok = cnt > lane
                with m.If(b_first):
                    m.d.sync += lane_max[lane].eq(Mux(ok, b.data[lane], dmin))
                with m.Elif(ok & (b.data[lane] > lane_max[lane])):
                    m.d.sync += lane_max[lane].eq(b.data[lane])
        level = lane_max
        for k in range(R):
            nxt = []
            for x in range(len(level) // 2):
                a, c = level[2 * x], level[2 * x + 1]
                r = reg(signed(DW), f"max_l{k + 1}_{x}")
                m.d.sync += r.eq(Mux(a > c, a, c))
                nxt.append(r)
            level = nxt
        row_max = level[0]

        # the row's descriptor, delayed to meet the tree's output
        desc_fields = [("v", 1), ("bank", 1), ("err", 1), ("n", range(cfg.capacity + 1)),
                       ("nb", range(depth + 1)), ("lc", range(S + 1))] + params
        desc = {k: reg(shp, f"desc0_{k}") for k, shp in desc_fields}
        n_now = idx * S + cnt
        m.d.sync += desc["v"].eq(b_v & b.last)
        with m.If(b_v & b.last):
            m.d.sync += [desc["bank"].eq(b_bank), desc["err"].eq(err_now),
                         desc["n"].eq(Mux(err_now, 0, n_now)),
                         desc["nb"].eq(Mux(err_now, 1, idx + 1)),
                         desc["lc"].eq(Mux(err_now, 0, cnt))]
            m.d.sync += [desc[k].eq(cur[k]) for k, _ in params]
        for k in range(R):
            nxt = {f: reg(shp, f"desc{k + 1}_{f}") for f, shp in desc_fields}
            m.d.sync += [nxt[f].eq(desc[f]) for f, _ in desc_fields]
            desc = nxt

        meta_fields = [("err", 1), ("n", range(cfg.capacity + 1)), ("nb", range(depth + 1)),
                       ("lc", range(S + 1)), ("max", signed(DW))] + params
        s_meta = [{k: reg(shp, f"s{j}_{k}") for k, shp in meta_fields} for j in range(2)]
        for j in range(2):
            with m.If(desc["v"] & (desc["bank"] == j)):
                m.d.sync += s_ready[j].eq(1)
                m.d.sync += [s_meta[j][k].eq(desc[k]) for k, _ in meta_fields if k != "max"]
                m.d.sync += s_meta[j]["max"].eq(Mux(desc["err"], 0, row_max))

        # ------------------------------------------------------------------ e banks
        e_state = [reg(range(5), f"e_state{j}") for j in range(NE)]
        e_fields = [("err", 1), ("n", range(cfg.capacity + 1)), ("nb", range(depth + 1)),
                    ("lc", range(S + 1)), ("max", signed(DW)), ("esum", unsigned(EW)),
                    ("recip", unsigned(PB + 1)), ("norm", nrm_w)]
        e_meta = [{k: reg(shp, f"e{j}_{k}") for k, shp in e_fields} for j in range(NE)]

        def pick(sigs, sel):
            return Array(sigs)[sel] if len(sigs) > 1 else sigs[0]

        def ptr_next(p):
            return Mux(p == NE - 1, 0, p + 1)

        # ------------------------------------------------------------------ exp pass: control
        x_sptr = reg(1, "x_sptr")
        xw = reg(range(NE), "xw")
        x_act = reg(1, "x_act")
        x_addr = reg(range(depth), "x_addr")
        x_lasta = reg(range(depth), "x_lasta")
        x_sb = reg(1, "x_sb")
        x_eb = reg(range(NE), "x_eb")
        x_lc = reg(range(S + 1), "x_lc")
        x_max = reg(signed(DW), "x_max")
        xp = {k: reg(shp, f"x_{k}") for k, shp in params}
        x_at_last = x_addr == x_lasta
        x_done = x_act & x_at_last
        sm = {k: Mux(x_sptr, s_meta[1][k], s_meta[0][k]) for k, _ in meta_fields}
        x_start = (Mux(x_sptr, s_ready[1], s_ready[0]) & (pick(e_state, xw) == _FREE)
                   & (~x_act | x_at_last))
        with m.If(x_start):
            m.d.sync += [x_act.eq(1), x_addr.eq(0), x_lasta.eq(sm["nb"] - 1), x_sb.eq(x_sptr),
                         x_eb.eq(xw), x_lc.eq(sm["lc"]), x_max.eq(sm["max"]),
                         x_sptr.eq(~x_sptr), xw.eq(ptr_next(xw))]
            m.d.sync += [xp[k].eq(sm[k]) for k, _ in params]
            for j in range(2):
                with m.If(x_sptr == j):
                    m.d.sync += s_ready[j].eq(0)
            for j in range(NE):
                with m.If(xw == j):
                    m.d.sync += e_state[j].eq(_EXP)
                    m.d.sync += [e_meta[j][k].eq(sm[k]) for k in ("err", "n", "nb", "lc",
                                                                   "max")]
        with m.Elif(x_done):
            m.d.sync += x_act.eq(0)
        with m.If(x_act & ~x_start):
            m.d.sync += x_addr.eq(x_addr + 1)
        with m.If(x_done):
            for j in range(2):
                with m.If(x_sb == j):
                    m.d.sync += s_full[j].eq(0)
        m.d.comb += s_rd.addr.eq(bank_addr(x_sb, x_addr))

        # ------------------------------------------------------------------ exp pass: datapath
        def carry(src, keys, tag):
            """Registered copies of src[k] for k in keys."""
            out = {}
            for k in keys:
                out[k] = Signal.like(src[k], name=f"{tag}_{k}")
                m.d.sync += out[k].eq(src[k])
            return out

        side = ["v", "eb", "ea", "last", "first", "cnt"]
        p0 = {"v": x_act, "eb": x_eb, "ea": x_addr, "last": x_at_last, "first": x_addr == 0,
              "cnt": Mux(x_at_last, x_lc, S), "max": x_max, **xp}
        # P1: the read is in flight
        p1 = carry(p0, side + ["max", "shift", "scale", "ps"], "x1")
        # P2: the dots, straight from the bank into registers
        p2 = carry(p1, side + ["max", "shift", "scale", "ps"], "x2")
        dot = [Signal(signed(DW), name=f"x2_dot{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += dot[lane].eq(s_rd.data[lane])
        # P3: t = max - dot
        p3 = carry(p2, side + ["shift", "scale", "ps"], "x3")
        t = [Signal(unsigned(DW), name=f"x3_t{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += t[lane].eq((p2["max"] - dot[lane])[:DW])
        # P4: t >> shift[0:3]
        p4 = carry(p3, side + ["shift", "scale", "ps"], "x4")
        u = [Signal(unsigned(DW), name=f"x4_u{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += u[lane].eq(t[lane] >> p3["shift"][:3])
        # P5: t >> shift[3:], saturated to t_bits: the multiplier's inputs
        p5 = carry(p4, side + ["scale", "ps"], "x5")
        ts = [Signal(unsigned(TB), name=f"x5_ts{lane}") for lane in range(S)]
        for lane in range(S):
            w = u[lane] >> Cat(Const(0, 3), p4["shift"][3:])
            hi = w[TB:] if DW > TB else Const(0, 1)
            m.d.sync += ts[lane].eq(Mux(hi != 0, (1 << TB) - 1, w[:TB]))
        # P6: the product
        p6 = carry(p5, side + ["ps"], "x6")
        prod = [Signal(unsigned(TB + SB), name=f"x6_prod{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += prod[lane].eq(ts[lane] * p5["scale"])
        # P7, P8: v = (2 prod) >> post_shift in two steps; y = (v + 1) >> 1 saturated later
        VW = max(TB + SB + 1, YW + 2)
        p7 = carry(p6, side + ["ps"], "x7")
        v1 = [Signal(unsigned(VW), name=f"x7_v{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += v1[lane].eq(Cat(Const(0, 1), prod[lane]) >> p6["ps"][:3])
        p8 = carry(p7, side, "x8")
        v2 = [Signal(unsigned(VW), name=f"x8_v{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += v2[lane].eq(v1[lane] >> Cat(Const(0, 3), p7["ps"][3:]))
        # P9: y (saturated at y_max) addresses the exponent ROM; its integer part goes on
        p9 = carry(p8, side, "x9")
        yi = [Signal(unsigned(cfg.y_int_bits), name=f"x9_yi{lane}") for lane in range(S)]
        for lane in range(S):
            v = v2[lane]
            sat = (v[YW + 1:] != 0) | (v[:YW + 1] == (1 << (YW + 1)) - 1)
            y = Mux(sat, cfg.y_max, (v[1:YW + 1] + v[0])[:YW])
            m.d.comb += [rom_rd[lane].addr.eq(y[:YF])]
            m.d.sync += yi[lane].eq(y[YF:])
        # P10: the ROM's output, registered
        p10 = carry(p9, side, "x10")
        tab = [Signal(unsigned(PB + 1), name=f"x10_tab{lane}") for lane in range(S)]
        yi10 = [Signal.like(yi[lane], name=f"x10_yi{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += [tab[lane].eq(rom_rd[lane].data), yi10[lane].eq(yi[lane])]
        # P11: (2 tab) >> yi
        p11 = carry(p10, side, "x11")
        h = [Signal(unsigned(PB + 2), name=f"x11_h{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += h[lane].eq(Cat(Const(0, 1), tab[lane]) >> yi10[lane])
        # P12: e = (h + 1) >> 1, zero in the lanes above count
        p12 = carry(p11, side, "x12")
        e = [Signal(unsigned(PB + 1), name=f"x12_e{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += e[lane].eq(Mux(p11["cnt"] > lane, (h[lane][1:] + h[lane][0])[:PB + 1], 0))
        m.d.comb += [e_wr.addr.eq(bank_addr(p12["eb"], p12["ea"])), e_wr.data.eq(Cat(*e)),
                     e_wr.en.eq(p12["v"])]
        # esum: an adder tree, registered per level, then the accumulator
        sums, ps_ = e, p12
        for k in range(R):
            nxt = []
            for x in range(len(sums) // 2):
                r = Signal(unsigned(PB + 2 + k), name=f"esum_l{k + 1}_{x}")
                m.d.sync += r.eq(sums[2 * x] + sums[2 * x + 1])
                nxt.append(r)
            sums = nxt
            ps_ = carry(ps_, ["v", "eb", "last", "first"], f"xs{k + 1}")
        acc = reg(unsigned(EW), "esum_acc")
        acc_next = (Mux(ps_["first"], 0, acc) + sums[0])[:EW]
        with m.If(ps_["v"]):
            m.d.sync += acc.eq(acc_next)
        for j in range(NE):
            with m.If(ps_["v"] & ps_["last"] & (ps_["eb"] == j)):
                m.d.sync += [e_meta[j]["esum"].eq(acc_next), e_state[j].eq(_DONE)]

        # ------------------------------------------------------------------ reciprocal
        # esum >= 2**16 for a good row (the maximum's e is 2**16), 0 for an error row
        m.submodules.reciprocal = recip = Reciprocal(
            value_width=EW, divisor_bits=PB + 1, normalise_up=False, saturate=True)
        assert recip.latency + 1 == cfg.softmax_recip_cycles      # + the e bank's ready flag
        rp = reg(range(NE), "rc_ptr")
        rc_bank = reg(range(NE), "rc_bank")
        m.d.comb += [recip.i.valid.eq(pick(e_state, rp) == _DONE),
                     recip.i.payload.eq(pick([e_meta[j]["esum"] for j in range(NE)], rp)),
                     recip.o.ready.eq(1)]
        with m.If(recip.i.valid & recip.i.ready):
            m.d.sync += [rc_bank.eq(rp), rp.eq(ptr_next(rp))]
        with m.If(recip.o.valid):
            for j in range(NE):
                with m.If(rc_bank == j):
                    m.d.sync += [e_meta[j]["recip"].eq(recip.o.payload.recip),
                                 e_meta[j]["norm"].eq(recip.o.payload.exponent),
                                 e_state[j].eq(_RDY)]

        # ------------------------------------------------------------------ normalise pass
        np_ = reg(range(NE), "n_ptr")
        n_act = reg(1, "n_act")
        n_addr = reg(range(depth), "n_addr")
        n_lasta = reg(range(depth), "n_lasta")
        n_eb = reg(range(NE), "n_eb")
        n_lc = reg(range(S + 1), "n_lc")
        n_recip = reg(unsigned(PB + 1), "n_recip")
        n_norm = reg(nrm_w, "n_norm")
        occ = reg(range(self.OUT_DEPTH + 1), "n_occ")
        row_st = reg(range(4), "row_st")                 # 0 empty, 1-2 computing p_max, 3 valid
        n_issue = n_act & (occ < self.OUT_DEPTH)
        n_at_last = n_addr == n_lasta
        n_done = n_issue & n_at_last
        em = {k: pick([e_meta[j][k] for j in range(NE)], np_) for k, _ in e_fields}
        n_start = (pick(e_state, np_) == _RDY) & (row_st == 0) & (~n_act | n_done)
        with m.If(n_start):
            m.d.sync += [n_act.eq(1), n_addr.eq(0), n_lasta.eq(em["nb"] - 1), n_eb.eq(np_),
                         n_lc.eq(em["lc"]), n_recip.eq(em["recip"]), n_norm.eq(em["norm"]),
                         np_.eq(ptr_next(np_))]
            for j in range(NE):
                with m.If(np_ == j):
                    m.d.sync += e_state[j].eq(_NORM)
        with m.Elif(n_done):
            m.d.sync += n_act.eq(0)
        with m.If(n_issue & ~n_start):
            m.d.sync += n_addr.eq(n_addr + 1)
        with m.If(n_done):
            for j in range(NE):
                with m.If(n_eb == j):
                    m.d.sync += e_state[j].eq(_FREE)
        m.d.comb += e_rd.addr.eq(bank_addr(n_eb, n_addr))

        q0 = {"v": n_issue, "eb": n_eb, "last": n_at_last, "cnt": Mux(n_at_last, n_lc, S),
              "recip": n_recip, "norm": n_norm}
        q1 = carry(q0, ["v", "last", "cnt", "recip", "norm"], "n1")
        # Q2: e from the bank and the reciprocal: the multiplier's inputs
        q2 = carry(q1, ["v", "last", "cnt", "recip", "norm"], "n2")
        ne = [Signal(unsigned(PB + 1), name=f"n2_e{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += ne[lane].eq(e_rd.data[lane])
        # Q3: the product
        q3 = carry(q2, ["v", "last", "cnt", "norm"], "n3")
        nprod = [Signal(unsigned(2 * PB + 2), name=f"n3_prod{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += nprod[lane].eq(ne[lane] * q2["recip"])
        # Q4: v = prod >> (16 + norm); then p = min((v + 1) >> 1, 65535) into the FIFO
        q4 = carry(q3, ["v", "last", "cnt"], "n4")
        nv = [Signal(unsigned(PB + 2), name=f"n4_v{lane}") for lane in range(S)]
        for lane in range(S):
            m.d.sync += nv[lane].eq(nprod[lane][PB:] >> q3["norm"])
        m.submodules.out_fifo = fifo = SyncFIFOBuffered(width=probs_layout(cfg).size,
                                                         depth=self.OUT_DEPTH)
        beat = Signal(probs_layout(cfg), name="n_beat")
        for lane in range(S):
            pv = nv[lane][1:] + nv[lane][0]
            p = Mux(pv[PB:] != 0, (1 << PB) - 1, pv[:PB])
            m.d.comb += beat.data[lane].eq(Mux(q4["cnt"] > lane, p, 0))
        m.d.comb += [beat.count.eq(q4["cnt"]), beat.last.eq(q4["last"]),
                     fifo.w_data.eq(beat), fifo.w_en.eq(q4["v"]),
                     self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.o.ready)]
        taken = self.o.valid & self.o.ready
        m.d.sync += occ.eq(occ + n_issue - taken)

        # ------------------------------------------------------------------ row output
        rw = Signal(row_info_layout(cfg), name="row_beat")
        rw_recip = reg(unsigned(PB + 1), "row_recip")
        rw_norm = reg(nrm_w, "row_norm")
        rw_v = reg(unsigned(PB + 1), "row_v")
        with m.If(n_start):
            m.d.sync += [rw.esum.eq(Mux(em["err"], 0, em["esum"])), rw.n.eq(em["n"]),
                         rw.max.eq(em["max"]), rw.error.eq(em["err"]), rw.p_max.eq(0),
                         rw_recip.eq(em["recip"]), rw_norm.eq(em["norm"]), row_st.eq(1)]
        with m.Elif(row_st == 1):
            m.d.sync += [rw_v.eq(rw_recip >> rw_norm), row_st.eq(2)]
        with m.Elif(row_st == 2):
            pm = rw_v[1:] + rw_v[0]
            with m.If(~rw.error):
                m.d.sync += rw.p_max.eq(Mux(pm[PB:] != 0, (1 << PB) - 1, pm[:PB]))
            m.d.sync += row_st.eq(3)
        with m.Elif((row_st == 3) & self.row.ready):
            m.d.sync += row_st.eq(0)
        m.d.comb += [self.row.payload.eq(rw), self.row.valid.eq(row_st == 3)]
        return m
