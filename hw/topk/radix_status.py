"""The run status of the top-k engine: how many cycles a run took, how many of them selecting,
how many values it sent."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .radix import _int_param

__all__ = ["STATUS_LATENCY", "RunStatus"]

#: `RunStatus`: the counters show the events of cycle t from t + 1.
STATUS_LATENCY = 1


class RunStatus(wiring.Component):
    """Counts the cycles and the output values of a run.

    Parameters (keyword-only)
    -------------------------
    lanes : int, 1..32        values an output beat
    capacity : int, >= 1      the most values a run sends

    Ports
    -----
    take, first, last : In    a beat of the run is taken; it is the run's first / its last
    select_done : In(1)       the threshold is known: the selection count stops (this cycle
                              counted)
    out_take, out_count : In  an output beat leaves with ``out_count`` values
    end : In(1)               the run's last output beat leaves: both cycle counts stop (this
                              cycle counted) and ``ran`` rises
    total_cycles : Out(32)    cycles from the first beat to ``end``, both counted
    select_cycles : Out(32)   cycles after the last beat up to ``select_done`` (or ``end``),
                              both counted
    selected : Out(range(capacity + 1))   values sent since the run's first beat
    busy : Out(1)             a run has taken its first beat and not ended
    done : Out(1)             a run has ended since reset, and no other has started

    A run's first beat restarts every count. Latency `STATUS_LATENCY`: the counters show the
    events of cycle t from t + 1.
    """

    def __init__(self, *, lanes, capacity):
        self.lanes = _int_param("lanes", lanes, 1, 32)
        self.capacity = _int_param("capacity", capacity, 1)
        super().__init__({
            "take": In(1),
            "first": In(1),
            "last": In(1),
            "select_done": In(1),
            "out_take": In(1),
            "out_count": In(range(lanes + 1)),
            "end": In(1),
            "total_cycles": Out(32),
            "select_cycles": Out(32),
            "selected": Out(range(capacity + 1)),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        counting_total, counting_select = Signal(), Signal()
        with m.If(counting_total):
            m.d.sync += self.total_cycles.eq(self.total_cycles + 1)
        with m.If(counting_select):
            m.d.sync += self.select_cycles.eq(self.select_cycles + 1)
        with m.If(self.out_take):
            m.d.sync += self.selected.eq(self.selected + self.out_count)
        with m.If(self.select_done):
            m.d.sync += counting_select.eq(0)
        with m.If(self.end):
            m.d.sync += [counting_total.eq(0), counting_select.eq(0), self.busy.eq(0),
                         self.done.eq(1)]
        with m.If(self.take):
            m.d.sync += counting_total.eq(1)
            with m.If(self.first):
                m.d.sync += [self.total_cycles.eq(1), self.select_cycles.eq(0),
                             self.selected.eq(0), self.busy.eq(1), self.done.eq(0)]
            with m.If(self.last):
                m.d.sync += counting_select.eq(1)
        return m
