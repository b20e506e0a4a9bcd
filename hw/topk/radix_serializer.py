"""The serializer of value pruning's selector: the kept keys of each row of P keys, S at a time."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..common.zero_elim import PrefixCount, check_lanes, compact_layout
from .radix import _int_param, _shape_param, flagged_layout

__all__ = ["SERIALIZER_LATENCY", "indexed_key_layout", "KeptSerializer"]

#: `KeptSerializer`: an output beat is formed in the cycle its row is on ``i`` (combinational).
SERIALIZER_LATENCY = 0


def indexed_key_layout(key_shape, index_width: int) -> data.StructLayout:
    """A kept key: its ``index`` in the pass and the ``key``."""
    return data.StructLayout({"index": unsigned(index_width), "key": key_shape})


class KeptSerializer(wiring.Component):
    """Sends the kept keys of each flagged row, ``out_lanes`` at a time, lowest lane first, as
    (index, key) pairs.

    Parameters (keyword-only)
    -------------------------
    key_shape : shape-castable    one key
    lanes : 1, 2, 4, 8, 16 or 32   P, keys a flagged row
    out_lanes : 1..lanes, a power of two   S, pairs an output beat
    rows : int, >= 1              rows of a pass (index = row * P + lane)
    index_width : int             bits of an index (at least those of rows * P - 1)

    Ports
    -----
    i : In(stream(flagged_layout(key_shape, lanes, rows)))   rows with their keep flags
    o : Out(stream(compact_layout(indexed_key_layout, out_lanes)))
        A row with c kept keys gives max(1, ceil(c / S)) beats: S pairs each, the rest in the
        last (``count`` = c - S (beats before), 0 for a row that keeps none), lanes above
        ``count`` zero; ``last`` on the final beat of a row with ``last``.

    Latency `SERIALIZER_LATENCY` (0): ``o.valid = i.valid`` and the beat is formed from ``i``
    combinationally; ``i`` is taken (``i.ready``) with the row's final beat. One beat a cycle.
    """

    def __init__(self, *, key_shape, lanes, out_lanes, rows, index_width):
        self.key_shape = _shape_param("key_shape", key_shape)
        self.lanes = check_lanes(lanes)
        self.out_lanes = check_lanes(out_lanes)
        if out_lanes > lanes:
            raise ValueError(f"out_lanes must not exceed lanes ({lanes}), not {out_lanes}")
        self.rows = _int_param("rows", rows, 1)
        self.index_width = _int_param("index_width", index_width,
                                      max(1, (rows * lanes - 1).bit_length()))
        super().__init__({
            "i": In(stream.Signature(flagged_layout(key_shape, lanes, rows))),
            "o": Out(stream.Signature(
                compact_layout(indexed_key_layout(key_shape, index_width), out_lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        P, S = self.lanes, self.out_lanes
        row, o = self.i.payload, self.o.payload
        started = Signal()                      # part of the row has been sent
        left = Signal(P)                        # ... and these flags are still to send
        flags = Signal(P)
        m.d.comb += flags.eq(Mux(started, left, row.keep))
        m.submodules.ranks = ranks = PrefixCount(P)
        m.d.comb += ranks.flags.eq(flags)
        rank = ranks.prefix
        row_done = Signal()
        m.d.comb += row_done.eq(ranks.total <= S)
        for s in range(S):
            index = Mux(ranks.total > s, Cat(Const(0, (P - 1).bit_length()), row.row), 0)
            key = 0
            for lane in range(P):
                hit = flags[lane] & (rank[lane] == s)
                index = index | Mux(hit, lane, 0)
                key = key | Mux(hit, row.keys[lane], 0)
            m.d.comb += [o.data[s].index.eq(index), o.data[s].key.eq(key)]
        m.d.comb += [
            o.count.eq(Mux(row_done, ranks.total, S)),
            o.last.eq(row.last & row_done),
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready & row_done),
        ]
        with m.If(self.i.valid & self.o.ready):
            m.d.sync += [started.eq(~row_done),
                         left.eq(Cat(*[flags[lane] & (rank[lane] >= S) for lane in range(P)]))]
        return m
