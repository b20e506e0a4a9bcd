"""The query pipeline's pass gate: after the softmax, each pass's row decides whether its
probabilities go on (the query's final pass) or are dropped (an MSB pass whose largest
probability is below ``tau``: the query runs again at full precision)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from .query_issuer import TAG_BITS, pass_layout
from .softmax import probs_layout
from .softmax import row_info_layout as softmax_row_layout

__all__ = ["PassGate", "row_info_layout", "DECISIONS", "FINALS"]

#: refetch decisions the gate holds for the issuer
DECISIONS = 4
#: tags of final passes the gate holds for the output (passes whose probabilities go on)
FINALS = 16


def row_info_layout(cfg: AttentionConfig) -> data.StructLayout:
    """What the pipeline tells of every pass's row: its largest probability (the progressive-
    quantization trigger), its largest dot product, the softmax sum, the query, whether the
    pass was at full precision and whether it was dropped for a full-precision pass."""
    return data.StructLayout({
        "p_max": unsigned(cfg.prob_bits),
        "max": signed(cfg.dot_width),
        "esum": unsigned(cfg.esum_width),
        "tag": unsigned(TAG_BITS),
        "full": 1,
        "refetch": 1,
    })


class PassGate(wiring.Component):
    """Rows of the softmax matched with their passes; final passes' probabilities go on, the
    others are dropped.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    in_flight : In(stream.Signature(`hw.attention.query_issuer.pass_layout`()))
        The passes in the order the Q.K array took them (one per softmax row).
    scores_row : In(stream.Signature(`hw.attention.softmax.row_info_layout`(cfg)))
        The softmax's row beat of each pass.
    scores_probs : In(stream.Signature(`hw.attention.softmax.probs_layout`(cfg)))
        The softmax's probabilities of each pass, a row stream.
    pq, tau : In
        Progressive quantization and its threshold (U1.16; held through the run): an MSB pass
        (``full`` = 0) whose ``p_max`` is below ``tau`` is dropped.
    row : Out(stream.Signature(`row_info_layout`(cfg)))
        Every pass's row (dropped ones included), with its tag, precision and ``refetch``.
    probs : Out(stream.Signature(`hw.attention.softmax.probs_layout`(cfg)))
        The probabilities of the final passes, in order.
    decisions : Out(stream.Signature(1))
        With ``pq``, for every MSB pass: 1 = dropped (run the query again); a FIFO of
        `DECISIONS`.
    finals : Out(stream.Signature(unsigned(TAG_BITS)))
        The tag of every final pass, in order; a FIFO of `FINALS`.
    refetch : Out(1)
        A row is taken on ``row`` with ``refetch`` = 1 this cycle.

    A row is taken on ``row`` when its pass is known and both FIFOs have room, and no row's
    probabilities are still passing; then its probabilities pass (or are dropped) beat by beat,
    ``probs`` seeing the softmax's valid and payload, the last beat freeing the gate.
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        self.config = cfg = config
        super().__init__({
            "in_flight": In(stream.Signature(pass_layout())),
            "scores_row": In(stream.Signature(softmax_row_layout(cfg))),
            "scores_probs": In(stream.Signature(probs_layout(cfg))),
            "pq": In(1),
            "tau": In(unsigned(cfg.prob_bits + 1)),
            "row": Out(stream.Signature(row_info_layout(cfg))),
            "probs": Out(stream.Signature(probs_layout(cfg))),
            "decisions": Out(stream.Signature(1)),
            "finals": Out(stream.Signature(unsigned(TAG_BITS))),
            "refetch": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.decisions = dec = SyncFIFOBuffered(width=1, depth=DECISIONS)
        m.submodules.finals = ff = SyncFIFOBuffered(width=TAG_BITS, depth=FINALS)
        for fifo, out in ((dec, self.decisions), (ff, self.finals)):
            m.d.comb += [out.valid.eq(fifo.r_rdy), out.payload.eq(fifo.r_data),
                         fifo.r_en.eq(out.ready)]

        passing = self.in_flight.payload
        sm_row, sm_probs = self.scores_row, self.scores_probs
        g_busy = Signal()          # a row's probabilities are passing or being dropped
        g_drop = Signal()
        drop = Signal()
        m.d.comb += drop.eq(self.pq & ~passing.full & (sm_row.payload.p_max < self.tau))
        row_ok = Signal()
        m.d.comb += row_ok.eq(~g_busy & self.in_flight.valid & ff.w_rdy & dec.w_rdy)
        rp = self.row.payload
        m.d.comb += [
            self.row.valid.eq(sm_row.valid & row_ok),
            sm_row.ready.eq(self.row.ready & row_ok),
            rp.p_max.eq(sm_row.payload.p_max), rp.max.eq(sm_row.payload.max),
            rp.esum.eq(sm_row.payload.esum), rp.tag.eq(passing.tag), rp.full.eq(passing.full),
            rp.refetch.eq(drop),
        ]
        with m.If(self.row.valid & self.row.ready):
            m.d.comb += [self.in_flight.ready.eq(1), ff.w_en.eq(~drop),
                         ff.w_data.eq(passing.tag), dec.w_en.eq(self.pq & ~passing.full),
                         dec.w_data.eq(drop), self.refetch.eq(drop)]
            m.d.sync += [g_busy.eq(1), g_drop.eq(drop)]
        with m.If(g_busy):
            with m.If(g_drop):
                m.d.comb += sm_probs.ready.eq(1)
            with m.Else():
                m.d.comb += [self.probs.valid.eq(sm_probs.valid),
                             sm_probs.ready.eq(self.probs.ready),
                             self.probs.payload.eq(sm_probs.payload)]
            with m.If(sm_probs.valid & sm_probs.ready & sm_probs.payload.last):
                m.d.sync += g_busy.eq(0)
        return m
