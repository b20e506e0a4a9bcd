"""The top-k engine's statistical mode: the sum and the sum of squares of a run's values,
gathered while the run streams in (`Moments`), and the threshold from them (`StatisticalMode`,
around `hw/topk/stat_threshold.py`)."""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import TopKConfig

from ..common.zero_elim import check_lanes
from .radix import _int_param
from .stat_threshold import StatThreshold

__all__ = ["moment_beat_layout", "Moments", "StatisticalMode"]


def moment_beat_layout(value_width: int, lanes: int) -> data.StructLayout:
    """A beat of values: ``values`` and ``lane_ok`` (the lanes that hold one)."""
    return data.StructLayout({
        "values": data.ArrayLayout(signed(value_width), lanes),
        "lane_ok": lanes,
    })


class Moments(wiring.Component):
    """Sums the values (S1) and their squares (S2) of the beats it is given.

    Parameters (keyword-only)
    -------------------------
    lanes : 1, 2, 4, 8, 16 or 32   values a beat
    value_width : int, 2..32       W, bits of a signed value
    capacity : int, >= 1           the most values summed (sets the widths)

    Ports
    -----
    i : In(stream(moment_beat_layout(value_width, lanes)))   ``ready`` is always 1; lanes not
                              ok count as zero
    clear : In(1)             start over: the sums read zero from two cycles later and count
                              the beats taken from then on; give it with (or before) the first
                              beat to sum, ``latency`` cycles or more after the last beat of
                              the previous sums
    s1 : Out(signed(W + bits(capacity) + 1))   the sum of the values
    s2 : Out(unsigned(2 W + bits(capacity)))   the sum of their squares

    Latency ``latency`` = log2(lanes) + 3: a beat taken in cycle t is in the sums from
    t + latency (the values are registered, squared into a register, summed by an adder tree
    with a register per level, then accumulated). One beat a cycle.
    """

    def __init__(self, *, lanes, value_width, capacity):
        self.lanes = check_lanes(lanes)
        self.value_width = _int_param("value_width", value_width, 2, 32)
        self.capacity = _int_param("capacity", capacity, 1)
        self.tree_depth = (lanes - 1).bit_length()
        self.latency = self.tree_depth + 3
        cw = capacity.bit_length()
        super().__init__({
            "i": In(stream.Signature(moment_beat_layout(value_width, lanes))),
            "clear": In(1),
            "s1": Out(signed(value_width + cw + 1)),
            "s2": Out(unsigned(2 * value_width + cw)),
        })

    def elaborate(self, platform):
        m = Module()
        P, W = self.lanes, self.value_width
        s1_w, s2_w = len(self.s1), len(self.s2)
        beat = self.i.payload
        # stage 1 registers the (masked) values, stage 2 their squares (a multiplier fed from a
        # register), then the adder tree
        valid1, valid2 = Signal(), Signal()
        value1 = [Signal(signed(W), name=f"value1_{lane}") for lane in range(P)]
        value2 = [Signal(signed(W), name=f"value2_{lane}") for lane in range(P)]
        square2 = [Signal(unsigned(2 * W), name=f"square2_{lane}") for lane in range(P)]
        m.d.sync += [valid1.eq(self.i.valid), valid2.eq(valid1)]
        for lane in range(P):
            m.d.sync += [value1[lane].eq(Mux(beat.lane_ok[lane], beat.values[lane], 0)),
                         value2[lane].eq(value1[lane]),
                         square2[lane].eq(value1[lane] * value1[lane])]
        level_v, level_q, level_valid = value2, square2, valid2
        for depth in range(self.tree_depth):
            nv, nq = [], []
            for j in range(0, len(level_v), 2):
                a = Signal(signed(s1_w), name=f"sum{depth}_{j}")
                q = Signal(unsigned(s2_w), name=f"sumsq{depth}_{j}")
                m.d.sync += [a.eq(level_v[j] + level_v[j + 1]), q.eq(level_q[j] + level_q[j + 1])]
                nv.append(a)
                nq.append(q)
            vv = Signal(name=f"valid_tree{depth}")
            m.d.sync += vv.eq(level_valid)
            level_v, level_q, level_valid = nv, nq, vv
        cleared = Signal()
        m.d.sync += cleared.eq(self.clear)
        with m.If(cleared):
            m.d.sync += [self.s1.eq(0), self.s2.eq(0)]
        with m.Elif(level_valid):
            m.d.sync += [self.s1.eq(self.s1 + level_v[0]), self.s2.eq(self.s2 + level_q[0])]
        m.d.comb += self.i.ready.eq(1)
        return m


class StatisticalMode(wiring.Component):
    """The statistical mode's threshold: the `Moments` of a run's beats, then `StatThreshold`
    once the sums hold its last beat.

    Parameters (keyword-only)
    -------------------------
    config : TopKConfig       lanes, value width, capacity, the threshold unit's tables

    Ports
    -----
    i : In(stream(moment_beat_layout(value_width, lanes)))   the run's beats (``ready`` is 1)
    clear : In(1)             with the run's first beat (see `Moments`)
    start : In(1)             with (or after) the run's last beat on ``i``: compute the threshold
    n, k : In                 the run's values and how many to keep (held until ``done``)
    done : Out(1)             one-cycle pulse: ``threshold``, ``select_all``, ``select_none`` are
                              valid (see `StatThreshold`) and held until the next ``done``

    Latency ``latency`` = `Moments` latency + 1 + `StatThreshold` latency cycles from ``start``
    to ``done``, whatever the data.
    """

    def __init__(self, *, config):
        if not isinstance(config, TopKConfig):
            raise TypeError(f"config must be a TopKConfig, not {config!r}")
        self.config = config
        self.moments = Moments(lanes=config.lanes, value_width=config.value_width,
                               capacity=config.capacity)
        self.stat = StatThreshold(config)
        self.latency = self.moments.latency + 1 + self.stat.latency
        super().__init__({
            "i": In(stream.Signature(moment_beat_layout(config.value_width, config.lanes))),
            "clear": In(1),
            "start": In(1),
            "n": In(range(config.capacity + config.lanes + 1)),
            "k": In(range(config.capacity + 1)),
            "done": Out(1),
            "threshold": Out(signed(config.value_width)),
            "select_all": Out(1),
            "select_none": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.moments = moments = self.moments
        m.submodules.stat = stat = self.stat
        wiring.connect(m, wiring.flipped(self.i), moments.i)
        waiting = Signal()                      # the sums still lack the last beat
        wait = Signal(range(moments.latency))
        start_stat = Signal()                   # registered: the unit starts a cycle later
        m.d.sync += start_stat.eq(0)
        with m.If(self.start):
            m.d.sync += [waiting.eq(1), wait.eq(moments.latency - 1)]
        with m.Elif(waiting):
            m.d.sync += wait.eq(wait - 1)
            with m.If(wait == 0):
                m.d.sync += [waiting.eq(0), start_stat.eq(1)]
        m.d.comb += [
            moments.clear.eq(self.clear), stat.start.eq(start_stat), stat.n.eq(self.n),
            stat.k.eq(self.k), stat.s1.eq(moments.s1), stat.s2.eq(moments.s2),
            self.done.eq(stat.done), self.threshold.eq(stat.threshold),
            self.select_all.eq(stat.select_all), self.select_none.eq(stat.select_none),
        ]
        return m
