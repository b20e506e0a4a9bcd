# amaranth: UnusedElaboratable=no
"""The registered multiplier (`hw/common/dsp.py`): exact products of every operand-shape combination
the arrays use and of the extremes an 18-bit operand allows, the latency of each register choice
exactly, the ``a_en`` hold, the MULT18X18D it becomes on an ECP5 platform, and bad parameters.
Set SPATTEN_SEED to fix the seed of the random operands."""

import random
import re

import pytest
from amaranth.back import rtlil
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.hw.common.dsp import MULT18X18D_OPERAND_BITS, Multiplier, MultiplierRegisters
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig()
PB = CFG.prob_bits
#: (a_shape, b_shape, a_enable) of every multiplier of the arrays at the default config, and
#: the extremes: the Q.K array's signed(W) x signed(W) at every data width the config allows;
#: prob x V's V element x probability and its renormalisation lane's 17-bit chunks of the
#: column sum (the top one signed) x reciprocal
USED = ([(signed(w), signed(w), False) for w in range(4, 17)]
        + [(signed(CFG.data_width), unsigned(PB), True),
           (unsigned(PB + 1), unsigned(PB + 1), True),
           (signed(CFG.acc_width - 2 * (PB + 1)), unsigned(PB + 1), True)])
EXTREMES = [(signed(18), signed(18), False), (unsigned(17), unsigned(17), False),
            (signed(18), unsigned(17), True), (unsigned(17), signed(18), False),
            (signed(1), unsigned(1), False), (unsigned(1), unsigned(1), True)]


class Ecp5:
    """Just enough of an ECP5 platform for `Multiplier` to take the MULT18X18D."""
    family = "ecp5"


@pytest.fixture
def seed():
    return pick_seed()


def bounds(shape) -> tuple[int, int]:
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def extremes(shape) -> list[int]:
    """The smallest and largest values of `shape`, their neighbours, -1, 0 and 1 (those that
    exist)."""
    lo, hi = bounds(shape)
    return sorted({lo, lo + 1, -1, 0, 1, hi - 1, hi} & set(range(lo, hi + 1)))


def operands(shape, rng, count) -> list[int]:
    """`count` random values of `shape`."""
    lo, hi = bounds(shape)
    return [rng.randint(lo, hi) for _ in range(count)]


def simulate(mul: Multiplier, a, b, a_en=None) -> list[int]:
    """``p`` in every cycle while ``a``, ``b`` (and ``a_en``) take the given values one a cycle,
    then zeros for `latency` more cycles."""
    out = []
    cycles = len(a) + mul.latency

    async def bench(ctx):
        for t in range(cycles):
            ctx.set(mul.a, a[t] if t < len(a) else 0)
            ctx.set(mul.b, b[t] if t < len(b) else 0)
            if mul.a_enable:
                ctx.set(mul.a_en, a_en[t] if t < len(a) else 0)
            out.append(ctx.get(mul.p))
            await ctx.tick()

    sim = Simulator(mul)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def expected(latency, a, b, a_en=None) -> list[int]:
    """The product of cycle t - latency's ``b`` and the ``a`` registered then; 0 before (every
    register starts at 0)."""
    held, want = 0, [0] * latency
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        if a_en is None or a_en[t]:
            held = x
        want.append(held * y)
    return want


def check(a_shape, b_shape, a_enable, registers, rng):
    mul = Multiplier(a_shape=a_shape, b_shape=b_shape, a_enable=a_enable, registers=registers)
    assert mul.latency == registers.latency
    p_shape = mul.p.shape()
    assert p_shape.width == a_shape.width + b_shape.width
    assert p_shape.signed == (a_shape.signed or b_shape.signed)
    # every pair of extremes, then random operands
    pairs = [(x, y) for x in extremes(a_shape) for y in extremes(b_shape)]
    a = [x for x, _ in pairs] + operands(a_shape, rng, 64)
    b = [y for _, y in pairs] + operands(b_shape, rng, 64)
    a_en = [rng.random() < 0.5 for _ in a] if a_enable else None
    got = simulate(mul, a, b, a_en)
    want = expected(registers.latency, a, b, a_en)
    assert got == want, next(f"cycle {t}: p = {g}, want {w}" for t, (g, w)
                             in enumerate(zip(got, want, strict=True)) if g != w)
    # the latency is exact: the products of any other delay differ somewhere
    for other in (registers.latency - 1, registers.latency + 1):
        assert got != expected(other, a, b, a_en)[:len(got)]


@pytest.mark.parametrize("registers", list(MultiplierRegisters), ids=lambda r: r.name)
@pytest.mark.parametrize("a_shape,b_shape,a_enable", USED + EXTREMES,
                         ids=lambda v: repr(v) if not isinstance(v, bool) else f"a_en{int(v)}")
def test_products_and_latency(a_shape, b_shape, a_enable, registers, seed):
    check(a_shape, b_shape, a_enable, registers, random.Random(seed))


def test_named_latencies():
    assert MultiplierRegisters.INPUT_OUTPUT.latency == 2
    assert MultiplierRegisters.INPUT_PIPELINE_OUTPUT.latency == 3
    assert Multiplier(a_shape=signed(12), b_shape=signed(12)).latency == 2
    assert Multiplier(a_shape=signed(12), b_shape=signed(12), a_enable=True).registers is \
        MultiplierRegisters.INPUT_OUTPUT


def test_a_en_only_with_a_enable():
    assert "a_en" not in Multiplier(a_shape=signed(8), b_shape=signed(8)).signature.members
    assert "a_en" in Multiplier(a_shape=signed(8), b_shape=signed(8), a_enable=True) \
        .signature.members


def ecp5_cell(mul) -> tuple[str, dict]:
    """The text of the MULT18X18D cell ``dsp`` of `mul` elaborated for an ECP5, and its
    parameters."""
    text = rtlil.convert(mul, name="mul", platform=Ecp5())
    cells = re.findall(r"cell \\MULT18X18D \\dsp\n(.*?)\n\s*end", text, re.S)
    assert len(cells) == 1, "one MULT18X18D named dsp"
    assert "$mul" not in text, "no fabric multiplier beside the block"
    params = dict(re.findall(r'parameter \\(\w+) "?([^"\n]*)"?', cells[0]))
    return cells[0], params


@pytest.mark.parametrize("registers", list(MultiplierRegisters), ids=lambda r: r.name)
def test_ecp5_is_one_registered_mult18x18d(registers):
    cell, params = ecp5_cell(Multiplier(a_shape=signed(12), b_shape=signed(12),
                                        registers=registers))
    assert params["REG_INPUTA_CLK"] == params["REG_INPUTB_CLK"] == "CLK0"
    assert params["REG_OUTPUT_CLK"] == "CLK0"
    pipelined = registers is MultiplierRegisters.INPUT_PIPELINE_OUTPUT
    assert params["REG_PIPELINE_CLK"] == ("CLK0" if pipelined else "NONE")
    assert params["REG_INPUTA_CE"] == "CE1" and re.search(r"connect \\CE1 1'1", cell)
    _, params = ecp5_cell(Multiplier(a_shape=signed(12), b_shape=unsigned(16), a_enable=True,
                                     registers=registers))
    assert params["REG_INPUTA_CE"] == "CE1"


def test_ecp5_a_en_drives_the_a_register_enable():
    cell, _ = ecp5_cell(Multiplier(a_shape=signed(12), b_shape=unsigned(16), a_enable=True))
    assert re.search(r"connect \\CE1 \\a_en\b", cell)
    assert re.search(r"connect \\CE0 1'1", cell)


@pytest.mark.parametrize("shape", [signed(19), unsigned(18), unsigned(0)], ids=repr)
def test_rejects_operands_wider_than_the_block(shape):
    for kwargs in ({"a_shape": shape, "b_shape": signed(8)},
                   {"a_shape": signed(8), "b_shape": shape}):
        with pytest.raises(ValueError, match=r"signed\(1..18\) or unsigned\(1..17\)"):
            Multiplier(**kwargs)
    assert MULT18X18D_OPERAND_BITS == 18


def test_rejects_bad_parameters():
    with pytest.raises(TypeError, match="a_shape must be a shape"):
        Multiplier(a_shape="wide", b_shape=signed(8))
    with pytest.raises(TypeError, match="b_shape must be a shape"):
        Multiplier(a_shape=signed(8), b_shape=None)
    with pytest.raises(TypeError, match="a_enable must be a bool, not 1"):
        Multiplier(a_shape=signed(8), b_shape=signed(8), a_enable=1)
    with pytest.raises(TypeError, match="registers must be a MultiplierRegisters"):
        Multiplier(a_shape=signed(8), b_shape=signed(8), registers=2)
    with pytest.raises(TypeError):
        Multiplier(signed(8), signed(8))            # keyword-only
