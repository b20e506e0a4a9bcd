"""The candidate writer of the top-k engine: the packed survivors of a radix pass go back into a
buffer (B or C, in turn), and everything else on to the output."""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.zero_elim import check_lanes, compact_layout
from .radix import _int_param, _shape_param

__all__ = ["WRITER_LATENCY", "candidate_layout", "CandidateWriter"]

#: `CandidateWriter`: a beat written in cycle t is counted in ``written`` from t + 1.
WRITER_LATENCY = 1


def candidate_layout(key_shape, index_width: int) -> data.StructLayout:
    """One candidate on its way through the zero eliminator and the packer: its ``key`` and its
    ``index`` in the run."""
    return data.StructLayout({"key": key_shape, "index": unsigned(index_width)})


class CandidateWriter(wiring.Component):
    """Writes the beats of candidate passes into buffers B and C; passes every other beat on.

    A candidate pass is announced with ``pass_start`` (and the buffer it writes) before its
    first beat comes; up to two passes may be announced and not finished (the next pass reads
    what this one writes, row by row behind it). Beats arrive in pass order, each pass's packed
    beats ending with one ``last``; pass i goes to buffer B when i is even, C when odd, counting
    from the last ``clear``.

    Parameters (keyword-only)
    -------------------------
    key_shape : shape-castable   one key (the part of a candidate that is written)
    index_width : int, >= 1      bits of a candidate's index
    lanes : 1, 2, 4, 8, 16 or 32  candidates a beat (and a buffer row)
    rows : int, >= 1             rows of each buffer

    Ports
    -----
    i : In(stream(compact_layout(candidate_layout, lanes)))
        Packed beats. While a pass is announced and not finished, ``i.ready`` is 1 and each beat
        is written; otherwise ``i`` is passed to ``o`` (``i.ready = o.ready``).
    o : Out(stream(compact_layout(candidate_layout, lanes)))   the beats of no candidate pass
    pass_start, pass_buffer : In   a candidate pass starts writing buffer ``pass_buffer``
                              (0: B, 1: C) from row 0: its progress below is cleared (at most
                              once a cycle; not while ``o`` holds a beat)
    clear : In(1)             a new run: the next pass written goes to B
    write_buffer, write_row, write_data, write_en : Out   the buffers' write port: row
                              ``write_row`` of buffer ``write_buffer`` (0: B, 1: C)
    written : Out(ArrayLayout(range(rows + 1), 2))   rows of B / C written by their pass so far
    complete : Out(2)         B / C hold every row of their pass

    Latency `WRITER_LATENCY`: a beat taken in cycle t is written at the end of t and counted in
    ``written`` from t + 1; the next pass may read its row from then. ``o`` is ``i`` (no
    register). One beat a cycle.
    """

    def __init__(self, *, key_shape, index_width, lanes, rows):
        self.key_shape = _shape_param("key_shape", key_shape)
        self.index_width = _int_param("index_width", index_width, 1)
        self.lanes = check_lanes(lanes)
        self.rows = _int_param("rows", rows, 1)
        beats = compact_layout(candidate_layout(key_shape, index_width), lanes)
        super().__init__({
            "i": In(stream.Signature(beats)),
            "o": Out(stream.Signature(beats)),
            "pass_start": In(1),
            "pass_buffer": In(1),
            "clear": In(1),
            "write_buffer": Out(1),
            "write_row": Out(range(rows)),
            "write_data": Out(data.ArrayLayout(key_shape, lanes)),
            "write_en": Out(1),
            "written": Out(data.ArrayLayout(range(rows + 1), 2)),
            "complete": Out(2),
        })

    def elaborate(self, platform):
        m = Module()
        beat, written, complete = self.i.payload, self.written, self.complete
        writing = Signal()                      # the beats on `i` belong to a candidate pass
        passes_open = Signal(range(3))          # announced passes whose last beat is still due
        buffer = Signal()                       # the buffer the current pass writes
        row = Signal(range(self.rows))
        pass_done = Signal()
        m.d.comb += [self.o.payload.eq(beat), self.write_buffer.eq(buffer),
                     self.write_row.eq(row)]
        m.d.comb += [self.write_data[lane].eq(beat.data[lane].key) for lane in range(self.lanes)]
        with m.If(writing):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.comb += self.write_en.eq(1)
                m.d.sync += row.eq(row + 1)
                with m.If(buffer):
                    m.d.sync += written[1].eq(row + 1)
                with m.Else():
                    m.d.sync += written[0].eq(row + 1)
                with m.If(beat.last):
                    m.d.comb += pass_done.eq(1)
                    m.d.sync += [row.eq(0), buffer.eq(~buffer)]
                    with m.If(buffer):
                        m.d.sync += complete[1].eq(1)
                    with m.Else():
                        m.d.sync += complete[0].eq(1)
        with m.Else():
            m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
        passes_next = Signal.like(passes_open)
        m.d.comb += passes_next.eq(passes_open + self.pass_start - pass_done)
        m.d.sync += [passes_open.eq(passes_next), writing.eq(passes_next != 0)]
        with m.If(self.pass_start):
            for j in (0, 1):
                with m.If(self.pass_buffer == j):
                    m.d.sync += [written[j].eq(0), complete[j].eq(0)]
        with m.If(self.clear):
            m.d.sync += buffer.eq(0)
        return m
