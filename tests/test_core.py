"""The memory side (hw/memory/core.py: fetch unit + query pipeline) behind the DRAM model, in cocotb
on Verilator, against `golden.progressive.run_group`: outputs, pass order, row beats, probabilities
and the DRAM bytes of every tensor, for index lists single/contiguous/sparse/full, tau off, 0, a
middle value and 1, value pruning, grouped-query attention (3 query heads a K/V head), DRAM
latency, bandwidth limits and stalls, stream gaps and backpressure, and bad jobs. Both K splits
(8 + 4 and 6 + 6) are built."""

import os

import pytest

from spatten.config import AttentionConfig, Config, MemoryConfig
from spatten.sim.infra.runner import simulator_missing
from spatten.sim.testbenches.core_run import core_selftest

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
ATT = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)


@pytest.mark.xdist_group("core")
@pytest.mark.parametrize("msb_bits", [8, 6])
def test_core_rtl(msb_bits):
    missing = simulator_missing("verilator")
    if missing:
        pytest.skip(missing)
    print("seed", SEED)
    cfg = Config(attention=ATT, memory=MemoryConfig(msb_bits=msb_bits, group_size=3))
    res = core_selftest(cfg, seed=SEED)
    print(res.summary())
    assert res.ok and res.passed == 4
