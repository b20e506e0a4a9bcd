"""Row streams: their layout, gearboxes between widths, and a fork.

A *row stream* carries rows (packets) of elements in order, ``lanes`` to a beat:
``{data: ArrayLayout(elem, lanes), count: range(lanes + 1), last: 1}``; every beat of a row is
full except its last (``last = 1``, ``count`` 0..lanes; 0 only for an empty row's single beat).

`Widen` regroups rows from ``in_lanes`` to ``out_lanes = in_lanes * r`` (the softmax's S lanes to
the top-k engine's P); `Narrow` the other way (the top-k engine's P selected pairs to the prob x V
array's S). Both keep every row's element order, its length and its end; neither adds a cycle of
latency beyond its one output register, and both move one input beat a cycle when not stalled.
`Fork` copies one stream to several consumers, each taking every beat at its own pace.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

# The row-stream payload is the zero eliminator's compacted beat: one layout, one definition.
from .zero_elim import compact_layout as row_layout

__all__ = ["row_layout", "Widen", "Narrow", "Fork"]


def _check(elem, in_lanes, out_lanes, wider: bool):
    try:
        Shape.cast(elem)
    except TypeError as e:
        raise TypeError(f"elem must be shape-castable, not {elem!r}") from e
    for name, v in (("in_lanes", in_lanes), ("out_lanes", out_lanes)):
        if not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 1, not {v!r}")
    if wider and out_lanes < in_lanes:
        raise ValueError(f"Widen needs out_lanes >= in_lanes, got {in_lanes} -> {out_lanes}")
    if not wider and out_lanes > in_lanes:
        raise ValueError(f"Narrow needs out_lanes <= in_lanes, got {in_lanes} -> {out_lanes}")


class _Regroup(wiring.Component):
    """Ports and parameter checks shared by `Widen` and `Narrow`."""

    WIDER: bool

    def __init__(self, elem, *, in_lanes: int, out_lanes: int):
        _check(elem, in_lanes, out_lanes, wider=self.WIDER)
        self.elem, self.in_lanes, self.out_lanes = elem, in_lanes, out_lanes
        super().__init__({
            "i": In(stream.Signature(row_layout(elem, in_lanes))),
            "o": Out(stream.Signature(row_layout(elem, out_lanes))),
        })


class Widen(_Regroup):
    """Collect ``out_lanes // in_lanes`` input beats into one output beat; a row's last input
    beat closes its output beat early (partial).

    Ports: ``i`` (row stream, in_lanes), ``o`` (row stream, out_lanes). ``o`` is a register;
    an input beat that completes an output beat waits for the output register to be free."""

    WIDER = True

    def elaborate(self, platform):
        m = Module()
        a, b = self.in_lanes, self.out_lanes
        r = b // a
        acc = Signal(row_layout(self.elem, b))
        slot = Signal(range(max(r, 2)))
        out = Signal(row_layout(self.elem, b))
        out_valid = Signal()
        m.d.comb += [self.o.valid.eq(out_valid), self.o.payload.eq(out)]

        beat = self.i.payload
        closes = beat.last | (slot == r - 1)
        m.d.comb += self.i.ready.eq(~closes | ~out_valid | self.o.ready)
        merged = Signal.like(acc)
        m.d.comb += merged.eq(acc)
        for j in range(r):
            with m.If(slot == j):
                for lane in range(a):
                    m.d.comb += merged.data[j * a + lane].eq(beat.data[lane])
        m.d.comb += [merged.count.eq(acc.count + beat.count), merged.last.eq(beat.last)]

        with m.If(self.o.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            with m.If(closes):
                m.d.sync += [out.eq(merged), out_valid.eq(1), slot.eq(0), acc.count.eq(0)]
            with m.Else():
                m.d.sync += [acc.eq(merged), slot.eq(slot + 1)]
        return m


class Narrow(_Regroup):
    """Split each input beat into ``ceil(count / out_lanes)`` output beats (one for an empty
    row's count-0 beat). Ports: ``i`` (row stream, in_lanes), ``o`` (row stream, out_lanes).
    The input beat is held in a register; the next one is taken as its final piece leaves."""

    WIDER = False

    def elaborate(self, platform):
        m = Module()
        a, b = self.in_lanes, self.out_lanes
        r = a // b
        buf = Signal(row_layout(self.elem, a))
        full = Signal()
        piece = Signal(range(max(r, 2)))
        # elements of the held beat from this piece on; the piece is the final one when the
        # rest fits one output beat
        rest = Signal(range(a + 1))
        m.d.comb += rest.eq(buf.count - piece * b)
        final = Signal()
        m.d.comb += final.eq(rest <= b)

        o = self.o.payload
        m.d.comb += self.o.valid.eq(full)
        with m.If(final):
            m.d.comb += o.count.eq(rest)
        with m.Else():
            m.d.comb += o.count.eq(b)
        m.d.comb += o.last.eq(buf.last & final)
        for j in range(r):
            with m.If(piece == j):
                for lane in range(b):
                    m.d.comb += o.data[lane].eq(buf.data[j * b + lane])

        leaving = full & self.o.ready & final
        m.d.comb += self.i.ready.eq(~full | leaving)
        with m.If(full & self.o.ready & ~final):
            m.d.sync += piece.eq(piece + 1)
        with m.If(leaving):
            m.d.sync += full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [buf.eq(self.i.payload), full.eq(1), piece.eq(0)]
        return m


class Fork(wiring.Component):
    """One input stream to ``ways`` output streams ``o0``, ``o1``, ...: every beat goes to every
    output exactly once, in order. The input beat is taken in the cycle its last outstanding copy
    is taken; an output that already took it waits (valid low) for the next beat. No register:
    outputs see the input's valid and payload, gated by whether they already took the beat."""

    def __init__(self, shape, *, ways: int = 2):
        try:
            Shape.cast(shape)
        except TypeError as e:
            raise TypeError(f"shape must be shape-castable, not {shape!r}") from e
        if not isinstance(ways, int) or ways < 2:
            raise ValueError(f"ways must be an integer >= 2, not {ways!r}")
        self.shape, self.ways = shape, ways
        members = {"i": In(stream.Signature(shape))}
        for w in range(ways):
            members[f"o{w}"] = Out(stream.Signature(shape))
        super().__init__(members)

    def outputs(self) -> list:
        return [getattr(self, f"o{w}") for w in range(self.ways)]

    def elaborate(self, platform):
        m = Module()
        outs = self.outputs()
        taken = Signal(self.ways)          # copies of the current beat already delivered
        done_now = []
        for w, o in enumerate(outs):
            m.d.comb += [o.payload.eq(self.i.payload), o.valid.eq(self.i.valid & ~taken[w])]
            done_now.append(taken[w] | o.ready)
        all_done = Signal()
        m.d.comb += [all_done.eq(Cat(*done_now).all()), self.i.ready.eq(all_done)]
        with m.If(self.i.valid):
            with m.If(all_done):
                m.d.sync += taken.eq(0)
            with m.Else():
                for w, o in enumerate(outs):
                    with m.If(o.ready):
                        m.d.sync += taken[w].eq(1)
        return m
