# amaranth: UnusedElaboratable=no
"""The renormalisation lane of prob x V (`hw/attention/pv_lane.py`) with its multipliers (as `ProbV`
gives them): queries of every d with random kept probabilities and V rows (extremes, zero
sums, the narrow accumulators of the pipeline), started back to back and after gaps; every
column's result bit for bit `golden.attention.pv(renorm=True)`, exactly `pv_lane_depth` cycles
after its read, in order; busy, reading and the columns left. Set SPATTEN_SEED to fix the
seed."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.golden.attention import pv
from spatten.hw.attention.pv_lane import RenormLane
from spatten.sim.infra.testbench import pick_seed

CONFIGS = {
    "small": (AttentionConfig(pv_mults=16, qk_mults=16, capacity=64), None),
    "default": (AttentionConfig(), None),
    "default-p17": (AttentionConfig(), 17),
    "w8-f8": (AttentionConfig(pv_mults=16, qk_mults=16, capacity=32, data_width=8,
                              out_frac_bits=8), None),
    "mv8-f0": (AttentionConfig(pv_mults=8, qk_mults=8, capacity=32, softmax_lanes=8,
                               out_frac_bits=0), None),
}


class LaneWithMultipliers(RenormLane):
    """`RenormLane` with its partial-product multipliers, as `hw.attention.pv.ProbV` has them."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        self.add_multipliers(m)
        return m


def reciprocal(cfg, psum: int) -> tuple[int, int]:
    """(recip, leading zeros) of `hw.common.recip.Reciprocal` as prob x V uses it."""
    PW, PB = cfg.psum_width, cfg.prob_bits
    lz = PW - psum.bit_length()
    m = (psum << lz) >> (PW - PB)
    return ((((1 << (2 * PB)) // m) + 1) >> 1 if m else 0), lz


def make_queries(cfg, p_sum_bits, rng: np.random.Generator, count: int) -> list[dict]:
    queries = []
    lo, hi = cfg.data_min, cfg.data_max
    top = (1 << (p_sum_bits or cfg.psum_width)) - 1
    for k in range(count):
        d = int(rng.choice(cfg.head_dims))
        n = int(rng.integers(1, cfg.capacity + 1))
        kind = k % 5
        p = rng.integers(0, 65536, n)
        if kind == 1:
            p = np.full(n, 65535)
        elif kind == 2:
            p = np.zeros(n, dtype=np.int64)
        elif kind == 3:
            p = rng.integers(0, 4, n)
        while p.sum() > top:
            p = p // 2
        v = rng.integers(lo, hi + 1, (n, d))
        if kind == 1:
            v = np.full((n, d), lo if k % 2 else hi)
        g = pv(cfg, p, v, renorm=True)
        queries.append({"d": d, "acc": [int(x) for x in g.acc], "psum": int(g.psum),
                        "out": [int(x) for x in g.out]})
    return queries


@pytest.mark.parametrize("name", list(CONFIGS))
def test_columns(name):
    cfg, p_sum_bits = CONFIGS[name]
    seed = pick_seed()
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    dut = LaneWithMultipliers(config=cfg, p_sum_bits=p_sum_bits)
    sizes, Mv, depth = dut.sizes, cfg.pv_mults, cfg.pv_lane_depth
    queries = make_queries(cfg, p_sum_bits, rng, 30)
    junk = 1 << (sizes.sum_width - 2)
    results, starts = [], []

    async def bench(ctx):
        k, cycle, reads_left, wait = 0, 0, 0, None
        while len(results) < sum(q["d"] for q in queries):
            assert cycle < 200 * len(queries) + 1000, "the lane stopped"
            busy = ctx.get(dut.busy)
            if not busy and wait is None:        # idle: the next query after a random gap
                wait = prng.choice([0, 0, 0, 1, 5])
            start = k < len(queries) and not busy and wait == 0
            ctx.set(dut.start, start)
            if not busy and wait:
                wait -= 1
            if start:
                q = queries[k]
                recip, lz = reciprocal(cfg, q["psum"])
                columns = [q["acc"][j] + sizes.rounding if j < q["d"] else
                           prng.randrange(-junk, junk) for j in range(Mv)]
                ctx.set(dut.columns, columns)
                ctx.set(dut.last_column, q["d"] - 1)
                ctx.set(dut.psum, q["psum"])
                ctx.set(dut.recip, recip)
                ctx.set(dut.leading_zeros, lz)
                starts.append(cycle)
                reads_left = q["d"]
                k += 1
                wait = None
            elif reads_left:
                assert ctx.get(dut.reading) and ctx.get(dut.columns_left) == reads_left - 1
                reads_left -= 1
            else:
                assert not ctx.get(dut.reading)
            if ctx.get(dut.result_valid):
                results.append((cycle, ctx.get(dut.result), ctx.get(dut.result_last),
                                ctx.get(dut.result_psum)))
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    at = 0
    for q, t in zip(queries, starts, strict=True):
        for j in range(q["d"]):
            cycle, value, last, psum = results[at]
            assert cycle == t + 1 + j + depth, f"column {j}: cycle {cycle}, started at {t}"
            assert value == q["out"][j], f"column {j} of d = {q['d']}: {value} != {q['out'][j]}"
            assert last == (j == q["d"] - 1) and psum == q["psum"]
            at += 1


def test_structure():
    cfg = AttentionConfig()
    lane = RenormLane(config=cfg)
    assert lane.mux_levels + 4 == cfg.pv_lane_depth == 7
    assert [w for _, w in lane.chunks] == [17, 17, 4]           # acc_width 38


def test_bad_parameters():
    with pytest.raises(TypeError, match="AttentionConfig"):
        RenormLane(config="default")
    with pytest.raises(ValueError, match="p_sum_bits"):
        RenormLane(config=AttentionConfig(), p_sum_bits=True)
