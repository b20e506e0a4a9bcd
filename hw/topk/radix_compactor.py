"""The compaction path of the top-k engine: the zero eliminator and the beat packer, each behind
a skid buffer."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import zero_eliminator_latency

from ..common.packer import BeatPacker
from ..common.skid import SkidBuffer
from ..common.zero_elim import (
    ZeroEliminator,
    check_lanes,
    check_payload_shape,
    compact_layout,
    keep_layout,
)

__all__ = ["compactor_latency", "Compactor"]


def compactor_latency(lanes: int) -> int:
    """Cycles from a row taken on `Compactor`'s ``i`` to the output beat it completes, with
    ``o`` never stalled: a skid buffer (1), the zero eliminator, a skid buffer (1), the beat
    packer (2)."""
    return 1 + zero_eliminator_latency(lanes) + 1 + 2


class Compactor(wiring.Component):
    """Packs the kept elements of each packet of rows into full beats.

    Parameters
    ----------
    payload_shape : shape-castable, at least 1 bit    one element
    lanes : 1, 2, 4, 8, 16 or 32                      elements a row and a beat

    Ports
    -----
    i : In(stream(keep_layout(payload_shape, lanes)))
        Rows with a keep flag per lane; ``last`` ends a packet. ``i.ready`` is a register (no
        ready path from ``o`` reaches it).
    o : Out(stream(compact_layout(payload_shape, lanes)))
        The kept elements of each packet in order, ``lanes`` a beat, the last beat of a packet
        (``last``) with 1..lanes, or ``count = 0`` for a packet that keeps none; lanes from
        ``count`` on are zero. A register.

    Latency `compactor_latency` (lanes): the beat a row completes is on ``o`` that many cycles
    after the row is taken (one more for the remainder of a split last beat; see
    `hw.common.packer.BeatPacker`). One row a cycle when ``o`` is not stalled.
    """

    def __init__(self, payload_shape, lanes):
        self.payload_shape = check_payload_shape(payload_shape)
        self.lanes = check_lanes(lanes)
        self.latency = compactor_latency(lanes)
        super().__init__({
            "i": In(stream.Signature(keep_layout(payload_shape, lanes))),
            "o": Out(stream.Signature(compact_layout(payload_shape, lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        shape, lanes = self.payload_shape, self.lanes
        m.submodules.skid = skid = SkidBuffer(keep_layout(shape, lanes))
        m.submodules.ze = ze = ZeroEliminator(shape, lanes)
        m.submodules.mid_skid = mid_skid = SkidBuffer(compact_layout(shape, lanes))
        m.submodules.packer = packer = BeatPacker(shape, lanes, zero_above_count=True)
        wiring.connect(m, wiring.flipped(self.i), skid.i)
        wiring.connect(m, skid.o, ze.i)
        wiring.connect(m, ze.o, mid_skid.i)
        wiring.connect(m, mid_skid.o, packer.i)
        wiring.connect(m, packer.o, wiring.flipped(self.o))
        return m
