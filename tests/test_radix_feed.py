# amaranth: UnusedElaboratable=no
"""The top-k engine's digits at fixed places (`hw/topk/radix_feed.py`) in the Amaranth simulator:
the candidate filter against a model on random rows (one digit, one lane, all keys equal); the
survivor feed (candidate rows shifted up a digit, or kept rows) under random input gaps and
output backpressure, combinational (FEED_LATENCY); bad parameters. Set SPATTEN_SEED to change
the seed."""

import os
import random

import pytest
from amaranth import ClockDomain, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spatten.hw.topk.radix_feed import FEED_LATENCY, FixedDigitFilter, SurvivorFeed
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


@pytest.mark.parametrize("key_width,digit_bits,lanes", [(16, 4, 4), (6, 2, 1), (4, 4, 8),
                                                        (12, 3, 16)])
def test_filter(key_width, digit_bits, lanes):
    seed = SEED + key_width + digit_bits * 3 + lanes
    print("seed", seed)
    rng = random.Random(seed)
    dut = FixedDigitFilter(key_width=key_width, digit_bits=digit_bits, lanes=lanes)
    D, KW = digit_bits, key_width

    async def bench(ctx):
        for trial in range(300):
            keys = [rng.randrange(1 << KW) for _ in range(lanes)]
            if trial % 5 == 0:
                keys = [keys[0]] * lanes              # all keys equal
            ok, filtering = rng.randrange(1 << lanes), rng.randrange(2)
            filter_bin = rng.randrange(1 << D)
            if trial % 3 == 0:
                filter_bin = keys[0] >> (KW - D)            # a bin that some keys are in
            ctx.set(dut.keys, keys)
            ctx.set(dut.lane_ok, ok)
            ctx.set(dut.filtering, filtering)
            ctx.set(dut.filter_bin, filter_bin)
            for lane, k in enumerate(keys):
                top = k >> (KW - D)
                second = (k >> (KW - 2 * D)) & ((1 << D) - 1) if KW > D else top
                in_bin = top == filter_bin or KW == D
                assert ctx.get(dut.match) >> lane & 1 == int(
                    bool(ok >> lane & 1) and (not filtering or in_bin))
                assert ctx.get(dut.digits[lane]) == (second if filtering else top)

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


class Clocked(wiring.Component):
    """A combinational component with the same ports, in a module that has a sync domain (which
    `run_streams` clocks)."""

    def __init__(self, dut):
        self.dut = dut
        super().__init__(dut.signature)

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        m.submodules.dut = self.dut
        wiring.connect(m, wiring.flipped(self), self.dut)
        return m


def feed_rows(rng, lanes, rows, width, n):
    rows_out = []
    for _ in range(n):
        keys = [rng.randrange(1 << width) for _ in range(lanes)]
        rows_out.append((keys, rng.randrange(1 << lanes), rng.randrange(rows), rng.randrange(2)))
    return rows_out


@pytest.mark.parametrize("lanes,width,digit_bits", [(4, 8, 2), (1, 6, 3), (16, 16, 4),
                                                    (4, 4, 4)])
@pytest.mark.parametrize("output_pass", [0, 1])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.4)])
def test_feed(lanes, width, digit_bits, output_pass, gap, stall):
    seed = SEED + lanes + width + output_pass * 7 + int(gap * 10)
    print("seed", seed)
    rng = random.Random(seed)
    rows, index_width = 5, max(1, (5 * lanes - 1).bit_length())
    dut = Clocked(SurvivorFeed(key_width=width, digit_bits=digit_bits, lanes=lanes, rows=rows,
                               index_width=index_width))
    data = feed_rows(rng, lanes, rows, width, 30)
    if output_pass:
        source = {"kept": [{"keys": k, "keep": f, "row": r, "last": la}
                           for k, f, r, la in data]}
    else:
        source = {"candidates": [{"keys": k, "row": r, "last": la, "match": f, "greater": 0,
                                  "equal": 0} for k, f, r, la in data]}

    async def setup(ctx):
        ctx.set(dut.output_pass, output_pass)

    res = run_streams(dut, sources=source, sinks={"o": len(data)}, gap=gap, stall=stall,
                      rng=rng, setup=setup, quiet=4)
    mask = (1 << width) - 1
    want = []
    for keys, flags, row, last in data:
        if not output_pass and width > digit_bits:
            keys = [(k << digit_bits) & mask for k in keys]
        want.append({"data": [{"key": k, "index": row * lanes + j} for j, k in enumerate(keys)],
                     "keep": flags, "last": last})
    assert res["beats"]["o"] == want
    name = "kept" if output_pass else "candidates"
    if gap == stall == 0:
        assert res["seen"]["o"] == [t + FEED_LATENCY for t in res["accepted"][name]]


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: FixedDigitFilter(key_width=10, digit_bits=4, lanes=4), ValueError,
     "multiple of digit_bits"),
    (lambda: FixedDigitFilter(key_width=8, digit_bits=0, lanes=4), ValueError, "digit_bits"),
    (lambda: FixedDigitFilter(key_width=8, digit_bits=4, lanes=33), ValueError, "lanes"),
    (lambda: SurvivorFeed(key_width=8, digit_bits=4, lanes=3, rows=2, index_width=4),
     ValueError, "power of two"),
    (lambda: SurvivorFeed(key_width=8, digit_bits=4, lanes=4, rows=4, index_width=3),
     ValueError, "index_width must be at least 4"),
    (lambda: SurvivorFeed(key_width=0, digit_bits=4, lanes=4, rows=4, index_width=4),
     ValueError, "key_width must be at least 1"),
])
def test_bad_parameters(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()
