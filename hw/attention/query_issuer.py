"""The query pipeline's issuer: the run's queries into a ring, their passes out of it.

Queries are numbered (``tag``) in the order they arrive and kept in a ring of `RING` until their
last pass is issued. Without progressive quantization every query runs one full-precision pass.
With it, a query first runs an MSB pass, and runs again at full precision when its decision
says so; the issuer runs one query ahead of the decisions: M0 M1 [F0] M2 [F1] ...
(`golden.progressive.issue_order`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spatten.config import AttentionConfig

from .qk import q_layout

__all__ = ["QueryIssuer", "query_layout", "pass_layout", "TAG_BITS", "RING",
           "PASSES_IN_FLIGHT"]

#: bits of a query's tag (its number in the run, wrapping)
TAG_BITS = 16
#: queries held by the issuer's ring (accepted, last pass not yet issued)
RING = 4
#: passes issued whose row has not yet been decided (entries of the `in_flight` FIFO)
PASSES_IN_FLIGHT = 8


def query_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One query of a run: its M elements (d used), and ``last`` on the run's final query."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults),
        "last": 1,
    })


def pass_layout() -> data.StructLayout:
    """A pass: the query's tag and whether the pass is at full precision."""
    return data.StructLayout({"tag": unsigned(TAG_BITS), "full": 1})


class QueryIssuer(wiring.Component):
    """Queries of a run into the ring, their passes to the Q.K array.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    start : In(1)
        A run starts this cycle: the counters clear (no query is taken in this cycle).
    running, draining : In(1)
        A run is going; a bad run is swallowing its queries (nothing is issued).
    q : In(stream.Signature(`query_layout`(cfg)))
        The run's queries; ready while running with room in the ring and the final query not
        yet taken, and while draining until the final query.
    pq : In(1)
        The run uses progressive quantization (held through the run).
    decisions : In(stream.Signature(1))
        With ``pq``, one per MSB pass in order: 1 = run the query again at full precision.
    lsb_ready : In(1), lsb_needed : Out(1)
        A full-precision pass waits for ``lsb_ready`` (the K LSB plane is in its buffer) and
        asks for it with ``lsb_needed``.
    passes : Out(stream.Signature(`hw.attention.qk.q_layout`(cfg)))
        The query of each pass, to the Q.K array; a pass goes only with room in ``in_flight``.
    in_flight : Out(stream.Signature(`pass_layout`()))
        The tag and precision of each pass taken on ``passes``, in order (a FIFO of
        `PASSES_IN_FLIGHT`).
    pass_full : Out(1)
        The precision of the last pass taken on ``passes`` (the pass whose K is being read).
    accepted : Out(32), last_seen : Out(1)
        Queries of the run taken on ``q``; the run's final query was taken.

    Latency: a pass is issued at the earliest in the cycle after its query is taken (one ring
    read, then the pass register that feeds ``passes``); one pass every two cycles at most.
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        self.config = cfg = config
        super().__init__({
            "start": In(1),
            "running": In(1),
            "draining": In(1),
            "q": In(stream.Signature(query_layout(cfg))),
            "pq": In(1),
            "decisions": In(stream.Signature(1)),
            "lsb_ready": In(1),
            "lsb_needed": Out(1),
            "passes": Out(stream.Signature(q_layout(cfg))),
            "in_flight": Out(stream.Signature(pass_layout())),
            "pass_full": Out(1),
            "accepted": Out(32),
            "last_seen": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        m.submodules.qring = qring = Memory(
            shape=data.ArrayLayout(signed(cfg.data_width), cfg.qk_mults), depth=RING, init=[])
        qw = qring.write_port()
        # the ring is read asynchronously from a registered address (`rd_addr`, set as a pass is
        # issued, read the next cycle: the same timing as a synchronous port addressed by the
        # issue logic, without that logic's comparisons on the path into every LUT-RAM cell)
        qr = qring.read_port(domain="comb")

        q_in = self.accepted       # queries of this run accepted
        q_last_seen = self.last_seen
        m_next = Signal(32)        # next query to issue its first pass
        f_next = Signal(32)        # next query whose decision is to be acted on (pq)
        rd_pend, rd_full = Signal(), Signal()
        rd_tag = Signal(TAG_BITS)
        rd_addr = Signal(range(RING))
        ring_bits = exact_log2(RING)   # a counter's low bits address the ring
        m.d.comb += qr.addr.eq(rd_addr)
        iq_v, iq_full = Signal(), Signal()
        iq_tag = Signal(TAG_BITS)
        iq_data = Signal.like(qr.data)
        m.submodules.pass_fifo = pf = SyncFIFOBuffered(width=TAG_BITS + 1,
                                                       depth=PASSES_IN_FLIGHT)
        dec = self.decisions

        # small differences of those counters (each at most RING, as the ring bounds them), in
        # 3-bit arithmetic instead of 32-bit compares on the issue path
        occ = Signal(range(RING + 1))      # q_in - (f_next with pq, else m_next)
        q_wr, m_inc, f_inc = Signal(), Signal(), Signal()
        m_waiting = Signal()               # m_next < q_in
        m_ahead = Signal(3)                # m_next - f_next
        m.d.comb += [m_waiting.eq((q_in[:3] - m_next[:3])[:3] != 0),
                     m_ahead.eq((m_next[:3] - f_next[:3])[:3])]

        with m.If(self.start):
            m.d.sync += [q_in.eq(0), q_last_seen.eq(0), m_next.eq(0), f_next.eq(0), occ.eq(0)]
        with m.If(self.running):
            # queries into the ring while it has room
            # (`occ` = q_in - freed, freed = f_next with pq, else m_next: a register, so
            # that the ring's write enable, which reaches every LUT-RAM cell of the ring,
            # comes from a short path)
            m.d.comb += [self.q.ready.eq(~q_last_seen & (occ < RING)),
                         qw.addr.eq(q_in[:ring_bits]), qw.data.eq(self.q.payload.data)]
            with m.If(self.q.valid & self.q.ready):
                m.d.comb += [qw.en.eq(1), q_wr.eq(1)]
                m.d.sync += q_in.eq(q_in + 1)
                with m.If(self.q.payload.last):
                    m.d.sync += q_last_seen.eq(1)
            # passes out of it: one read of the ring, then the pass register `iq`
            free = Signal()
            m.d.comb += free.eq(~rd_pend & ~iq_v)
            with m.If(self.pq):
                # M(j + ahead) goes before the decision of query j + 1 is acted on (and
                # waits for that query to arrive, unless the run has no such query)
                m_due = Signal()
                m.d.comb += m_due.eq((m_ahead < cfg.issue_ahead) & ~(q_last_seen & ~m_waiting))
                with m.If(m_due):
                    with m.If(free & m_waiting):
                        m.d.sync += [rd_pend.eq(1), rd_full.eq(0), rd_tag.eq(m_next),
                                     rd_addr.eq(m_next[:ring_bits]), m_next.eq(m_next + 1)]
                        m.d.comb += m_inc.eq(1)
                with m.Elif(dec.valid):
                    with m.If(dec.payload[0]):
                        m.d.comb += self.lsb_needed.eq(~self.lsb_ready)
                        with m.If(free & self.lsb_ready):
                            m.d.comb += dec.ready.eq(1)
                            m.d.sync += [rd_pend.eq(1), rd_full.eq(1), rd_tag.eq(f_next),
                                         rd_addr.eq(f_next[:ring_bits]), f_next.eq(f_next + 1)]
                            m.d.comb += f_inc.eq(1)
                    with m.Else():
                        m.d.comb += [dec.ready.eq(1), f_inc.eq(1)]
                        m.d.sync += f_next.eq(f_next + 1)
            with m.Else():
                with m.If(free & m_waiting):
                    m.d.comb += self.lsb_needed.eq(~self.lsb_ready)
                    with m.If(self.lsb_ready):
                        m.d.sync += [rd_pend.eq(1), rd_full.eq(1), rd_tag.eq(m_next),
                                     rd_addr.eq(m_next[:ring_bits]), m_next.eq(m_next + 1)]
                        m.d.comb += m_inc.eq(1)
            # the ring's occupancy follows the counters it stands for
            m.d.sync += occ.eq(occ + q_wr - Mux(self.pq, f_inc, m_inc))
        with m.Elif(self.draining):
            # a bad run: swallow its queries
            m.d.comb += self.q.ready.eq(~q_last_seen)
            with m.If(self.q.valid & self.q.ready & self.q.payload.last):
                m.d.sync += q_last_seen.eq(1)

        # the pass register feeds the Q.K array
        with m.If(rd_pend):
            m.d.sync += [rd_pend.eq(0), iq_v.eq(1), iq_data.eq(qr.data), iq_tag.eq(rd_tag),
                         iq_full.eq(rd_full)]
        m.d.comb += [self.passes.valid.eq(iq_v & pf.w_rdy), self.passes.payload.eq(iq_data),
                     pf.w_data.eq(Cat(iq_tag, iq_full))]
        with m.If(self.passes.valid & self.passes.ready):
            m.d.comb += pf.w_en.eq(1)
            m.d.sync += [iq_v.eq(0), self.pass_full.eq(iq_full)]
        m.d.comb += [self.in_flight.valid.eq(pf.r_rdy), self.in_flight.payload.eq(pf.r_data),
                     pf.r_en.eq(self.in_flight.ready)]
        return m
