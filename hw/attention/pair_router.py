"""The query pipeline between value pruning and prob x V: the (index, probability) pairs of each
final pass, from the value-pruning selector or, without pruning, every key; their indices for
the V fetch; the kept-pair FIFO; and prob x V started on a query only once its V rows are in."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig

from ..common.rowstream import row_layout
from .pv import input_layout
from .softmax import probs_layout
from .value_select import pair_layout

__all__ = ["PairRouter", "kept_depth"]


def kept_depth(cfg: AttentionConfig) -> int:
    """Beats of the kept-pair FIFO: a row of capacity keys, S a beat (at least 4)."""
    return max(4, cfg.capacity // cfg.softmax_lanes)


class PairRouter(wiring.Component):
    """Probabilities of final passes -> (pruning) -> kept pairs -> prob x V.

    Parameters
    ----------
    config : AttentionConfig (keyword-only)

    Ports
    -----
    probs : In(stream.Signature(`hw.attention.softmax.probs_layout`(cfg)))
        The probabilities of each final pass, a row stream.
    prune : In(1)
        The run prunes (k_v < n): the rows go through the selector (``to_select`` ->
        ``selected``); without it every key is a pair, its index the key's place in the row.
    to_select : Out(stream.Signature(`hw.attention.softmax.probs_layout`(cfg))),
    selected : In(stream.Signature(row_layout(`hw.attention.value_select.pair_layout`(cfg), S)))
        The value-pruning selector's input and output.
    v_wait : In(1)
        V rows are fetched per query (held through the run): each pass's kept indices also
        leave on ``kept``, and prob x V starts a query only when ``v_done`` has pulsed for it.
    kept : Out(stream.Signature(row_layout(unsigned(index_width), S)))
        The kept indices of each final pass (with ``v_wait``), for the V fetch.
    v_done : In(1)
        A query's V rows are in the V buffer (a pulse per query, in order).
    start : In(1)
        A run starts: the count of ``v_done`` pulses and of started queries clear.
    pairs : Out(stream.Signature(`hw.attention.pv.input_layout`(cfg)))
        The kept pairs of each final pass, to prob x V.
    v_stall : Out(1)
        prob x V could take a query's pairs but waits for its V rows (a memory stall).

    With pruning or ``v_wait`` the pairs pass through a FIFO of `kept_depth` beats (so that
    the selector empties at S pairs a cycle and takes the next row while prob x V works through
    this one, and the V fetch can take a query's indices first); otherwise they go straight on.
    """

    def __init__(self, *, config):
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, not {config!r}")
        self.config = cfg = config
        S = cfg.softmax_lanes
        self.pair_row = row_layout(pair_layout(cfg), S)
        super().__init__({
            "probs": In(stream.Signature(probs_layout(cfg))),
            "prune": In(1),
            "to_select": Out(stream.Signature(probs_layout(cfg))),
            "selected": In(stream.Signature(self.pair_row)),
            "v_wait": In(1),
            "kept": Out(stream.Signature(row_layout(unsigned(cfg.index_width), S))),
            "v_done": In(1),
            "start": In(1),
            "pairs": Out(stream.Signature(input_layout(cfg))),
            "v_stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        S = cfg.softmax_lanes
        m.submodules.kept_fifo = kept_fifo = SyncFIFOBuffered(width=self.pair_row.size,
                                                              depth=kept_depth(cfg))
        acks = Signal(32)          # v_done pulses of the run
        pv_started = Signal(32)    # queries prob x V has started in the run
        pv_mid = Signal()          # prob x V has taken a query's first beat, not its last
        with m.If(self.start):
            m.d.sync += [acks.eq(0), pv_started.eq(0), pv_mid.eq(0)]

        f1 = self.probs
        # index of the first lane of the current beat within its row
        base = Signal(cfg.index_width + 1)
        with m.If(f1.valid & f1.ready):
            m.d.sync += base.eq(Mux(f1.payload.last, 0, base + S))
        # the pairs of each final pass: from the selector (pruning) or every key
        pairs = Signal(self.pair_row)
        pairs_v, pairs_r = Signal(), Signal()
        sel = self.selected
        with m.If(self.prune):
            m.d.comb += [self.to_select.valid.eq(f1.valid), self.to_select.payload.eq(f1.payload),
                         f1.ready.eq(self.to_select.ready)]
            m.d.comb += [pairs_v.eq(sel.valid), sel.ready.eq(pairs_r), pairs.eq(sel.payload)]
        with m.Else():
            m.d.comb += [pairs_v.eq(f1.valid), f1.ready.eq(pairs_r),
                         pairs.count.eq(f1.payload.count), pairs.last.eq(f1.payload.last)]
            for j in range(S):
                m.d.comb += [pairs.data[j].index.eq(base + j),
                             pairs.data[j].prob.eq(f1.payload.data[j])]

        # With ``v_wait`` the kept indices also leave on ``kept`` (for the V fetch) and prob x V
        # starts a query only when ``v_done`` has pulsed for it (its V rows are in the buffer);
        # the pairs then always wait in the FIFO, so that the fetch can take them all first.
        with m.If(self.v_done):
            m.d.sync += acks.eq(acks + 1)
        kp = self.kept.payload
        m.d.comb += [kp.count.eq(pairs.count), kp.last.eq(pairs.last)]
        for j in range(S):
            m.d.comb += kp.data[j].eq(pairs.data[j].index)
        kept = Signal(self.pair_row)       # the pairs on their way to prob x V
        pv_i = self.pairs
        with m.If(self.prune | self.v_wait):
            # the kept pairs wait here, so that the selector empties into the FIFO at S
            # pairs a cycle and takes the next row while prob x V still works through this one
            m.d.comb += [
                self.kept.valid.eq(pairs_v & self.v_wait & kept_fifo.w_rdy),
                pairs_r.eq(kept_fifo.w_rdy & (~self.v_wait | self.kept.ready)),
                kept_fifo.w_en.eq(pairs_v & pairs_r), kept_fifo.w_data.eq(pairs),
                kept.eq(kept_fifo.r_data),
            ]
            go = Signal()
            m.d.comb += go.eq(~self.v_wait | pv_mid | (acks != pv_started))
            m.d.comb += [pv_i.valid.eq(kept_fifo.r_rdy & go),
                         kept_fifo.r_en.eq(pv_i.ready & go),
                         self.v_stall.eq(kept_fifo.r_rdy & ~go)]
            with m.If(pv_i.valid & pv_i.ready):
                m.d.sync += pv_mid.eq(~kept.last)
                with m.If(~pv_mid):
                    m.d.sync += pv_started.eq(pv_started + 1)
        with m.Else():
            m.d.comb += [kept.eq(pairs), pv_i.valid.eq(pairs_v), pairs_r.eq(pv_i.ready)]
        m.d.comb += [pv_i.payload.count.eq(kept.count), pv_i.payload.last.eq(kept.last)]
        for j in range(S):
            m.d.comb += [pv_i.payload.index[j].eq(kept.data[j].index),
                         pv_i.payload.prob[j].eq(kept.data[j].prob)]
        return m
