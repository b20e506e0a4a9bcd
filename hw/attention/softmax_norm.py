"""The softmax's normalise pass (a row's exponentials times its reciprocal: the probabilities)
and its row output (one beat of figures per row)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from .softmax_common import (
    E_BANKS,
    SideChain,
    bank_address,
    bank_depth,
    bank_row_layout,
    check_config,
    probs_layout,
    row_info_layout,
)
from .softmax_exp import e_port_shape

__all__ = ["NormalisePass", "RowOutput", "RowOutputState"]


class NormalisePass(wiring.Component):
    """p = min((e * recip + 2**(16 + norm)) >> (17 + norm), 2**16 - 1) for each e of a row,
    and the row's ``row`` beat (`RowOutput`).

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    rows : In(stream.Signature(bank_row_layout(config)))
        The rows in their e banks, with their reciprocals (`EBankRing.rows`); uses bank, beats,
        last_count, recip and norm.
    e_read : In(ReadPort.Signature(...))
        The e memory's read port.
    o : Out(stream.Signature(probs_layout(config)))
        The row's probabilities, beat for beat as the row came in (lanes at and above a beat's
        count read 0).
    row : Out(stream.Signature(row_info_layout(config)))
        The row's beat of figures (`RowOutput`), offered `RowOutput.latency` cycles after the
        row is taken, before its first ``o`` beat.
    release : Out(1); release_bank : Out(range(E_BANKS))
        The row's last beat is read: its e bank is free.

    Timing: a row is taken while the previous one issues its last read (or none is being read)
    and the row output is empty;
    then one beat is read a cycle while fewer than `OUT_DEPTH` beats are on their way out or
    waiting in the output FIFO (a credit, so that ``o.ready`` reaches only the FIFO). A beat
    read in cycle c is offered on ``o`` from c + `latency` (6: the read, e, the product, the
    shift, the FIFO's write and its output register).
    """

    #: depth of the output FIFO (and of the credit)
    OUT_DEPTH = 8
    #: pipeline registers from a read to the FIFO's write
    STAGES = 4
    #: cycles from a write into `SyncFIFOBuffered` to its output
    FIFO_LATENCY = 2

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        depth = bank_depth(cfg)
        super().__init__({
            "rows": In(stream.Signature(bank_row_layout(cfg))),
            "e_read": In(ReadPort.Signature(addr_width=(E_BANKS * depth - 1).bit_length(),
                                            shape=e_port_shape(cfg))),
            "o": Out(stream.Signature(probs_layout(cfg))),
            "row": Out(stream.Signature(row_info_layout(cfg))),
            "release": Out(1),
            "release_bank": Out(range(E_BANKS)),
        })

    @property
    def latency(self) -> int:
        """Cycles from a beat's read to its offer on ``o``."""
        return self.STAGES + self.FIFO_LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        S, PB, depth = cfg.softmax_lanes, cfg.prob_bits, bank_depth(cfg)
        row = self.rows.payload
        lanes = range(S)

        active = Signal(name="n_act")
        addr = Signal(range(depth), name="n_addr")
        last_addr = Signal(range(depth), name="n_lasta")
        e_bank = Signal(range(E_BANKS), name="n_eb")
        last_count = Signal(range(S + 1), name="n_lc")
        recip = Signal.like(row.recip, name="n_recip")
        norm = Signal.like(row.norm, name="n_norm")
        in_flight = Signal(range(self.OUT_DEPTH + 1), name="n_occ")
        issue = active & (in_flight < self.OUT_DEPTH)
        at_last = addr == last_addr
        done = issue & at_last
        # the row output takes the row together with the pass, and its reciprocal from here
        m.submodules.row_output = row_output = RowOutput(config=cfg)
        m.d.comb += [self.rows.ready.eq((~active | done) & row_output.i.ready),
                     row_output.i.valid.eq(self.rows.valid & (~active | done)),
                     row_output.recip.eq(recip), row_output.norm.eq(norm)]
        m.d.comb += [getattr(row_output.i.payload, name).eq(getattr(row, name))
                     for name, _ in row_output.i.payload.shape()]
        wiring.connect(m, row_output.o, wiring.flipped(self.row))
        start = self.rows.valid & self.rows.ready
        with m.If(start):
            m.d.sync += [active.eq(1), addr.eq(0), last_addr.eq(row.beats - 1),
                         e_bank.eq(row.bank), last_count.eq(row.last_count),
                         recip.eq(row.recip), norm.eq(row.norm)]
        with m.Elif(done):
            m.d.sync += active.eq(0)
        with m.If(issue & ~start):
            m.d.sync += addr.eq(addr + 1)
        m.d.comb += [self.release.eq(done), self.release_bank.eq(e_bank),
                     self.e_read.addr.eq(bank_address(e_bank, addr, depth))]

        q0 = {"valid": issue, "last": at_last, "count": Mux(at_last, last_count, S),
              "recip": recip, "norm": norm}
        chain = SideChain(m, q0)

        chain.advance(["valid", "last", "count", "recip", "norm"], "n1")
        # Q2: e from the bank and the reciprocal: the multiplier's inputs
        q2 = chain.advance(["valid", "last", "count", "recip", "norm"], "n2")
        e = [Signal(unsigned(PB + 1), name=f"n2_e{lane}") for lane in lanes]
        m.d.sync += [e[lane].eq(self.e_read.data[lane]) for lane in lanes]
        # Q3: the product
        q3 = chain.advance(["valid", "last", "count", "norm"], "n3")
        product = [Signal(unsigned(2 * PB + 2), name=f"n3_prod{lane}") for lane in lanes]
        m.d.sync += [product[lane].eq(e[lane] * q2["recip"]) for lane in lanes]
        # Q4: v = prod >> (16 + norm); then p = min((v + 1) >> 1, 65535) into the FIFO
        q4 = chain.advance(["valid", "last", "count"], "n4")
        v = [Signal(unsigned(PB + 2), name=f"n4_v{lane}") for lane in lanes]
        m.d.sync += [v[lane].eq(product[lane][PB:] >> q3["norm"]) for lane in lanes]
        assert chain.depth == self.STAGES

        m.submodules.out_fifo = fifo = SyncFIFOBuffered(width=probs_layout(cfg).size,
                                                         depth=self.OUT_DEPTH)
        beat = Signal(probs_layout(cfg), name="n_beat")
        for lane in lanes:
            rounded = v[lane][1:] + v[lane][0]
            p = Mux(rounded[PB:] != 0, (1 << PB) - 1, rounded[:PB])
            m.d.comb += beat.data[lane].eq(Mux(q4["count"] > lane, p, 0))
        m.d.comb += [beat.count.eq(q4["count"]), beat.last.eq(q4["last"]),
                     fifo.w_data.eq(beat), fifo.w_en.eq(q4["valid"]),
                     self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.o.ready)]
        taken = self.o.valid & self.o.ready
        m.d.sync += in_flight.eq(in_flight + issue - taken)
        return m


class RowOutputState(enum.Enum, shape=2):
    """The row output's register."""

    EMPTY = 0      #: no row; a row may be taken
    SHIFT = 1      #: recip >> norm
    ROUND = 2      #: p_max = min((that + 1) >> 1, 2**16 - 1)
    FULL = 3       #: offered on ``o``


class RowOutput(wiring.Component):
    """The softmax's ``row`` beat of a row: p_max (the probability of the row maximum, whose e
    is 2**16: min((recip >> norm + 1) >> 1, 2**16 - 1)), esum, n, max, error; for an error row
    p_max = esum = 0.

    Parameters (keyword-only)
    -------------------------
    config : AttentionConfig

    Ports
    -----
    i : In(stream.Signature(row_figures_layout(config)))
        The row's error flag, n, max and esum.
    recip : In(unsigned(recip_width)); norm : In(range(esum_width - 16))
        The row's reciprocal and its exponent, read in the cycle after the ``i`` transfer (the
        normalise pass's registers of the row, which it takes together with this unit).
    o : Out(stream.Signature(row_info_layout(config)))

    Timing: a row taken in cycle t is offered from t + `latency` (3), from a register; the next
    row is taken from the cycle after the ``o`` transfer.
    """

    latency = 3

    def __init__(self, *, config):
        self.cfg = cfg = check_config(config)
        row = bank_row_layout(cfg)
        super().__init__({
            "i": In(stream.Signature(row_figures_layout(cfg))),
            "recip": In(row["recip"].shape),
            "norm": In(row["norm"].shape),
            "o": Out(stream.Signature(row_info_layout(cfg))),
        })

    def elaborate(self, platform):
        m = Module()
        PB = self.cfg.prob_bits
        row = self.i.payload
        beat = Signal(row_info_layout(self.cfg), name="row_beat")
        shifted = Signal.like(self.recip, name="row_v")
        state = Signal(RowOutputState, name="row_st")
        m.d.comb += [self.i.ready.eq(state == RowOutputState.EMPTY),
                     self.o.valid.eq(state == RowOutputState.FULL), self.o.payload.eq(beat)]
        with m.Switch(state):
            with m.Case(RowOutputState.EMPTY):
                with m.If(self.i.valid):
                    m.d.sync += [beat.esum.eq(Mux(row.error, 0, row.esum)), beat.n.eq(row.n),
                                 beat.max.eq(row.max), beat.error.eq(row.error),
                                 beat.p_max.eq(0), state.eq(RowOutputState.SHIFT)]
            with m.Case(RowOutputState.SHIFT):
                m.d.sync += [shifted.eq(self.recip >> self.norm), state.eq(RowOutputState.ROUND)]
            with m.Case(RowOutputState.ROUND):
                rounded = shifted[1:] + shifted[0]
                with m.If(~beat.error):
                    m.d.sync += beat.p_max.eq(Mux(rounded[PB:] != 0, (1 << PB) - 1,
                                                  rounded[:PB]))
                m.d.sync += state.eq(RowOutputState.FULL)
            with m.Case(RowOutputState.FULL):
                with m.If(self.o.ready):
                    m.d.sync += state.eq(RowOutputState.EMPTY)
        return m


def row_figures_layout(cfg) -> data.StructLayout:
    """What the row output takes of a row: its error flag, n, maximum dot and esum."""
    row = bank_row_layout(cfg)
    return data.StructLayout({name: row[name].shape for name in ("error", "n", "max", "esum")})
