"""The top-k engine's RTL against its golden model, in cocotb on Verilator and Icarus.

Each parametrization builds the engine for one configuration and runs every self-checking test
of `sim/tb_topk.py`: edge cases and seeded random inputs with exact cycle counts, the same under
random input gaps and output backpressure, the statistical mode, every error case followed by a
good run, and resets in each phase of a run. Set SPATTEN_SEED to change the seed.
"""

import os

import pytest

from spatten.config import TopKConfig, preset
from spatten.sim.infra.runner import simulator_missing
from spatten.sim.testbenches.tb_topk import topk_selftest

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))

CONFIGS = {
    "default": preset("default").topk,                      # P=16, W=16, n_max=1024
    "small": preset("small").topk,                          # P=4,  W=12, n_max=256
    "p16w8": TopKConfig(lanes=16, value_width=8, capacity=256),
    "p4w16": TopKConfig(lanes=4, value_width=16, capacity=128),
    "p1w6": TopKConfig(lanes=1, value_width=6, capacity=24, digit_bits=2),
}

CASES = [
    ("default", "verilator"),
    ("small", "verilator"),
    ("p16w8", "verilator"),
    ("p4w16", "icarus"),
    ("small", "icarus"),
    ("p1w6", "verilator"),
]


@pytest.mark.parametrize("name,sim", CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_topk_rtl(name, sim):
    missing = simulator_missing(sim)
    if missing:
        pytest.skip(missing)
    cfg = CONFIGS[name]
    print(f"seed {SEED}, config {name}: {cfg}")
    res = topk_selftest(cfg, sim=sim, seed=SEED, random_runs=12)
    assert res.failed == 0 and res.passed >= 6, res.summary()


def _beats(cfg, values):
    P = cfg.lanes
    out = []
    for s in range(0, len(values), P):
        chunk = [int(x) for x in values[s:s + P]]
        out.append({"data": chunk + [0] * (P - len(chunk)), "count": len(chunk),
                    "last": int(s + P >= len(values))})
    return out


@pytest.mark.parametrize("seed", [SEED])
def test_topk_without_statistical_mode(seed):
    """`TopK(statistical=False)` (the query pipeline's engine) refuses STATISTICAL with BAD_MODE,
    emits its empty packet, and then selects exactly, as the golden model says."""
    import numpy as np

    from spatten.golden.topk import select
    from spatten.hw.topk.topk import Mode, TopK
    from spatten.sim.infra.amaranth_tb import run_streams

    cfg = preset("small").topk
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    values = rng.integers(cfg.value_min, cfg.value_max + 1, size=37)
    k = 9

    for mode, want_error in ((Mode.STATISTICAL, True), (Mode.EXACT, False)):
        dut = TopK(config=cfg, statistical=False)

        async def setup(ctx, dut=dut, mode=mode):
            ctx.set(dut.k, k)
            ctx.set(dut.mode, mode)
        want_beats = 1 if want_error else -(-k // cfg.lanes)
        res = run_streams(dut, sources={"i": _beats(cfg, values)}, sinks={"o": want_beats},
                          setup=setup, gap=0.3, stall=0.3, seed=seed)
        got = res["beats"]["o"]
        if want_error:
            assert got == [{"index": got[0]["index"], "value": got[0]["value"], "count": 0,
                            "last": 1}]
        else:
            idx = [b["index"][j] for b in got for j in range(b["count"])]
            assert idx == list(select(cfg, values, k).indices)
            assert got[-1]["last"] == 1
