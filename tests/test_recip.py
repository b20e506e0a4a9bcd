# amaranth: UnusedElaboratable=no
"""The shared reciprocal (`hw/common/recip.py`) against its formula in exact rationals: exhaustively
for small widths, on edge and random values at the widths of the softmax and of prob x V; exact
latency and one-at-a-time occupancy; random input gaps and output backpressure (nothing lost,
duplicated or reordered, the result held while stalled); bad parameters. Set SPATTEN_SEED to fix
the seed."""

import math
import random
from fractions import Fraction

import pytest
from amaranth.hdl import Shape, signed, unsigned

from spatten.config import AttentionConfig
from spatten.hw.common.recip import Reciprocal
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig()
#: the two users: the softmax (esum, normalised down only, saturated) and prob x V (the
#: probability sum, normalised both ways, exact)
SOFTMAX = dict(value_width=CFG.esum_width, divisor_bits=CFG.e_width, normalise_up=False,
               saturate=True)
PROB_V = dict(value_width=CFG.psum_width, divisor_bits=CFG.prob_bits, normalise_up=True,
              saturate=False)


def reference(x: int, *, value_width, divisor_bits, normalise_up, saturate, **_) -> dict:
    """The contract of `Reciprocal`, in integers and exact fractions."""
    MW = divisor_bits
    exponent = x.bit_length() - MW
    if not normalise_up:
        exponent = max(0, exponent)
    elif x == 0:
        exponent = -MW
    m = math.floor(x / Fraction(2) ** exponent)
    if m == 0:
        recip = (1 << MW) - 1 if saturate else 0
    else:
        assert 1 << (MW - 1) <= m < 1 << MW
        recip = math.floor(Fraction(1 << (2 * MW - 1), m) + Fraction(1, 2))
        if saturate:
            recip = min(recip, (1 << MW) - 1)
    return {"recip": recip, "exponent": exponent,
            "leading_zeros": value_width - MW - exponent}


def allowed(x: int, params: dict) -> bool:
    """Without normalise_up, x must be 0 or at least 2**(MW - 1)."""
    return params["normalise_up"] or x == 0 or x >= 1 << (params["divisor_bits"] - 1)


def run(params, values, *, gap=0.0, stall=0.0, seed=0):
    """Stream `values` through a Reciprocal(**params); check every result against `reference`,
    the latency and that the unit takes a value only when idle. Returns run_streams' result."""
    dut = Reciprocal(**params)
    valid = []
    res = run_streams(dut, sources={"i": values}, sinks={"o": len(values)}, gap=gap,
                      stall=stall, seed=seed, max_cycles=(dut.latency + 2) * len(values) * 20 + 50,
                      watch=lambda ctx, cycle: valid.append(ctx.get(dut.o.valid)))
    for x, got in zip(values, res["beats"]["o"], strict=True):
        assert got == reference(x, **params), f"x = {x}: {got} != {reference(x, **params)}"
    taken, given, ready = res["accepted"]["i"], res["seen"]["o"], res["ready"]["i"]
    for k, (t_in, t_out) in enumerate(zip(taken, given, strict=True)):
        # offered exactly `latency` cycles after the value was taken, held until taken
        assert not any(valid[t_in + 1:t_in + dut.latency]), f"value {k}: early result"
        assert all(valid[t_in + dut.latency:t_out + 1]), f"value {k}: result not held"
        assert t_out >= t_in + dut.latency
        # idle (ready) from the cycle after the transfer, busy (not ready) before it
        assert not any(ready[t_in + 1:t_out + 1]), f"value {k}: ready while busy"
        assert ready[t_out + 1] if t_out + 1 < len(ready) else True
        if k + 1 < len(taken):
            assert taken[k + 1] > t_out
    if gap == 0.0 and stall == 0.0:
        assert taken == [k * (dut.latency + 1) for k in range(len(values))]
    return res


def edge_values(params) -> list[int]:
    XW, MW = params["value_width"], params["divisor_bits"]
    vals = {0, (1 << XW) - 1, 1 << (MW - 1), (1 << MW) - 1, 1 << MW, (1 << MW) + 1,
            3 << (MW - 2), (1 << (MW - 1)) + 1, 1 << (XW - 1), (1 << (XW - 1)) + 1}
    vals |= {((1 << MW) - 1) << s for s in range(XW - MW + 1)}
    vals |= {1 << b for b in range(XW)} | {(1 << b) - 1 for b in range(1, XW + 1)}
    return sorted(v for v in vals if v < 1 << XW and allowed(v, params))


@pytest.mark.parametrize("normalise_up", [False, True])
@pytest.mark.parametrize("saturate", [False, True])
def test_exhaustive_small(normalise_up, saturate):
    """Every value of 7 bits into a 4-bit divisor, every combination of the options."""
    params = dict(value_width=7, divisor_bits=4, normalise_up=normalise_up, saturate=saturate)
    values = [x for x in range(1 << 7) if allowed(x, params)]
    run(params, values)


@pytest.mark.parametrize("steps", [1, 2, 3, 6])
def test_steps_per_cycle(steps):
    """Quotient bits a cycle: the same results, latency 2 + (MW + 2) / steps."""
    params = dict(value_width=9, divisor_bits=4, normalise_up=True, saturate=False,
                  steps_per_cycle=steps)
    assert Reciprocal(**params).latency == 2 + 6 // steps
    run(params, list(range(0, 1 << 9, 7)))


@pytest.mark.parametrize("user", ["softmax", "prob_v"])
def test_users_widths(user):
    """The widths of the two users: edge values (powers of two, all-ones runs, the extremes of
    the normalised range) and seeded random ones; their latencies."""
    params = {"softmax": SOFTMAX, "prob_v": PROB_V}[user]
    seed = pick_seed()
    rng = random.Random(seed)
    XW, MW = params["value_width"], params["divisor_bits"]
    values = edge_values(params)
    low = 0 if params["normalise_up"] else 1 << (MW - 1)
    values += [rng.randrange(low, 1 << rng.randrange(MW, XW + 1)) for _ in range(120)]
    dut = Reciprocal(**params)
    assert dut.quotient_bits == MW + 2
    assert dut.latency == {"softmax": 21, "prob_v": 20}[user]
    run(params, values, seed=seed)


@pytest.mark.parametrize("gap,stall", [(0.5, 0.0), (0.0, 0.7), (0.4, 0.5)])
def test_gaps_and_backpressure(gap, stall):
    """Random idle cycles on ``i`` and backpressure on ``o``."""
    seed = pick_seed()
    rng = random.Random(seed)
    params = dict(value_width=10, divisor_bits=5, normalise_up=True, saturate=True)
    values = [rng.randrange(1 << rng.randrange(1, 11)) for _ in range(60)]
    run(params, values, gap=gap, stall=stall, seed=seed)


def test_shapes():
    dut = Reciprocal(**SOFTMAX)
    shape = {name: Shape.cast(field.shape) for name, field in dut.result_layout}
    assert shape["recip"] == unsigned(CFG.recip_width)
    assert shape["exponent"] == unsigned(4)                     # 0 .. esum_width - e_width
    assert shape["leading_zeros"] == unsigned(4)
    dut = Reciprocal(**PROB_V)
    shape = {name: Shape.cast(field.shape) for name, field in dut.result_layout}
    assert shape["recip"] == unsigned(CFG.prob_bits + 1)
    assert shape["exponent"] == signed(5)                       # -16 .. psum_width - 16
    assert shape["leading_zeros"] == unsigned(5)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(value_width=8, divisor_bits=1), ValueError, "divisor_bits must be at least 2"),
    (dict(value_width=3, divisor_bits=4), ValueError, "value_width must be at least 4"),
    (dict(value_width=8.0, divisor_bits=4), TypeError, "value_width must be an int"),
    (dict(value_width=8, divisor_bits=4, steps_per_cycle=4), ValueError, "must divide"),
    (dict(value_width=8, divisor_bits=4, steps_per_cycle=0), ValueError, "at least 1"),
    (dict(value_width=8, divisor_bits=4, normalise_up=1), TypeError, "normalise_up must be"),
    (dict(value_width=8, divisor_bits=4, saturate=None), TypeError, "saturate must be"),
])
def test_bad_parameters(kwargs, exc, msg):
    kwargs = dict(dict(normalise_up=True, saturate=False), **kwargs)
    with pytest.raises(exc, match=msg):
        Reciprocal(**kwargs)
