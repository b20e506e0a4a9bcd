"""The registered multiplier shared by the Q.K and prob x V arrays, and the ECP5 block under it.

Yosys maps a ``*`` onto MULT18X18D but never absorbs the registers around it; fabric registers
next to a block crowd its routing and the unregistered block is the slow path of an array. So
on an ECP5 platform `Multiplier` instantiates the block directly (`mult18x18d`) with its own
registers enabled; elsewhere it is fabric registers around a ``*``, cycle for cycle the same.
"""

from __future__ import annotations

import enum

from amaranth.hdl import ClockSignal, Instance, Module, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier", "MultiplierRegisters", "mult18x18d", "MULT18X18D_OPERAND_BITS"]

#: the MULT18X18D multiplies two 18-bit signed operands (an unsigned one fits in 17 bits)
MULT18X18D_OPERAND_BITS = 18


class MultiplierRegisters(enum.Enum):
    """Which registers a `Multiplier` has between its operands and its product; ``latency`` is
    the cycles from an operand to the product of it."""

    #: operand registers, then the product register: two cycles
    INPUT_OUTPUT = "input_output"
    #: operand registers, the MULT18X18D's pipeline register, the product register: three
    INPUT_PIPELINE_OUTPUT = "input_pipeline_output"

    @property
    def latency(self) -> int:
        return {MultiplierRegisters.INPUT_OUTPUT: 2,
                MultiplierRegisters.INPUT_PIPELINE_OUTPUT: 3}[self]


def mult18x18d(m, a, b, p, *, ce_a=1, pipeline: bool = False) -> Instance:
    """Add to module ``m`` a registered MULT18X18D named ``dsp``: ``p`` (36 bits) = ``a`` x ``b``
    (operands sign-extended, or zero-extended when unsigned, to 18-bit signed values) of two
    cycles earlier, three with the ``pipeline`` register; the ``a`` register loads only in
    cycles with ``ce_a`` high."""
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
        **({"p_REG_PIPELINE_CLK": "CLK0", "p_REG_PIPELINE_CE": "CE0",
            "p_REG_PIPELINE_RST": "RST0"} if pipeline else {"p_REG_PIPELINE_CLK": "NONE"}),
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0",
        p_REG_OUTPUT_RST="RST0", p_GSR="DISABLED", p_MULT_BYPASS="DISABLED",
        p_RESETMODE="SYNC",
        i_SIGNEDA=1, i_SIGNEDB=1, i_SOURCEA=0, i_SOURCEB=0,
        i_CLK0=ClockSignal("sync"), i_CE0=1, i_CE1=ce_a, i_RST0=0,
        **ports)
    return inst


def _operand_shape(name: str, shape) -> Shape:
    try:
        shape = Shape.cast(shape)
    except TypeError as e:
        raise TypeError(f"{name} must be a shape (signed(w) or unsigned(w)), not {shape!r}") from e
    bits = shape.width + (0 if shape.signed else 1)
    if shape.width < 1 or bits > MULT18X18D_OPERAND_BITS:
        raise ValueError(f"{name} must be signed(1..18) or unsigned(1..17) (an 18-bit signed "
                         f"MULT18X18D operand), not {shape!r}")
    return shape


class Multiplier(wiring.Component):
    """p = a x b, exact, through registers: one product a cycle, `latency` cycles after its
    operands.

    Parameters (keyword-only)
    -------------------------
    a_shape, b_shape : shape
        The operands' shapes, each signed or unsigned and fitting an 18-bit signed MULT18X18D
        operand: signed(1..18) or unsigned(1..17) (ValueError otherwise).
    a_enable : bool, default False
        With it, an ``a_en`` input: the ``a`` operand register loads only in cycles with ``a_en``
        high and holds otherwise (a weight kept for several products). In fabric that register
        resets to 0 (a register that may hold for long must not start unknown in a four-state
        simulator); without ``a_en`` every register is reset-less.
    registers : MultiplierRegisters, default INPUT_OUTPUT
        The registers between the operands and ``p``; sets `latency` (2, resp. 3 with the
        pipeline register).

    Ports
    -----
    a : In(a_shape), b : In(b_shape), a_en : In(1) (only with ``a_enable``)
    p : Out(signed(wa + wb) if either operand is signed, else unsigned(wa + wb))
        In cycle t, ``b`` of cycle t - latency times ``a`` as registered then (``a`` of cycle
        t - latency, or with ``a_enable`` of the last cycle up to then with ``a_en`` high).

    On an ECP5 platform (``platform.family == "ecp5"``) it is one MULT18X18D named ``dsp`` with
    its own registers (`mult18x18d`; the floorplan pins it as ``<path>.dsp``), ``a_en`` its input
    A register's clock enable; elsewhere fabric registers around a ``*``.
    """

    def __init__(self, *, a_shape, b_shape, a_enable: bool = False,
                 registers: MultiplierRegisters = MultiplierRegisters.INPUT_OUTPUT):
        a_shape = _operand_shape("a_shape", a_shape)
        b_shape = _operand_shape("b_shape", b_shape)
        if not isinstance(a_enable, bool):
            raise TypeError(f"a_enable must be a bool, not {a_enable!r}")
        if not isinstance(registers, MultiplierRegisters):
            raise TypeError(f"registers must be a MultiplierRegisters "
                            f"({', '.join(r.name for r in MultiplierRegisters)}), "
                            f"not {registers!r}")
        self.a_enable, self.registers = a_enable, registers
        #: cycles from the operands to their product on ``p``
        self.latency = registers.latency
        width = a_shape.width + b_shape.width
        members = {"a": In(a_shape), "b": In(b_shape)}
        if a_enable:
            members["a_en"] = In(1)
        members["p"] = Out(signed(width) if a_shape.signed or b_shape.signed
                           else unsigned(width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        pipeline = self.registers is MultiplierRegisters.INPUT_PIPELINE_OUTPUT
        a_en = self.a_en if self.a_enable else 1
        if getattr(platform, "family", None) == "ecp5":
            mult18x18d(m, self.a, self.b, self.p, ce_a=a_en, pipeline=pipeline)
            return m
        a_reg = Signal.like(self.a, name="a_reg", reset_less=not self.a_enable)
        b_reg = Signal.like(self.b, name="b_reg", reset_less=True)
        product = Signal.like(self.p, name="product", reset_less=True)
        if self.a_enable:
            with m.If(self.a_en):
                m.d.sync += a_reg.eq(self.a)
        else:
            m.d.sync += a_reg.eq(self.a)
        m.d.sync += b_reg.eq(self.b)
        if pipeline:
            staged = Signal.like(self.p, name="staged", reset_less=True)
            m.d.sync += [staged.eq(a_reg * b_reg), product.eq(staged)]
        else:
            m.d.sync += product.eq(a_reg * b_reg)
        m.d.comb += self.p.eq(product)
        return m
