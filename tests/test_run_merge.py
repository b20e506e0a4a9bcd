"""The V reader's run merge (hw/memory/run_merge.py) in the Amaranth simulator, with a model reader
that finishes each run a few cycles after taking it: every run of both sources reaches the reader
once, in each source's order, with its own plane and half; demand runs go first when both are
offered; ``write_upper`` is the half of the run being finished and the in-flight flags count each
source's runs in the reader; under random gaps and backpressure (`RUNS_IN_FLIGHT` bounds them)."""

import os
import random

import pytest

from spatten.config import AttentionConfig, Config
from spatten.hw.memory.run_merge import RUNS_IN_FLIGHT, RunMerge
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8))


@pytest.mark.parametrize("gap,stall,finish", [(0.0, 0.0, 1), (0.4, 0.3, 3), (0.1, 0.7, 12)])
def test_runs_merge_in_order(gap, stall, finish):
    seed = SEED + int(100 * gap) + finish
    print("seed", seed)
    rng = random.Random(seed)
    dut = RunMerge(config=CFG)
    demand = [{"start": rng.randrange(100), "count": rng.randrange(1, 9), "dst": i}
              for i in range(12)]
    prefetch = [{"start": 200 + i, "count": rng.randrange(1, 9), "dst": 30 + i}
                for i in range(12)]
    in_reader = []                  # (source, upper) of the runs taken, in order
    done_at = []                    # the cycles the model reader finishes them
    finished = []

    def watch(ctx, cycle):
        # the flags count the runs in the reader as of the last edge
        assert ctx.get(dut.demand_in_flight) == any(src == "demand" for src, _ in in_reader)
        assert ctx.get(dut.prefetch_in_flight) == any(src == "prefetch" for src, _ in in_reader)
        assert len(in_reader) <= RUNS_IN_FLIGHT
        ctx.set(dut.done, bool(done_at) and done_at[0] <= cycle)
        if ctx.get(dut.done):
            done_at.pop(0)
            finished.append((ctx.get(dut.write_upper), in_reader.pop(0)[1]))
        if ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready):
            source = "prefetch" if ctx.get(dut.base) == 0x9000 else "demand"
            assert ctx.get(dut.d_log2) == (5 if source == "prefetch" else 4)
            in_reader.append((source, 1 if source == "demand" else 0))
            done_at.append(max([cycle + finish] + done_at[-1:]) + 1)

    async def setup(ctx):
        for name, value in (("demand_base", 0x5000), ("demand_d_log2", 4), ("demand_upper", 1),
                            ("prefetch_base", 0x9000), ("prefetch_d_log2", 5),
                            ("prefetch_upper", 0)):
            ctx.set(getattr(dut, name), value)

    res = run_streams(dut, sources={"demand": demand, "prefetch": prefetch},
                      sinks={"cmd": len(demand) + len(prefetch)}, gap=gap, stall=stall,
                      seed=seed, setup=setup, watch=watch, quiet=4 * finish + 8)
    got = res["beats"]["cmd"]
    assert [r for r in got if r["start"] < 200] == demand
    assert [r for r in got if r["start"] >= 200] == prefetch
    assert finished and all(upper == want for upper, want in finished)
    if gap == stall == 0.0:
        assert [r["start"] < 200 for r in got[:len(demand)]] == [True] * len(demand)


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config"):
        RunMerge(config=CFG.memory)
