"""The ECP5 multiplier block with its own registers, shared by the Q.K and prob x V arrays.

Yosys maps a ``*`` onto MULT18X18D but never absorbs the registers around it; fabric registers
next to a block crowd its routing and the unregistered block is the slow path of an array. So
the arrays instantiate it directly, with the input and output registers enabled (two cycles from
operands to product).
"""

from __future__ import annotations

from amaranth.hdl import ClockSignal, Instance, Signal, signed

__all__ = ["mult18x18d"]


def mult18x18d(m, a, b, p, *, ce_a=1) -> Instance:
    """Add to module ``m`` a registered MULT18X18D: ``p`` (36 bits) = ``a`` x ``b`` (18-bit
    signed operands, sign-extended from narrower values) of two cycles earlier; the ``a``
    register loads only in cycles with ``ce_a`` high."""
    a18, b18, p36 = Signal(signed(18)), Signal(signed(18)), Signal(signed(36))
    m.d.comb += [a18.eq(a), b18.eq(b), p.eq(p36)]
    ports = {f"i_A{i}": a18[i] for i in range(18)}
    ports |= {f"i_B{i}": b18[i] for i in range(18)}
    ports |= {f"i_C{i}": 0 for i in range(18)}
    ports |= {f"o_P{i}": p36[i] for i in range(36)}
    m.submodules.dsp = inst = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE1", p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0",
        p_REG_OUTPUT_RST="RST0", p_GSR="DISABLED", p_MULT_BYPASS="DISABLED",
        p_RESETMODE="SYNC",
        i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
        i_CLK0=ClockSignal("sync"), i_CE0=1, i_CE1=ce_a, i_RST0=0,
        **ports)
    return inst
