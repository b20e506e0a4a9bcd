# amaranth: UnusedElaboratable=no
"""The query pipeline's pass gate (`hw/attention/pass_gate.py`): every pass's row leaves with its
tag, precision and whether it was dropped; only final passes' probabilities go on; the decisions and
final tags come out in order; ``refetch`` pulses with each dropped row; all under random gaps on
the three inputs and random backpressure on the four outputs. Set SPATTEN_SEED to fix the
seed."""

import random

import pytest

from spatten.config import AttentionConfig
from spatten.hw.attention.pass_gate import DECISIONS, FINALS, PassGate
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)


@pytest.fixture
def seed():
    return pick_seed()


def prob_row(rng, S):
    """The beats of one row of probabilities: 1..3 beats, the last one partial or full."""
    n = rng.randint(1, 3 * S)
    values = [rng.randrange(1 << CFG.prob_bits) for _ in range(n)]
    return [{"data": values[lo:lo + S] + [0] * (S - len(values[lo:lo + S])),
             "count": len(values[lo:lo + S]), "last": int(lo + S >= n)}
            for lo in range(0, n, S)]


@pytest.mark.parametrize("pq", [0, 1])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.6), (0.4, 0.5)])
def test_rows_decide_and_final_probabilities_go_on(pq, gap, stall, seed):
    rng = random.Random(seed)
    S, count = CFG.softmax_lanes, 30
    tau = rng.randrange(1 << 15, 3 << 15)      # (U1.16) drops about half of the MSB passes
    passes = [{"tag": rng.randrange(1 << 16), "full": rng.randrange(2) if pq else 1}
              for _ in range(count)]
    rows = [{"p_max": rng.randrange(1 << CFG.prob_bits), "esum": rng.randrange(1 << 17),
             "n": rng.randrange(CFG.capacity + 1), "max": rng.randrange(-1000, 1000),
             "error": 0} for _ in range(count)]
    probs = [prob_row(rng, S) for _ in range(count)]
    dropped = [int(pq and not p["full"] and r["p_max"] < tau)
               for p, r in zip(passes, rows, strict=True)]
    want = {
        "row": [{"p_max": r["p_max"], "max": r["max"], "esum": r["esum"], "tag": p["tag"],
                 "full": p["full"], "refetch": d} for p, r, d in zip(passes, rows, dropped,
                                                                     strict=True)],
        "probs": [b for beats, d in zip(probs, dropped, strict=True) if not d for b in beats],
        "decisions": [d for p, d in zip(passes, dropped, strict=True) if pq and not p["full"]],
        "finals": [p["tag"] for p, d in zip(passes, dropped, strict=True) if not d],
    }
    dut = PassGate(config=CFG)
    log = {"refetch": [], "row": []}

    def watch(ctx, cycle):
        ctx.set(dut.pq, pq)
        ctx.set(dut.tau, tau)
        if ctx.get(dut.refetch):
            log["refetch"].append(cycle)
        if ctx.get(dut.row.valid) and ctx.get(dut.row.ready) and \
                to_py(ctx.get(dut.row.payload))["refetch"]:
            log["row"].append(cycle)

    res = run_streams(dut, sources={"in_flight": passes, "scores_row": rows,
                                    "scores_probs": [b for beats in probs for b in beats]},
                      sinks={name: len(beats) for name, beats in want.items()}, gap=gap,
                      stall=stall, rng=rng, watch=watch, quiet=20, max_cycles=5000)
    for name, beats in want.items():
        assert res["beats"][name] == beats, name
    assert log["refetch"] == log["row"] and len(log["refetch"]) == sum(dropped)
    if pq:
        assert 0 < sum(dropped) < count, "the test drops some passes and keeps others"


def test_fifo_sizes_and_bad_parameters():
    assert (DECISIONS, FINALS) == (4, 16)
    with pytest.raises(TypeError, match="config must be an AttentionConfig, not 'x'"):
        PassGate(config="x")
    with pytest.raises(TypeError):
        PassGate(CFG)                                       # keyword-only
