"""The query pipeline's RTL against the golden model, in cocotb on Verilator (and Icarus).

Each parametrization builds the pipeline for one configuration and runs every self-checking test
of `sim/tb_attention.py`: edge cases (n = 1, n not a multiple of the lanes, full capacity, equal
scores, one dominant score, extreme values, every pruning and renormalisation setting), seeded
random runs under random input gaps and output backpressure, every error followed by a good run,
and a reset in the middle of a run; then real MiniLM rows (several layers and heads, quantized)
through the RTL, compared bit for bit. Set SPATTEN_SEED to change the seed.
"""

import os

import numpy as np
import pytest

from spatten.config import AttentionConfig, preset
from spatten.sim.infra.runner import simulator_missing
from spatten.sim.testbenches.tb_attention import attention_selftest

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))

CONFIGS = {
    # the smallest useful pipeline: fast to build, every unit exercised
    "m16c64": AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                              topk_lanes=8),
    # one softmax lane, Q.K and prob x V of different widths, 3-bit top-k digits
    "m8s1": AttentionConfig(qk_mults=16, pv_mults=8, capacity=40, softmax_lanes=1, topk_lanes=4,
                            topk_digit_bits=3, y_frac_bits=8),
    "default": preset("default").attention,
}

CASES = [
    ("m16c64", "verilator"),
    ("m8s1", "verilator"),
    ("default", "verilator"),
    ("m8s1", "icarus"),
]


@pytest.mark.xdist_group("attention")
@pytest.mark.parametrize("name,sim", CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_attention_rtl(name, sim):
    missing = simulator_missing(sim)
    if missing:
        pytest.skip(missing)
    print("seed", SEED)
    res = attention_selftest(CONFIGS[name], sim=sim, seed=SEED,
                             random_runs=6 if name != "default" else 3)
    print(res.summary())
    assert res.ok and res.passed >= 4


@pytest.mark.xdist_group("attention")
def test_attention_progressive_6_6():
    """Progressive quantization with K split 6 + 6 (the other split measured): MSB passes,
    trigger, full passes, order and tags against `golden.progressive` (the 8 + 4 split runs in
    every self-test above)."""
    print("seed", SEED)
    res = attention_selftest(CONFIGS["m16c64"], sim="verilator", seed=SEED,
                             testcase="progressive", msb_bits=6)
    print(res.summary())
    assert res.ok and res.passed == 1


@pytest.mark.xdist_group("attention")
def test_minilm_rows_rtl():
    """Real attention: every query of several MiniLM layers and heads on two texts, quantized
    per tensor, through the default pipeline's RTL, bit for bit against the golden model, with
    and without value pruning."""
    from spatten.golden import attention as golden
    from spatten.golden.minilm import SAMPLE_TEXTS, MiniLM
    from spatten.golden.quant import quantize
    from spatten.sim.testbenches.tb_attention import job_from_arrays, run_attention

    missing = simulator_missing("verilator")
    if missing:
        pytest.skip(missing)
    cfg = CONFIGS["default"]
    model = MiniLM()
    jobs, refs = [], []
    for text in SAMPLE_TEXTS[:2]:
        _, records = model.forward(model.tokenize(text), record=True)
        for layer, head, keep in ((0, 0, None), (3, 7, 0.25), (5, 11, 0.5)):
            rec = records[layer][head]
            (q, qs), (k, ks), (v, _) = (quantize(rec[x], cfg.data_width) for x in "qkv")
            n = k.shape[0]
            params = golden.score_params(cfg, qs, ks, q.shape[1])
            k_v = None if keep is None else max(1, round(keep * n))
            renorm = keep == 0.25
            jobs.append(job_from_arrays(q, k, v, params, k_v, renorm))
            refs.append(golden.attention(cfg, q, k, v, params, k_v, renorm))
    results = run_attention(cfg, jobs)
    for job, ref, res in zip(jobs, refs, results, strict=True):
        d = job["d"]
        got = np.array([row[:d] for row in res["out"]])
        assert res["error"] == "NONE"
        assert np.array_equal(got, ref.out), f"n={job['n']} k_v={job['k_v']}"
        assert res["probs"] == ref.p.tolist() and res["p_max"] == ref.p_max.tolist()
