"""Statistical top-k threshold: golden model against float statistics and hand-worked edge cases;
RTL (`hw.topk.stat_threshold.StatThreshold`, Amaranth simulator) against the golden model, bit for
bit and cycle for cycle.

Seeds: ``SPATTEN_SEED`` in the environment overrides the fixed default; every seeded test prints it.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.sim import Simulator

from spatten.config import TopKConfig, preset, z_table
from spatten.golden.stat_threshold import (
    cycles,
    moments,
    stat_threshold,
    stat_threshold_from_values,
    widths,
)
from spatten.hw.topk.stat_threshold import StatThreshold

_z_table = lru_cache(maxsize=16)(z_table)
SEED = int(os.environ.get("SPATTEN_SEED", "20210301"))

CONFIGS = {
    "default": preset("default").topk,
    "small": preset("small").topk,
    # odd sizes: W = 8, a capacity that is no power of two, coarse z table
    "w8": TopKConfig(lanes=4, value_width=8, capacity=100, z_frac_bits=5, ratio_bits=5),
    # tiny: W = 3; |z| (up to 3.25) has more bits than z_frac_bits; capacity 63, just under
    # 2**count_width = 64, lets |num / 2**ZF| pass 2**count_width * 2**W (the divider's
    # overflow flag) when n is large and k = 1
    "tiny": TopKConfig(lanes=1, value_width=3, capacity=63, z_frac_bits=2, ratio_bits=10),
}


def _seed(name: str) -> int:
    seed = SEED + sum(map(ord, name))
    print(f"seed {seed} (SPATTEN_SEED={SEED})")
    return seed


# ---------------------------------------------------------------- golden model


def test_golden_against_float_statistics():
    """Normal data, n = 1024: the golden threshold is mean + z*sigma rounded up (z the table's
    quantised quantile), and about k values reach it."""
    cfg = preset("default").topk
    rng = np.random.default_rng(_seed("float"))
    ztab = z_table(cfg.ratio_bits, cfg.z_frac_bits)
    nd = NormalDist()
    for trial in range(5):
        sigma = rng.uniform(300, 4000)
        v = np.clip(np.round(rng.normal(rng.uniform(-3000, 3000), sigma, 1024)),
                    cfg.value_min, cfg.value_max).astype(np.int64)
        n = v.size
        for ratio in (0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9):
            k = round(ratio * n)
            st = stat_threshold_from_values(cfg, v, k)
            assert not st.select_all and not st.select_none
            mean, sd = float(v.mean()), float(v.std())  # population sigma, as n*sigma = sd
            z = ztab[(k << cfg.ratio_bits) // n] / (1 << cfg.z_frac_bits)
            # floor(n*sigma) moves z*sigma by less than |z|/n, ceil adds less than 1
            exact = mean + z * sd
            slack = abs(z) / n + 1e-6
            assert exact - slack <= st.threshold < exact + 1 + slack, (trial, k)
            count = int(np.count_nonzero(v >= st.threshold))
            assert abs(count - k) <= 0.15 * k, (trial, k, count)
            # and the unquantised float rule keeps about as many
            thr_f = mean + nd.inv_cdf(1 - k / n) * sd
            count_f = int(np.count_nonzero(v >= thr_f))
            assert abs(count - count_f) <= 0.1 * k, (trial, k, count, count_f)


def _fraction_reference(cfg, v, k):
    """The threshold from exact rationals: a second, independent writing of the definition."""
    n = len(v)
    mean = Fraction(sum(v), n)
    var_n2 = n * sum(x * x for x in v) - sum(v) ** 2  # n**2 * population variance
    sd = math.isqrt(var_n2)
    z = Fraction(z_table(cfg.ratio_bits, cfg.z_frac_bits)[k * 2 ** cfg.ratio_bits // n],
                 2 ** cfg.z_frac_bits)
    return min(max(math.ceil(mean + z * Fraction(sd, n)), cfg.value_min), cfg.value_max)


def test_golden_edge_cases():
    cfg = preset("default").topk
    C, lo, hi = cfg.capacity, cfg.value_min, cfg.value_max
    # n = 1: only k = 0 and k = 1 exist
    for x in (lo, -1, 0, 5, hi):
        r0 = stat_threshold_from_values(cfg, [x], 0)
        assert (r0.threshold, r0.select_all, r0.select_none) == (hi, False, True)
        r1 = stat_threshold_from_values(cfg, [x], 1)
        assert (r1.threshold, r1.select_all, r1.select_none) == (lo, True, False)
    # k = 0 and k = n on any data
    v = list(range(-50, 50))
    r0, rn = stat_threshold_from_values(cfg, v, 0), stat_threshold_from_values(cfg, v, 100)
    assert (r0.threshold, r0.select_all, r0.select_none) == (hi, False, True)
    assert (rn.threshold, rn.select_all, rn.select_none) == (lo, True, False)
    # all values equal: sigma = 0, the threshold is the value itself (every value kept)
    for x in (lo, -7, 0, 1, hi):
        for n in (2, 3, C):
            for k in (1, n // 2 or 1, n - 1):
                st = stat_threshold_from_values(cfg, [x] * n, k)
                assert st.threshold == x and not st.select_all and not st.select_none, (x, n, k)
    # half value_min, half value_max, n = capacity: sigma = (2**W - 1) / 2, mean = -1/2
    v = [lo] * (C // 2) + [hi] * (C // 2)
    n, s1, s2 = moments(cfg, v)
    assert (s1, s2) == (-C // 2, (C // 2) * (lo * lo + hi * hi))
    assert stat_threshold(cfg, n, 1, s1, s2).threshold == hi         # +2.4 sigma: saturates
    assert stat_threshold(cfg, n, n - 1, s1, s2).threshold == lo     # -2.4 sigma: saturates
    z_mid = z_table(cfg.ratio_bits, cfg.z_frac_bits)[1 << (cfg.ratio_bits - 1)]
    assert z_mid < 0
    # k = n/2: r = 2**(RB-1); thr = ceil((-C/2 * 2**ZF + z * C * (2**W-1)/2) / (C 2**ZF))
    sd = C * (2 ** cfg.value_width - 1) // 2
    assert sd == math.isqrt(n * s2 - s1 * s1)
    expect = -((-(s1 * 2 ** cfg.z_frac_bits + z_mid * sd)) // (C * 2 ** cfg.z_frac_bits))
    assert stat_threshold(cfg, n, C // 2, s1, s2).threshold == expect == _fraction_reference(
        cfg, v, C // 2)
    # all at one extreme, n = capacity
    assert stat_threshold_from_values(cfg, [lo] * C, 1).threshold == lo
    assert stat_threshold_from_values(cfg, [hi] * C, C - 1).threshold == hi
    # k = 1 keeps the top of a spread-out set; worked by hand: v = 0..9, n = 10, k = 1
    # r = floor(64/10) = 6, z = Z[6] = round(Phi^-1(1 - 6.5/64) * 256) = 326,
    # var = 10*285 - 45**2 = 825, sd = 28, num = 45*256 + 326*28 = 20648, thr = ceil(8.07) = 9
    assert z_table(6, 8)[6] == 326
    assert stat_threshold_from_values(cfg, list(range(10)), 1).threshold == 9
    # fraction reference over random small sets, every k
    rng = np.random.default_rng(_seed("fraction"))
    for _ in range(200):
        n = int(rng.integers(1, 40))
        v = [int(x) for x in rng.integers(lo, hi + 1, n)]
        for k in range(1, n):
            assert stat_threshold_from_values(cfg, v, k).threshold == _fraction_reference(
                cfg, v, k)


def test_golden_rejects_bad_input():
    cfg = preset("small").topk
    with pytest.raises(ValueError):
        stat_threshold(cfg, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        stat_threshold(cfg, cfg.capacity + 1, 1, 0, 0)
    with pytest.raises(ValueError):
        stat_threshold(cfg, 4, 5, 0, 0)
    with pytest.raises(ValueError):
        stat_threshold(cfg, 4, 1, 4 * cfg.value_max + 1, 0)
    with pytest.raises(ValueError):
        stat_threshold(cfg, 4, 1, 4, 3)          # n*S2 < S1**2
    with pytest.raises(ValueError):
        stat_threshold_from_values(cfg, [cfg.value_max + 1], 1)
    with pytest.raises(TypeError):
        stat_threshold(cfg, 4.0, 1, 0, 0)


def test_cycles_formula():
    for name, cfg in CONFIGS.items():
        w = widths(cfg)
        assert cycles(cfg) == cycles(cfg, 7, 3), name
        assert cycles(cfg) == (3 + cfg.ratio_bits + cfg.count_width + w.s1 + w.sqrt_steps
                               + w.z_steps + cfg.value_width)
    assert (cycles(preset("default").topk), cycles(preset("small").topk)) == (97, 79)


# ---------------------------------------------------------------- RTL against golden


def _edge_cases(cfg):
    """(values, k) lists: n = 1, equal values, extremes, half and half, k = 0, 1, n-1, n."""
    C, lo, hi = cfg.capacity, cfg.value_min, cfg.value_max
    out = [([lo], 0), ([hi], 1), ([0], 1), ([0], 0)]
    for vals in ([lo] * C, [hi] * C, [lo] * (C // 2) + [hi] * (C - C // 2),
                 [lo, hi] * (C // 2) + [hi] * (C % 2), [3 % (hi + 1)] * C,
                 list(np.resize(np.arange(lo, hi + 1), C))):
        n = len(vals)
        for k in sorted({0, 1, n // 2, n - 1, n}):
            out.append((vals, k))
    for n in (2, 3):
        for vals in ([lo] * n, [hi] * n, [lo] + [hi] * (n - 1), [hi] + [lo] * (n - 1)):
            for k in range(n + 1):
                out.append((vals, k))
    return out


def _random_cases(cfg, rng, count):
    C, lo, hi = cfg.capacity, cfg.value_min, cfg.value_max
    out = []
    for _ in range(count):
        n = int(rng.choice([1, 2, C, int(rng.integers(1, C + 1))]))
        kind = int(rng.integers(0, 5))
        if kind == 0:      # normal, random centre and spread
            v = rng.normal(rng.uniform(lo, hi), rng.uniform(0.5, hi - lo) / 4, n)
        elif kind == 1:    # uniform over the whole range
            v = rng.integers(lo, hi + 1, n)
        elif kind == 2:    # extremes only
            v = rng.choice([lo, hi], n)
        elif kind == 3:    # nearly constant
            v = rng.integers(lo, hi + 1) + rng.integers(-1, 2, n)
        else:              # skewed: exponential tail
            v = lo + rng.exponential(rng.uniform(1, hi - lo), n)
        v = np.clip(np.round(v), lo, hi).astype(np.int64)
        k = int(rng.choice([0, 1, n - 1, n, int(rng.integers(0, n + 1))]))
        out.append((v, max(0, k)))
    return out


def _run_rtl(cfg, cases, extra=None):
    """Run every (values, k) through one simulated StatThreshold; return [(result, cycles)].
    `extra(ctx, dut, cd)` runs after the cases (protocol checks)."""
    dut = StatThreshold(cfg)
    assert dut.latency == cycles(cfg)
    gw = widths(cfg)
    assert (len(dut.s1), len(dut.s2), len(dut.n), len(dut.threshold)) == (
        gw.s1, gw.s2, cfg.count_width, cfg.value_width)
    assert (dut.widths["K"], dut.widths["L"], dut.widths["sd"]) == (
        gw.sqrt_steps, gw.z_steps, gw.sd)
    top = Module()
    top.domains.sync = cd = ClockDomain()
    top.submodules.dut = dut
    results = []

    async def bench(ctx):
        for vals, k in cases:
            n, s1, s2 = moments(cfg, vals)
            ctx.set(dut.n, n)
            ctx.set(dut.k, k)
            ctx.set(dut.s1, s1)
            ctx.set(dut.s2, s2)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            assert ctx.get(dut.busy)
            t = 1
            while not ctx.get(dut.done):
                await ctx.tick()
                t += 1
                assert t < 10 * dut.latency, "no done"
            assert not ctx.get(dut.busy)
            results.append(((ctx.get(dut.threshold), bool(ctx.get(dut.select_all)),
                             bool(ctx.get(dut.select_none))), t))
        if extra is not None:
            await extra(ctx, dut, cd)

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


RTL_CASES = {"default": 250, "small": 300, "w8": 300, "tiny": 300}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rtl_matches_golden(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(_seed("rtl-" + name))
    _check_rtl(name, cfg, _edge_cases(cfg) + _random_cases(cfg, rng, RTL_CASES[name]))


def _internals(cfg, n, k, s1, s2):
    """(unsaturated threshold, divider overflows) for 0 < k < n: the corners the RTL must get
    right. The divider sees u = p or ~p, p = floor(-num / 2**ZF); it overflows past CW+W bits."""
    ZF, RB = cfg.z_frac_bits, cfg.ratio_bits
    num = (s1 << ZF) + _z_table(RB, ZF)[(k << RB) // n] * math.isqrt(n * s2 - s1 * s1)
    p = (-num) >> ZF
    u = p if p >= 0 else ~p
    return -((-num) // (n << ZF)), u >= 1 << (cfg.count_width + cfg.value_width)


def _corner_kind(cfg, n, k, s1, s2):
    if not 0 < k < n:
        return None
    thr, big = _internals(cfg, n, k, s1, s2)
    if big:
        return "overflow"
    lo, hi = cfg.value_min, cfg.value_max
    return {lo - 1: "min-1", lo: "min", hi: "max", hi + 1: "max+1"}.get(thr)


def _check_rtl(name, cfg, cases):
    results = _run_rtl(cfg, cases)
    assert len(results) == len(cases)
    for (vals, k), (got, t) in zip(cases, results, strict=True):
        g = stat_threshold_from_values(cfg, vals, k)
        n, s1, s2 = moments(cfg, vals)
        where = f"{name}: n={n} k={k} s1={s1} s2={s2}"
        assert got == (g.threshold, g.select_all, g.select_none), where
        assert t == cycles(cfg), where


def test_rtl_tiny_exhaustive_and_corners():
    """Tiny config: every multiset of up to 3 values with every k; then sets of two levels
    (every n, every split, k near 0 and near n) that land on a corner: saturation boundaries
    and divider overflow, up to 25 of each."""
    from itertools import combinations_with_replacement

    cfg = CONFIGS["tiny"]
    lo, hi = cfg.value_min, cfg.value_max
    vals = range(lo, hi + 1)
    cases = [(list(c), k) for n in (1, 2, 3) for c in combinations_with_replacement(vals, n)
             for k in range(n + 1)]
    corners = {}
    for a, b in sorted({(lo, x) for x in vals[1:]} | {(x, hi) for x in vals[:-1]}):
        for n in range(4, cfg.capacity + 1):
            for na in range(n + 1):
                s1, s2 = na * a + (n - na) * b, na * a * a + (n - na) * b * b
                for k in (1, 2, n - 2, n - 1):
                    kind = _corner_kind(cfg, n, k, s1, s2)
                    if kind is not None and len(corners.setdefault(kind, [])) < 25:
                        corners[kind].append(([a] * na + [b] * (n - na), k))
    assert set(corners) == {"overflow", "min-1", "min", "max", "max+1"}, set(corners)
    cases += [x for v in corners.values() for x in v]
    _check_rtl("tiny", cfg, cases)


def test_rtl_saturation_corners_w8():
    """W = 8: random sets searched for thresholds at value_min - 1, value_min, value_max and
    value_max + 1 before saturation, and every n from 1 to capacity once."""
    cfg = CONFIGS["w8"]
    rng = np.random.default_rng(_seed("w8-corners"))
    corners = {}
    for _ in range(20000):
        (v, k), = _random_cases(cfg, rng, 1)
        n, s1, s2 = moments(cfg, v)
        kind = _corner_kind(cfg, n, k, s1, s2)
        if kind is not None and len(corners.setdefault(kind, [])) < 6:
            corners[kind].append((v, k))
    assert {"min-1", "min", "max", "max+1"} <= set(corners), set(corners)
    cases = [x for c in corners.values() for x in c]
    for n in range(1, cfg.capacity + 1):
        v = rng.integers(cfg.value_min, cfg.value_max + 1, n)
        cases.append((v, int(rng.integers(0, n + 1))))
    _check_rtl("w8", cfg, cases)


def test_rtl_protocol():
    """start while busy is ignored; outputs hold between runs; reset mid-run returns to idle."""
    cfg = CONFIGS["w8"]
    a = ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 3)
    b = ([-100, 100, 0, 5], 1)
    ga, gb = (stat_threshold_from_values(cfg, *x) for x in (a, b))
    assert ga.threshold != gb.threshold

    async def load(ctx, dut, case):
        n, s1, s2 = moments(cfg, case[0])
        ctx.set(dut.n, n)
        ctx.set(dut.k, case[1])
        ctx.set(dut.s1, s1)
        ctx.set(dut.s2, s2)

    async def extra(ctx, dut, cd):
        # after the last case: outputs hold for a while with start low
        thr = ctx.get(dut.threshold)
        await ctx.tick().repeat(5)
        assert ctx.get(dut.threshold) == thr and not ctx.get(dut.done)
        # run a, poke b's inputs with start high in the middle: ignored
        await load(ctx, dut, a)
        ctx.set(dut.start, 1)
        await ctx.tick()
        await load(ctx, dut, b)
        t = 1
        while not ctx.get(dut.done):
            await ctx.tick()
            t += 1
        assert t == dut.latency
        assert ctx.get(dut.threshold) == ga.threshold
        # ... but start, still high in the done cycle, is accepted there: b runs now
        await ctx.tick()
        ctx.set(dut.start, 0)
        assert ctx.get(dut.busy) and ctx.get(dut.threshold) == ga.threshold
        await ctx.tick().until(dut.done)
        assert ctx.get(dut.threshold) == gb.threshold
        # reset in the middle of a run
        await load(ctx, dut, a)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().repeat(20)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        assert not ctx.get(dut.busy) and not ctx.get(dut.done)
        assert ctx.get(dut.threshold) == 0
        await ctx.tick().repeat(dut.latency)
        assert not ctx.get(dut.done)
        # and it works afterwards
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        assert ctx.get(dut.threshold) == ga.threshold

    _run_rtl(cfg, [b], extra)


def test_rtl_rejects_bad_config():
    with pytest.raises(TypeError):
        StatThreshold(preset("small"))
