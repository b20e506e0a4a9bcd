"""Registered copies of a control signal, one next to each group of its loads.

A control net that reaches every lane of a wide array (a load enable, a multiplexer select) is
one long, high-fanout net on an FPGA: slow, and a large share of the routing congestion of the
whole pipeline. `copies` replaces it by several registers fed from its next value, each placed
by the tools near the loads it drives.
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Module, Signal, Value

__all__ = ["copies"]


def copies(m: Module, platform, value, n: int, name: str, init: int = 0) -> list:
    """`n` registers, each holding `value` of the previous cycle (initial value `init`).

    One copy next to each group of loads keeps a control net that fans out across the whole
    array short. On an ECP5 platform they are TRELLIS_FF instances, which Yosys does not merge
    (it merges equal registers inferred from the design, however they are named or kept)."""
    value = Value.cast(value)
    ecp5 = getattr(platform, "family", None) == "ecp5"
    outs = []
    for k in range(n):
        if ecp5:
            q = Signal(len(value), name=f"{name}{k}")
            for i in range(len(value)):
                m.submodules[f"{name}{k}_ff{i}"] = Instance(
                    "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="1", p_CLKMUX="CLK",
                    p_LSRMUX="LSR", p_REGSET="SET" if (init >> i) & 1 else "RESET",
                    p_SRMODE="LSR_OVER_CE",
                    i_CLK=ClockSignal("sync"), i_LSR=0, i_CE=1, i_DI=value[i], o_Q=q[i])
        else:
            q = Signal(len(value), name=f"{name}{k}", init=init, reset_less=True)
            m.d.sync += q.eq(value)
        outs.append(q)
    return outs
