"""A skid buffer: a stream register stage whose ``i.ready`` is itself a register.

It cuts a combinational ready path in two: whatever drives ``i`` sees a ready that depends on
nothing downstream in the same cycle, so a long pipeline behind ``i`` can stall on a short path.
"""

from __future__ import annotations

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """Two-entry stream register with a registered ``i.ready``.

    Parameters
    ----------
    payload_shape : shape-castable
        The stream's payload.

    Ports
    -----
    i : In(stream.Signature(payload_shape))
    o : Out(stream.Signature(payload_shape))

    Contract: every beat accepted on ``i`` leaves on ``o`` once, in order, unchanged. A beat
    accepted in cycle t is on ``o`` from t + 1 (latency 1); one beat per cycle when ``o`` is not
    stalled. ``i.ready`` is low only while the spare register is full, and depends on no input
    in the same cycle. ``o.valid`` and ``o.payload`` come from a register and hold while stalled.
    """

    def __init__(self, payload_shape):
        try:
            Shape.cast(payload_shape)
        except TypeError as e:
            raise TypeError(f"payload_shape must be shape-castable, not {payload_shape!r}") from e
        self.payload_shape = payload_shape
        super().__init__({
            "i": In(stream.Signature(payload_shape)),
            "o": Out(stream.Signature(payload_shape)),
        })

    def elaborate(self, platform):
        m = Module()
        main = Signal.like(self.o.payload, name="main")
        spare = Signal.like(self.i.payload, name="spare")
        main_valid = Signal()
        spare_valid = Signal()
        m.d.comb += [
            self.i.ready.eq(~spare_valid),
            self.o.valid.eq(main_valid),
            self.o.payload.eq(main),
        ]
        take_in = self.i.valid & ~spare_valid
        with m.If(~main_valid | self.o.ready):
            # main is free (empty or being taken): refill it from spare, else from the input
            with m.If(spare_valid):
                m.d.sync += [main.eq(spare), main_valid.eq(1), spare_valid.eq(0)]
            with m.Elif(take_in):
                m.d.sync += [main.eq(self.i.payload), main_valid.eq(1)]
            with m.Else():
                m.d.sync += main_valid.eq(0)
        with m.Elif(take_in):
            # main is held: the input beat waits in spare
            m.d.sync += [spare.eq(self.i.payload), spare_valid.eq(1)]
        return m
