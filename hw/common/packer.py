"""Beat packer of the top-k engine: gathers compacted partial beats into full beats."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, ResetSignal, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .fanout import copies
from .zero_elim import check_lanes, check_payload_shape, compact_layout

__all__ = ["BeatPacker"]


class BeatPacker(wiring.Component):
    """Re-cuts the items of a packet into beats of exactly `lanes` items.

    Parameters
    ----------
    payload_shape : shape-castable, at least 1 bit
        Shape of one item.
    lanes : int
        Items per beat: 1, 2, 4, 8, 16 or 32.
    zero_above_count : bool (keyword)
        The producer guarantees input lanes from ``count`` up are zero, so they are not masked
        (saves a level of logic on the packer's longest path).

    Ports
    -----
    i : In(stream.Signature(compact_layout(payload_shape, lanes)))
        ``data[0..count-1]`` are items (``data`` lanes from ``count`` up are ignored, or with
        ``zero_above_count=True`` promised zero, as `ZeroEliminator` makes them); ``last``
        ends a packet. Beats with ``count == 0`` are allowed anywhere.
    o : Out(stream.Signature(compact_layout(payload_shape, lanes)))
        The items of each packet in order, ``lanes`` per beat; the final beat of a packet has
        ``last = 1`` and ``count`` in 1..lanes (a multiple of lanes ends with a full beat carrying
        ``last``, no empty beat after it). A packet with no items gives one beat with
        ``count = 0, last = 1``. Every other beat has ``count = lanes, last = 0``.
        ``data[j]`` for ``j >= count`` is zero.

    Timing (cycle t = the cycle whose closing clock edge accepts an input beat)
    ------------------------------------------------------------------------
    Two stages. The first (S) registers the accepted beat already shifted to its place after
    the items waiting in the residual (it tracks that residual's ``fill`` by itself), together
    with ``fill + count`` and whether that exceeds ``lanes``; the second (M) merges it into the
    residual, so every decision of M comes from a register. M behaves as a one-stage packer
    whose input is S:

    - not ``last``, ``fill + count <= lanes``: no output beat; the items wait in the residual
      (a residual of exactly ``lanes`` items waits too: a full beat is sent only once it is
      known whether the packet ends with it, when an item beyond it or a ``last`` beat comes).
    - not ``last``, ``fill + count > lanes``: the first ``lanes`` items leave as a full beat
      (``last = 0``) on ``o`` from cycle t + 2; the other ``fill + count - lanes`` (1..lanes)
      stay in the residual.
    - ``last``, ``fill + count <= lanes``: one beat with ``count = fill + count`` (0 for an empty
      packet), ``last = 1``, on ``o`` from cycle t + 2; the residual is then empty.
    - ``last``, ``fill + count > lanes``: a full beat (``last = 0``) on ``o`` from cycle t + 2,
      then the remainder (``count = fill + count - lanes``, 1..lanes, ``last = 1``) from the
      cycle after the one in which the full beat is taken (t + 3 when ``o.ready`` is high).
      M takes nothing from S until then.

    ``o`` is a register: ``o.valid`` and ``o.payload`` change only at clock edges and hold while
    ``o.valid & ~o.ready``. ``i.ready`` is high when S is empty or M takes S's beat (``o`` free,
    no remainder pending): combinational from ``o.ready``. With ``o`` never stalled and beats
    arriving every cycle, ``i.ready`` is low only in the cycle after a split last beat has
    reached M (t + 2), and every output beat appears two cycles after the input beat that
    releases it (three for the remainder of a split last beat).
    """

    def __init__(self, payload_shape, lanes, *, zero_above_count=False):
        self.payload_shape = check_payload_shape(payload_shape)
        self.lanes = check_lanes(lanes)
        if not isinstance(zero_above_count, bool):
            raise TypeError(f"zero_above_count must be a bool, not {zero_above_count!r}")
        self.zero_above_count = zero_above_count
        self._width = Shape.cast(payload_shape).width
        layout = compact_layout(payload_shape, lanes)
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, width = self.lanes, self._width
        i, o = self.i, self.o
        cnt_w = range(2 * lanes + 1)

        # ---- stage S: shift the beat behind the residual it will join
        fill_s = Signal(range(lanes + 1))       # residual fill as of the next beat to enter S
        s_valid = Signal()
        s_lo = [Signal(width, name=f"s_lo_{j}") for j in range(lanes)]   # window 0..lanes-1
        s_hi = [Signal(width, name=f"s_hi_{j}") for j in range(lanes)]   # window lanes..2*lanes-1
        s_total = Signal(cnt_w)
        s_split = Signal()
        s_last = Signal()

        # ---- stage M: the residual and the output register
        res = [Signal(width, name=f"res_{j}") for j in range(lanes)]   # zero from its fill up
        rem = Signal(range(lanes + 1))          # items of the remainder to flush
        flush = Signal()                        # the residual is a packet's tail: emit it next
        o_data = [Signal(width, name=f"o_data_{j}") for j in range(lanes)]
        o_count = Signal(range(lanes + 1))
        o_last = Signal()
        o_valid = Signal()

        adv_m = Signal()                        # o is free this cycle
        adv_s = Signal()                        # S may load a new beat
        m.d.comb += [
            adv_m.eq(~o_valid | o.ready),
            adv_s.eq(~s_valid | (adv_m & ~flush)),
            i.ready.eq(adv_s),
            o.valid.eq(o_valid),
            o.payload.count.eq(o_count),
            o.payload.last.eq(o_last),
        ]
        for j in range(lanes):
            m.d.comb += Value.cast(o.payload.data[j]).eq(o_data[j])

        # S: barrel shift of the beat by fill_s into a 2*lanes window (zeros shifted in). Each
        # window position takes its selects from a copy of fill_s of its own (fill_s would
        # otherwise reach every multiplexer of the shifter); the copies load fill_s's next
        # value, 0 in a reset as fill_s.
        fill_nx = Signal.like(fill_s)
        fill_c = copies(m, platform, Mux(ResetSignal("sync"), 0, fill_nx), 2 * lanes, "fill_c")
        shifted = []
        for j in range(lanes):
            item = Value.cast(i.payload.data[j])
            # Input lanes from `count` up are masked, unless the producer promises them zero.
            shifted.append(item if self.zero_above_count else Mux(j < i.payload.count, item, 0))
        shifted += [0] * lanes
        for b in range(len(fill_s)):
            dist = 1 << b
            level = []
            for k in range(2 * lanes):
                sig = Signal(width, name=f"sh{b}_{k}")
                below = shifted[k - dist] if k >= dist else 0
                m.d.comb += sig.eq(Mux(fill_c[k][b], below, shifted[k]))
                level.append(sig)
            shifted = level
        total = Signal(cnt_w)
        m.d.comb += total.eq(fill_s + i.payload.count)
        with m.If(adv_s):
            m.d.sync += s_valid.eq(i.valid)
            with m.If(i.valid):
                m.d.sync += [s_lo[j].eq(shifted[j]) for j in range(lanes)]
                m.d.sync += [s_hi[j].eq(shifted[lanes + j]) for j in range(lanes)]
                m.d.sync += [s_total.eq(total), s_split.eq(total > lanes),
                             s_last.eq(i.payload.last)]

        # the residual after M has taken the beat entering S (0 after a packet's end)
        m.d.comb += fill_nx.eq(fill_s)
        with m.If(adv_s & i.valid):
            with m.If(i.payload.last):
                m.d.comb += fill_nx.eq(0)
            with m.Elif(total > lanes):
                m.d.comb += fill_nx.eq(total - lanes)
            with m.Else():
                m.d.comb += fill_nx.eq(total)
        m.d.sync += fill_s.eq(fill_nx)

        # M: the residual is zero from its fill up and s_lo zero below it: an OR merges them.
        window_lo = [Signal(width, name=f"window_{j}") for j in range(lanes)]
        for j in range(lanes):
            m.d.comb += window_lo[j].eq(res[j] | s_lo[j])
        with m.If(adv_m):
            with m.If(flush):
                m.d.sync += [o_valid.eq(1), o_count.eq(rem), o_last.eq(1), flush.eq(0)]
                m.d.sync += [o_data[j].eq(res[j]) for j in range(lanes)]
                m.d.sync += [res[j].eq(0) for j in range(lanes)]
            with m.Elif(s_valid):
                with m.If(s_split):
                    m.d.sync += [o_valid.eq(1), o_count.eq(lanes), o_last.eq(0)]
                    m.d.sync += [o_data[j].eq(window_lo[j]) for j in range(lanes)]
                    m.d.sync += [res[j].eq(s_hi[j]) for j in range(lanes)]
                    with m.If(s_last):
                        m.d.sync += [flush.eq(1), rem.eq(s_total - lanes)]
                with m.Elif(s_last):
                    m.d.sync += [o_valid.eq(1), o_count.eq(s_total), o_last.eq(1)]
                    m.d.sync += [o_data[j].eq(window_lo[j]) for j in range(lanes)]
                    m.d.sync += [res[j].eq(0) for j in range(lanes)]
                with m.Else():
                    m.d.sync += o_valid.eq(0)
                    m.d.sync += [res[j].eq(window_lo[j]) for j in range(lanes)]
            with m.Else():
                m.d.sync += o_valid.eq(0)
        return m
