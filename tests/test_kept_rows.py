"""The V rows a final pass still needs (hw/memory/kept_rows.py) in the Amaranth simulator: for each
query's kept positions, the runs of the tokens of those not yet resident (coalesced, at their
positions), each position fetched once per job (a prefetch mark counts, a clear forgets the
job's half), ``done`` once per query after its runs; a beat whose positions are all resident is
taken at once (`RESIDENT_CHECK_LATENCY`); under random gaps on ``kept`` and backpressure on
``runs``."""

import os
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from spatten.config import AttentionConfig, Config
from spatten.golden.dram_image import coalesce
from spatten.hw.memory.kept_rows import RESIDENT_CHECK_LATENCY, KeptRows
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8))
N, S = CFG.attention.capacity, CFG.attention.softmax_lanes


class Harness(wiring.Component):
    """`KeptRows` on an index buffer holding ``index``."""

    def __init__(self, index):
        self.index = index
        self.rows = KeptRows(config=CFG)
        super().__init__({name: member for name, member in self.rows.signature.members.items()
                          if name not in ("rd_addr", "rd_data")})

    def elaborate(self, platform):
        m = Module()
        m.submodules.rows = rows = self.rows
        m.submodules.index = index = Memory(shape=16, depth=N, init=self.index)
        port = index.read_port()
        m.d.comb += [port.addr.eq(rows.rd_addr), rows.rd_data.eq(port.data)]
        for name, member in self.signature.members.items():
            if member.is_port:
                mine, theirs = getattr(self, name), getattr(rows, name)
                m.d.comb += theirs.eq(mine) if member.flow == In else mine.eq(theirs)
        wiring.connect(m, wiring.flipped(self.kept), rows.kept)
        wiring.connect(m, rows.runs, wiring.flipped(self.runs))
        return m


def beats_of(positions):
    """A query's kept positions as beats of S lanes."""
    out = []
    for i in range(0, max(1, len(positions)), S):
        lanes = positions[i:i + S]
        out.append({"data": lanes + [0] * (S - len(lanes)), "count": len(lanes),
                    "last": int(i + S >= len(positions))})
    return out


def expected_runs(index, first, queries, resident):
    runs = []
    for positions in queries:
        missing = [p for p in positions if p not in resident]
        resident |= set(missing)
        by_token = {index[first + p]: p for p in missing}
        runs += [{"start": t, "count": c, "dst": by_token[t]}
                 for t, c in coalesce(sorted(by_token))]
    return runs


def simulate(index, first, queries, *, gap=0.0, stall=0.0, seed=0, marks=(), clear=None,
             runs=None):
    dut = Harness(index)
    beats = [b for q in queries for b in beats_of(q)]
    log = {"done": 0}

    async def setup(ctx):
        ctx.set(dut.first, first)
        for p in marks:
            ctx.set(dut.mark, 1)
            ctx.set(dut.mark_position, first + p)
            await ctx.tick()
        ctx.set(dut.mark, 0)
        if clear is not None:
            ctx.set(dut.clear, 1)
            ctx.set(dut.clear_banks, clear)
            await ctx.tick()
            ctx.set(dut.clear, 0)

    def watch(ctx, cycle):
        log["done"] += ctx.get(dut.done)

    if runs is None:
        runs = len(expected_runs(index, first, queries, set(marks)))
    res = run_streams(dut, sources={"kept": beats}, sinks={"runs": runs},
                      gap=gap, stall=stall, seed=seed, setup=setup, watch=watch, quiet=12)
    return res, log


@pytest.mark.parametrize("first,gap,stall", [(0, 0.0, 0.0), (N // 2, 0.4, 0.4), (0, 0.2, 0.7)])
def test_missing_rows_once(first, gap, stall):
    seed = SEED + first + int(10 * gap)
    print("seed", seed)
    rng = random.Random(seed)
    index = sorted(rng.sample(range(100), N))
    queries = [sorted(rng.sample(range(N // 2), rng.randrange(1, 13))) for _ in range(5)]
    marks = sorted(rng.sample(range(N // 2), 6))
    res, log = simulate(index, first, queries, gap=gap, stall=stall, seed=seed, marks=marks)
    assert res["beats"]["runs"] == expected_runs(index, first, queries, set(marks))
    assert log["done"] == len(queries)


def test_resident_beats_pass_at_once():
    index = list(range(0, 2 * N, 2))
    queries = [[1, 2, 3, 5, 8], [1, 2, 3, 5, 8]]     # the second: every row resident
    res, log = simulate(index, 0, queries)
    accepted = res["accepted"]["kept"]
    second = accepted[len(beats_of(queries[0])):]
    presented = [accepted[len(beats_of(queries[0])) - 1] + 1]
    assert log["done"] == 2 and len(second) == 2
    # the second query's first beat waits for the first query's done; then one beat a cycle
    assert second[1] - second[0] == 1 + RESIDENT_CHECK_LATENCY and second[0] > presented[0]


def test_clear_forgets_a_half():
    """Rows 0..2 marked: nothing to fetch; the lower half cleared after the marks: all three
    fetched again; the upper half cleared: the lower marks stay."""
    index = list(range(N))
    queries = [[0, 1, 2]]
    res, log = simulate(index, 0, queries, marks=[0, 1, 2], runs=0)
    assert res["beats"]["runs"] == [] and log["done"] == 1
    res, log = simulate(index, 0, queries, marks=[0, 1, 2], clear=0b01, runs=1)
    assert res["beats"]["runs"] == [{"start": 0, "count": 3, "dst": 0}] and log["done"] == 1
    res, log = simulate(index, 0, queries, marks=[0, 1, 2], clear=0b10, runs=0)
    assert res["beats"]["runs"] == [] and log["done"] == 1


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config"):
        KeptRows(config=None)
