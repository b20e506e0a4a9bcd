"""The softmax's exp pass: a row's dots read from its score bank, one beat a cycle, turned
into U1.16 exponentials e = 2**-y (y = the scaled distance below the row maximum) written to
an e bank, and summed.

`ExpReader` is the control (which row, which banks, which beat); `ExpPipeline` the datapath.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from .softmax_common import (
    E_BANKS,
    SideChain,
    bank_address,
    bank_depth,
    check_config,
    e_row_layout,
    score_params_layout,
    score_row_layout,
)

__all__ = ["ExpReader", "ExpPipeline", "exp_read_layout", "exp_rom"]


def exp_read_layout(cfg) -> data.StructLayout:
    """One cycle of the exp pass as the reader issues it: a beat read (``valid``), the e bank and
    beat it goes to, whether it is the row's first or last beat, its count of dots, the row's
    maximum and score-scaling registers."""
    S = cfg.softmax_lanes
    return data.StructLayout({
        "valid": 1,
        "bank": range(E_BANKS),
        "addr": range(bank_depth(cfg)),
        "last": 1,
        "first": 1,
        "count": range(S + 1),
        "max": signed(cfg.dot_width),
        **{name: field.shape for name, field in score_params_layout(cfg)},
    })


def exp_rom(cfg) -> Memory:
    """The exponent ROM: rom[f] = round(2**16 * 2**(-f / 2**y_frac_bits)), U1.16."""
    return Memory(shape=unsigned(cfg.e_width), depth=1 << cfg.y_frac_bits, init=cfg.exp_table())


def _score_port(cfg):
    depth = bank_depth(cfg)
    return ReadPort.Signature(addr_width=(2 * depth - 1).bit_length(),
                              shape=data.ArrayLayout(signed(cfg.dot_width), cfg.softmax_lanes))


def e_port_shape(cfg) -> data.ArrayLayout:
    """A beat of an e bank: S exponentials, U1.16."""
    return data.ArrayLayout(unsigned(cfg.prob_bits + 1), cfg.softmax_lanes)


class ExpReader(wiring.Component):
    """The exp pass's control: takes a row from its score bank and an e bank for it, and reads
    the row's beats, one a cycle.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    rows : In(stream.Signature(score_row_layout(config)))
        The rows in their score banks (`ScoreIngest.rows`).
    claim : Out(stream.Signature(e_row_layout(config))); claim_bank : In(range(E_BANKS))
        The e bank for the row (`EBankRing.claim`): a row is taken together with its e bank.
    score_read : In(ReadPort.Signature(...))
        The score memory's read port (address only; the data goes to the pipeline).
    reads : Out(exp_read_layout(config))
        Each cycle's read, for `ExpPipeline`.
    release : Out(1); release_bank : Out(1)
        The row's last beat is read: its score bank is free.

    Timing: a row is taken when the previous one is at its last read (or none is being read)
    and the e bank is free; its B beats are read in the B cycles after, back to back with the
    previous row's.
    """

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        super().__init__({
            "rows": In(stream.Signature(score_row_layout(cfg))),
            "claim": Out(stream.Signature(e_row_layout(cfg))),
            "claim_bank": In(range(E_BANKS)),
            "score_read": In(_score_port(cfg)),
            "reads": Out(exp_read_layout(cfg)),
            "release": Out(1),
            "release_bank": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S, depth = cfg.softmax_lanes, bank_depth(cfg)
        row = self.rows.payload

        active = Signal(name="x_act")
        addr = Signal(range(depth), name="x_addr")
        last_addr = Signal(range(depth), name="x_lasta")
        score_bank = Signal(name="x_sb")
        e_bank = Signal(range(E_BANKS), name="x_eb")
        last_count = Signal(range(S + 1), name="x_lc")
        row_max = Signal(signed(cfg.dot_width), name="x_max")
        params = Signal(score_params_layout(cfg), name="x_params")
        at_last = addr == last_addr
        done = active & at_last

        # a row and its e bank are taken together, when the reader is free by the next cycle
        free = ~active | at_last
        m.d.comb += [self.claim.valid.eq(self.rows.valid & free),
                     self.rows.ready.eq(self.claim.ready & free)]
        m.d.comb += [getattr(self.claim.payload, name).eq(getattr(row, name))
                     for name, _ in self.claim.payload.shape()]
        start = self.rows.valid & self.rows.ready
        with m.If(start):
            m.d.sync += [active.eq(1), addr.eq(0), last_addr.eq(row.beats - 1),
                         score_bank.eq(row.bank), e_bank.eq(self.claim_bank),
                         last_count.eq(row.last_count), row_max.eq(row.max),
                         params.shift.eq(row.shift), params.scale.eq(row.scale),
                         params.post_shift.eq(row.post_shift)]
        with m.Elif(done):
            m.d.sync += active.eq(0)
        with m.If(active & ~start):
            m.d.sync += addr.eq(addr + 1)
        m.d.comb += [self.release.eq(done), self.release_bank.eq(score_bank),
                     self.score_read.addr.eq(bank_address(score_bank, addr, depth))]

        reads = self.reads
        m.d.comb += [reads.valid.eq(active), reads.bank.eq(e_bank), reads.addr.eq(addr),
                     reads.last.eq(at_last), reads.first.eq(addr == 0),
                     reads.count.eq(Mux(at_last, last_count, S)), reads.max.eq(row_max),
                     reads.shift.eq(params.shift), reads.scale.eq(params.scale),
                     reads.post_shift.eq(params.post_shift)]
        return m


class ExpPipeline(wiring.Component):
    """The exp pass's datapath: dots to exponentials, written to the e bank, and their sum.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    reads : In(exp_read_layout(config))
        Each cycle's read (`ExpReader.reads`).
    dots : In(ArrayLayout(signed(dot_width), S))
        The score memory's read data (the cycle after the read).
    e_write : In(WritePort.Signature(...))
        The e memory's write port: beat ``addr`` of bank ``bank``, e = 0 in the lanes at and
        above the beat's count.
    summed : Out(StructLayout({"valid": 1, "bank": range(E_BANKS), "esum": ...}))
        A row's sum of e, strobed once per row.
    rom_addr : Out(ArrayLayout(unsigned(y_frac_bits), S)); rom_data : In(ArrayLayout(...))
        Synchronous read ports of the exponent ROM (`exp_rom`, which the softmax holds beside
        its other memories): the data the cycle after the address.

    Arithmetic (bit for bit `golden.attention.softmax`): t = max - dot; y = min(((min(t >>
    shift, 2**t_bits - 1) * scale * 2) >> post_shift + 1) >> 1, y_max); e = (2 * rom[y mod
    2**y_frac_bits] >> (y >> y_frac_bits) + 1) >> 1, rom = `AttentionConfig.exp_table`.

    Timing: every stage a register, no stall. A read in cycle t is written to the e bank in
    cycle t + `STAGES` (12: read, dot, subtract, two shifts and saturate, product, two shifts,
    ROM address, ROM data, two rounding steps); the sum of a row whose last read is in cycle t
    is strobed on ``summed`` in cycle t + `sum_latency` (STAGES + log2 S adder-tree levels).
    """

    #: pipeline registers from a read to the e bank's write
    STAGES = 12

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        self.levels = int(math.log2(cfg.softmax_lanes))
        super().__init__({
            "reads": In(exp_read_layout(cfg)),
            "dots": In(data.ArrayLayout(signed(cfg.dot_width), cfg.softmax_lanes)),
            "e_write": In(WritePort.Signature(
                addr_width=(E_BANKS * bank_depth(cfg) - 1).bit_length(), shape=e_port_shape(cfg))),
            "summed": Out(data.StructLayout({"valid": 1, "bank": range(E_BANKS),
                                             "esum": unsigned(cfg.esum_width)})),
            "rom_addr": Out(data.ArrayLayout(unsigned(cfg.y_frac_bits), cfg.softmax_lanes)),
            "rom_data": In(data.ArrayLayout(unsigned(cfg.e_width), cfg.softmax_lanes)),
        })

    @property
    def sum_latency(self) -> int:
        """Cycles from a row's last read to its ``summed`` strobe."""
        return self.STAGES + self.levels

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S, DW = cfg.softmax_lanes, cfg.dot_width
        TB, SB = cfg.t_bits, cfg.scale_bits
        YW, YF = cfg.y_width, cfg.y_frac_bits
        PB = cfg.prob_bits
        lanes = range(S)

        def lane_regs(shape, name):
            return [Signal(shape, name=f"{name}{lane}") for lane in lanes]

        beat_keys = ["valid", "bank", "addr", "last", "first", "count"]
        p0 = {name: getattr(self.reads, name) for name, _ in self.reads.shape()}
        chain = SideChain(m, p0)

        # P1: the read is in flight
        chain.advance(beat_keys + ["max", "shift", "scale", "post_shift"], "x1")
        # P2: the dots, straight from the bank into registers
        p2 = chain.advance(beat_keys + ["max", "shift", "scale", "post_shift"], "x2")
        dot = lane_regs(signed(DW), "x2_dot")
        m.d.sync += [dot[lane].eq(self.dots[lane]) for lane in lanes]
        # P3: t = max - dot
        p3 = chain.advance(beat_keys + ["shift", "scale", "post_shift"], "x3")
        t = lane_regs(unsigned(DW), "x3_t")
        m.d.sync += [t[lane].eq((p2["max"] - dot[lane])[:DW]) for lane in lanes]
        # P4: t >> shift[0:3]
        p4 = chain.advance(beat_keys + ["shift", "scale", "post_shift"], "x4")
        u = lane_regs(unsigned(DW), "x4_u")
        m.d.sync += [u[lane].eq(t[lane] >> p3["shift"][:3]) for lane in lanes]
        # P5: t >> shift[3:], saturated to t_bits: the multiplier's inputs
        p5 = chain.advance(beat_keys + ["scale", "post_shift"], "x5")
        ts = lane_regs(unsigned(TB), "x5_ts")
        for lane in lanes:
            w = u[lane] >> Cat(Const(0, 3), p4["shift"][3:])
            hi = w[TB:] if DW > TB else Const(0, 1)
            m.d.sync += ts[lane].eq(Mux(hi != 0, (1 << TB) - 1, w[:TB]))
        # P6: the product
        p6 = chain.advance(beat_keys + ["post_shift"], "x6")
        prod = lane_regs(unsigned(TB + SB), "x6_prod")
        m.d.sync += [prod[lane].eq(ts[lane] * p5["scale"]) for lane in lanes]
        # P7, P8: v = (2 prod) >> post_shift in two steps; y = (v + 1) >> 1 saturated later
        VW = max(TB + SB + 1, YW + 2)
        p7 = chain.advance(beat_keys + ["post_shift"], "x7")
        v1 = lane_regs(unsigned(VW), "x7_v")
        m.d.sync += [v1[lane].eq(Cat(Const(0, 1), prod[lane]) >> p6["post_shift"][:3])
                     for lane in lanes]
        chain.advance(beat_keys, "x8")
        v2 = lane_regs(unsigned(VW), "x8_v")
        m.d.sync += [v2[lane].eq(v1[lane] >> Cat(Const(0, 3), p7["post_shift"][3:]))
                     for lane in lanes]
        # P9: y (saturated at y_max) addresses the exponent ROM; its integer part goes on
        chain.advance(beat_keys, "x9")
        yi = lane_regs(unsigned(cfg.y_int_bits), "x9_yi")
        for lane in lanes:
            v = v2[lane]
            sat = (v[YW + 1:] != 0) | (v[:YW + 1] == (1 << (YW + 1)) - 1)
            y = Mux(sat, cfg.y_max, (v[1:YW + 1] + v[0])[:YW])
            m.d.comb += self.rom_addr[lane].eq(y[:YF])
            m.d.sync += yi[lane].eq(y[YF:])
        # P10: the ROM's output, registered
        chain.advance(beat_keys, "x10")
        tab = lane_regs(unsigned(PB + 1), "x10_tab")
        yi10 = lane_regs(unsigned(cfg.y_int_bits), "x10_yi")
        m.d.sync += [tab[lane].eq(self.rom_data[lane]) for lane in lanes]
        m.d.sync += [yi10[lane].eq(yi[lane]) for lane in lanes]
        # P11: (2 tab) >> yi
        p11 = chain.advance(beat_keys, "x11")
        h = lane_regs(unsigned(PB + 2), "x11_h")
        m.d.sync += [h[lane].eq(Cat(Const(0, 1), tab[lane]) >> yi10[lane]) for lane in lanes]
        # P12: e = (h + 1) >> 1, zero in the lanes above count
        p12 = chain.advance(beat_keys, "x12")
        e = lane_regs(unsigned(PB + 1), "x12_e")
        m.d.sync += [e[lane].eq(Mux(p11["count"] > lane, (h[lane][1:] + h[lane][0])[:PB + 1], 0))
                     for lane in lanes]
        assert chain.depth == self.STAGES
        m.d.comb += [self.e_write.addr.eq(bank_address(p12["bank"], p12["addr"],
                                                       bank_depth(cfg))),
                     self.e_write.data.eq(Cat(*e)), self.e_write.en.eq(p12["valid"])]

        # esum: an adder tree, registered per level, then the accumulator
        sums, tree = e, SideChain(m, p12)
        for k in range(self.levels):
            below = sums
            sums = [Signal(unsigned(PB + 2 + k), name=f"esum_l{k + 1}_{x}")
                    for x in range(len(below) // 2)]
            m.d.sync += [s.eq(below[2 * x] + below[2 * x + 1]) for x, s in enumerate(sums)]
            tree.advance(["valid", "bank", "last", "first"], f"xs{k + 1}")
        side_info = tree.stages[-1]
        acc = Signal(unsigned(cfg.esum_width), name="esum_acc")
        acc_next = (Mux(side_info["first"], 0, acc) + sums[0])[:cfg.esum_width]
        with m.If(side_info["valid"]):
            m.d.sync += acc.eq(acc_next)
        m.d.comb += [self.summed.valid.eq(side_info["valid"] & side_info["last"]),
                     self.summed.bank.eq(side_info["bank"]), self.summed.esum.eq(acc_next)]
        return m
