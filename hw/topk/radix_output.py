"""The top-k engine's output: its survivors' keys back to values, through a register."""

from __future__ import annotations

from amaranth import Cat, Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.skid import SkidBuffer
from ..common.zero_elim import check_lanes, compact_layout
from .radix import _int_param
from .radix_writer import candidate_layout

__all__ = ["OUTPUT_LATENCY", "value_beat_layout", "ValueOutput"]

#: `ValueOutput`: a beat taken in cycle t is on ``o`` from t + 1 (a skid buffer).
OUTPUT_LATENCY = 1


def value_beat_layout(value_width: int, index_width: int, lanes: int) -> data.StructLayout:
    """A beat of selected (index, value) pairs: ``index[0..count-1]``, ``value[0..count-1]``,
    ``count``, ``last``."""
    return data.StructLayout({
        "index": data.ArrayLayout(unsigned(index_width), lanes),
        "value": data.ArrayLayout(signed(value_width), lanes),
        "count": range(lanes + 1),
        "last": 1,
    })


class ValueOutput(wiring.Component):
    """Turns packed beats of (key, index) candidates into (index, value) beats: each key's top
    bit flipped back to the value's sign (keys are values with their sign bit flipped); sends
    the empty packet (one beat, ``count = 0``, ``last``) when asked.

    Parameters (keyword-only)
    -------------------------
    value_width : int, 2..32   W (a key's low W bits hold the value)
    key_width : int, >= W      bits of a key
    index_width : int, >= 1
    lanes : 1, 2, 4, 8, 16 or 32

    Ports
    -----
    i : In(stream(compact_layout(candidate_layout(unsigned(key_width), index_width), lanes)))
        Lanes at and above ``count`` are zero (as the beat packer makes them): their index
        and value are zero on ``o`` too.
    empty : In(stream.Signature(0))   a request for the empty packet (taken like a beat; ``i``
                              must be idle meanwhile)
    o : Out(stream(value_beat_layout(value_width, index_width, lanes)))   a register

    Latency `OUTPUT_LATENCY`; one beat a cycle; ``i.ready`` and ``empty.ready`` are registered.
    """

    def __init__(self, *, value_width, key_width, index_width, lanes):
        self.value_width = _int_param("value_width", value_width, 2, 32)
        self.key_width = _int_param("key_width", key_width, value_width)
        self.index_width = _int_param("index_width", index_width, 1)
        self.lanes = check_lanes(lanes)
        layout = candidate_layout(unsigned(key_width), index_width)
        self.beats = value_beat_layout(value_width, index_width, lanes)
        super().__init__({
            "i": In(stream.Signature(compact_layout(layout, lanes))),
            "empty": In(stream.Signature(0)),
            "o": Out(stream.Signature(self.beats)),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.value_width
        m.submodules.skid = skid = SkidBuffer(self.beats)
        wiring.connect(m, skid.o, wiring.flipped(self.o))
        beat, o = self.i.payload, skid.i.payload
        for lane in range(self.lanes):
            key = beat.data[lane].key
            m.d.comb += [o.index[lane].eq(beat.data[lane].index),
                         o.value[lane].eq(Cat(key[:W - 1], key[W - 1] ^ (beat.count > lane)))]
        m.d.comb += [o.count.eq(beat.count), o.last.eq(beat.last),
                     skid.i.valid.eq(self.i.valid), self.i.ready.eq(skid.i.ready),
                     self.empty.ready.eq(skid.i.ready)]
        with m.If(self.empty.valid):
            m.d.comb += [skid.i.valid.eq(1), o.eq(self.beats.const({"count": 0, "last": 1}))]
        return m
