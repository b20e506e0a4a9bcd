"""Beat packer of the top-k engine: gathers compacted partial beats into full beats."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

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
    A residual register holds up to ``lanes`` items (``fill``); the accepted beat's ``count``
    items are appended to it. A full beat is sent only once it is known whether the packet ends
    with it: when an item beyond it arrives, or a ``last`` beat. ``o`` is a register: ``o.valid``
    and ``o.payload`` change only at clock edges, and hold while ``o.valid & ~o.ready``.

    - not ``last``, ``fill + count <= lanes``: no output beat; the items wait in the residual
      (a residual of exactly ``lanes`` items waits too).
    - not ``last``, ``fill + count > lanes``: the first ``lanes`` items leave as a full beat
      (``last = 0``) on ``o`` from cycle t + 1; the other ``fill + count - lanes`` (1..lanes)
      stay in the residual.
    - ``last``, ``fill + count <= lanes``: one beat with ``count = fill + count`` (0 for an empty
      packet), ``last = 1``, on ``o`` from cycle t + 1; the residual is then empty.
    - ``last``, ``fill + count > lanes``: a full beat (``last = 0``) on ``o`` from cycle t + 1,
      then the remainder (``count = fill + count - lanes``, 1..lanes, ``last = 1``) from the cycle
      after the one in which the full beat is taken (t + 2 when ``o.ready`` is high in t + 1).
      ``i.ready`` is low from cycle t + 1 up to and including the cycle in which the full beat is
      taken.

    Otherwise ``i.ready = ~o.valid | o.ready`` (combinational from ``o.ready``). With ``o`` never
    stalled, ``i.ready`` is high in every cycle except the one after a split last beat, and every
    output beat appears exactly one cycle after the input beat that releases it (two cycles for
    the remainder of a split last beat). Throughput: one input beat per cycle, plus one idle input
    cycle per packet whose last beat splits.
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

        res = [Signal(width, name=f"res_{j}") for j in range(lanes)]   # zero from `fill` up
        fill = Signal(range(lanes + 1), name="fill")
        flush = Signal()                      # residual holds the tail of a packet: emit it next
        o_data = [Signal(width, name=f"o_data_{j}") for j in range(lanes)]
        o_count = Signal(range(lanes + 1))
        o_last = Signal()
        o_valid = Signal()

        adv = Signal()
        m.d.comb += [
            adv.eq(~o_valid | o.ready),
            i.ready.eq(adv & ~flush),
            o.valid.eq(o_valid),
            o.payload.count.eq(o_count),
            o.payload.last.eq(o_last),
        ]
        for j in range(lanes):
            m.d.comb += Value.cast(o.payload.data[j]).eq(o_data[j])

        # The new items (lanes from `count` up zeroed), shifted up by `fill` in a 2*lanes window.
        shifted = []
        for j in range(lanes):
            item = Value.cast(i.payload.data[j])
            # Input lanes from `count` up are masked, unless the producer promises them zero.
            shifted.append(item if self.zero_above_count else Mux(j < i.payload.count, item, 0))
        shifted += [0] * lanes
        for b in range(len(fill)):
            dist = 1 << b
            level = []
            for k in range(2 * lanes):
                s = Signal(width, name=f"sh{b}_{k}")
                below = shifted[k - dist] if k >= dist else 0
                m.d.comb += s.eq(Mux(fill[b], below, shifted[k]))
                level.append(s)
            shifted = level
        window = []
        for k in range(2 * lanes):
            w = Signal(width, name=f"window_{k}")
            if k < lanes:
                # res is zero from `fill` up and `shifted` below it: an OR merges them.
                m.d.comb += w.eq(res[k] | shifted[k])
            else:
                m.d.comb += w.eq(shifted[k])
            window.append(w)
        total = Signal(range(2 * lanes + 1))
        m.d.comb += total.eq(fill + i.payload.count)

        with m.If(adv):
            with m.If(flush):
                m.d.sync += [o_valid.eq(1), o_count.eq(fill), o_last.eq(1), fill.eq(0),
                             flush.eq(0)]
                m.d.sync += [o_data[j].eq(res[j]) for j in range(lanes)]
                m.d.sync += [res[j].eq(0) for j in range(lanes)]
            with m.Elif(i.valid):
                with m.If(i.payload.last):
                    m.d.sync += o_valid.eq(1)
                    with m.If(total > lanes):
                        # A full beat now, the remainder next.
                        m.d.sync += [o_count.eq(lanes), o_last.eq(0), fill.eq(total - lanes),
                                     flush.eq(1)]
                        m.d.sync += [o_data[j].eq(window[j]) for j in range(lanes)]
                        m.d.sync += [res[j].eq(window[lanes + j]) for j in range(lanes)]
                    with m.Else():
                        m.d.sync += [o_count.eq(total), o_last.eq(1), fill.eq(0)]
                        m.d.sync += [o_data[j].eq(window[j]) for j in range(lanes)]
                        m.d.sync += [res[j].eq(0) for j in range(lanes)]
                with m.Elif(total > lanes):
                    m.d.sync += [o_valid.eq(1), o_count.eq(lanes), o_last.eq(0),
                                 fill.eq(total - lanes)]
                    m.d.sync += [o_data[j].eq(window[j]) for j in range(lanes)]
                    m.d.sync += [res[j].eq(window[lanes + j]) for j in range(lanes)]
                with m.Else():
                    m.d.sync += [o_valid.eq(0), fill.eq(total)]
                    m.d.sync += [res[j].eq(window[j]) for j in range(lanes)]
            with m.Else():
                m.d.sync += o_valid.eq(0)
        return m
