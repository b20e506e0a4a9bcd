# amaranth: UnusedElaboratable=no
"""The moments of the top-k engine's statistical mode (`hw/topk/radix_moments.py`) in the Amaranth
simulator: the sum and the sum of squares of random beats with gaps, exactly ``latency`` cycles
after each beat, in every cycle; lanes not ok count as zero; extreme values at full capacity; a
second run after ``clear``; one lane; bad parameters. Set SPATTEN_SEED to change the seed."""

import os
import random

import pytest
from amaranth.sim import Simulator

from spatten.hw.topk.radix_moments import Moments

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def run_moments(lanes, width, capacity, runs, *, seed, gap=0.3):
    """Streams `runs` (lists of (values, lane_ok) beats), ``clear`` with each run's first beat,
    random idle cycles between beats; checks s1 and s2 in every cycle. Returns the final sums
    of each run."""
    rng = random.Random(seed)
    dut = Moments(lanes=lanes, value_width=width, capacity=capacity)
    taken = []                                  # (cycle, s1 part, s2 part) of this run's beats
    finals = []

    def expected(cycle, clear_at):
        if clear_at is None or cycle < clear_at + 2:    # reset, or not cleared yet
            return None if clear_at is not None else (0, 0)
        done = [(a, b) for t, a, b in taken if t + dut.latency <= cycle]
        return sum(a for a, _ in done), sum(b for _, b in done)

    async def bench(ctx):
        cycle, clear_at = 0, None

        async def tick():
            nonlocal cycle
            await ctx.tick()
            cycle += 1
            want = expected(cycle, clear_at)
            if want is not None:
                assert (ctx.get(dut.s1), ctx.get(dut.s2)) == want, (cycle, clear_at)

        for run in runs:
            for idx, (values, ok) in enumerate(run):
                while rng.random() < gap:
                    ctx.set(dut.i.valid, 0)
                    await tick()
                assert ctx.get(dut.i.ready) == 1
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"values": values, "lane_ok": ok})
                if idx == 0:
                    ctx.set(dut.clear, 1)
                    clear_at = cycle
                    taken.clear()
                kept = [v for j, v in enumerate(values) if ok >> j & 1]
                taken.append((cycle, sum(kept), sum(v * v for v in kept)))
                await tick()
                ctx.set(dut.clear, 0)
            ctx.set(dut.i.valid, 0)
            for _ in range(dut.latency + 2):
                await tick()
            finals.append((ctx.get(dut.s1), ctx.get(dut.s2)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return finals


def random_run(rng, lanes, width, beats):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [([rng.randrange(lo, hi + 1) for _ in range(lanes)],
             rng.choice([(1 << lanes) - 1, rng.randrange(1 << lanes), 0])) for _ in range(beats)]


@pytest.mark.parametrize("lanes,width", [(4, 12), (1, 6), (16, 16), (2, 2)])
def test_sums_exact_latency(lanes, width):
    seed = SEED + lanes * 5 + width
    print("seed", seed)
    rng = random.Random(seed)
    runs = [random_run(rng, lanes, width, rng.randrange(1, 12)) for _ in range(4)]
    finals = run_moments(lanes, width, 64 * lanes, runs, seed=seed)
    for run, (s1, s2) in zip(runs, finals, strict=True):
        kept = [v for values, ok in run for j, v in enumerate(values) if ok >> j & 1]
        assert (s1, s2) == (sum(kept), sum(v * v for v in kept))
    assert Moments(lanes=lanes, value_width=width, capacity=8).latency == \
        (lanes - 1).bit_length() + 3


@pytest.mark.parametrize("lanes,width", [(4, 8), (1, 5)])
def test_extremes_at_capacity(lanes, width):
    """capacity values all at value_min (the largest S2, the most negative S1), then all at
    value_max: the sums' widths hold them."""
    capacity = 8 * lanes
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    full = (1 << lanes) - 1
    runs = [[([lo] * lanes, full)] * 8, [([hi] * lanes, full)] * 8]
    finals = run_moments(lanes, width, capacity, runs, seed=SEED, gap=0.0)
    assert finals == [(capacity * lo, capacity * lo * lo), (capacity * hi, capacity * hi * hi)]


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"lanes": 3, "value_width": 8, "capacity": 8}, ValueError, "power of two"),
    ({"lanes": 4, "value_width": 1, "capacity": 8}, ValueError, "value_width must be from 2"),
    ({"lanes": 4, "value_width": 8, "capacity": 0}, ValueError, "capacity must be at least 1"),
    ({"lanes": 4, "value_width": "8", "capacity": 8}, TypeError, "value_width must be an int"),
])
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        Moments(**kwargs)


# --------------------------------------------------------------------------- StatisticalMode


@pytest.mark.parametrize("lanes,width,capacity", [(4, 8, 32), (1, 6, 12), (8, 12, 64)])
def test_statistical_mode(lanes, width, capacity):
    """Runs of random values and k (k = 0, k = n, all values equal among them): `done` exactly
    `latency` cycles after `start` (given with the last beat), the threshold and the
    select_all/select_none flags as the golden model computes them."""
    import numpy as np

    from spatten.config import TopKConfig
    from spatten.golden.stat_threshold import stat_threshold_from_values
    from spatten.hw.topk.radix_moments import StatisticalMode

    seed = SEED + lanes + width
    print("seed", seed)
    rng = random.Random(seed)
    cfg = TopKConfig(lanes=lanes, value_width=width, capacity=capacity)
    dut = StatisticalMode(config=cfg)
    lo, hi = cfg.value_min, cfg.value_max
    runs = []
    for case in ["random", "equal", "k0", "kn", "random", "one"]:
        n = 1 if case == "one" else rng.randrange(2, capacity + 1)
        values = [rng.randrange(lo, hi + 1)] * n if case == "equal" else \
            [rng.randrange(lo, hi + 1) for _ in range(n)]
        k = {"k0": 0, "kn": n}.get(case, rng.randrange(1, n + 1))
        runs.append((values, k))
    got = []

    async def bench(ctx):
        for values, k in runs:
            beats = [values[i:i + lanes] for i in range(0, len(values), lanes)]
            ctx.set(dut.n, len(values))
            ctx.set(dut.k, k)
            for idx, b in enumerate(beats):
                while rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"values": b + [0] * (lanes - len(b)),
                                        "lane_ok": (1 << len(b)) - 1})
                ctx.set(dut.clear, int(idx == 0))
                ctx.set(dut.start, int(idx == len(beats) - 1))
                await ctx.tick()
                ctx.set(dut.clear, 0)
                ctx.set(dut.start, 0)
            ctx.set(dut.i.valid, 0)
            for t in range(1, dut.latency + 5):
                if ctx.get(dut.done):
                    got.append((t, ctx.get(dut.threshold), ctx.get(dut.select_all),
                                ctx.get(dut.select_none)))
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = []
    for values, k in runs:
        st = stat_threshold_from_values(cfg, np.array(values), k)
        want.append((dut.latency, st.threshold, int(st.select_all), int(st.select_none)))
    assert got == want


def test_statistical_mode_bad_config():
    from spatten.hw.topk.radix_moments import StatisticalMode
    with pytest.raises(TypeError, match="config must be a TopKConfig"):
        StatisticalMode(config={"lanes": 4})
