"""The golden model of the top-k engine: selection against a brute-force reference, the radix
trace, the error cases, and the cycle model's figures against the issue's targets."""

import numpy as np
import pytest

from spatten.config import TopKConfig, preset
from spatten.golden import topk as g
from spatten.sim.infra.testbench import pick_seed


def brute(values, k):
    """Reference: sort (value descending, index ascending), take k, sort the indices."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    chosen = sorted(order[:k])
    thr = values[order[k - 1]] if k else None
    return chosen, thr


@pytest.mark.parametrize("cfg", [preset("default").topk, preset("small").topk,
                                 TopKConfig(lanes=1, value_width=5, capacity=40, digit_bits=2)])
def test_select_matches_brute_force(cfg):
    rng = np.random.default_rng(pick_seed())
    for trial in range(300):
        n = int(rng.integers(1, min(cfg.capacity, 200) + 1))
        k = int(rng.integers(0, n + 1))
        hi = cfg.value_max if trial % 2 else 3
        v = rng.integers(max(cfg.value_min, -hi - 1), hi + 1, n)
        res = g.select(cfg, v, k)
        ref, thr = brute(v.tolist(), k)
        assert res.indices.tolist() == ref
        assert res.threshold == (thr if k else cfg.value_max)
        if k:
            tr = g.radix_trace(cfg, v, k)
            assert tr.threshold == thr
            # the ties kept are exactly those among the selected
            assert tr.ties_kept == int(np.sum(v[res.indices] == thr))


def test_select_edges():
    cfg = preset("small").topk
    assert g.select(cfg, [3], 1).indices.tolist() == [0]
    assert g.select(cfg, [3, 3, 3, 3], 2).indices.tolist() == [0, 1]
    assert g.select(cfg, [1, 2, 3], 0).indices.tolist() == []
    assert g.select(cfg, [1, 2, 3], 3).threshold == 1
    lo, hi = cfg.value_min, cfg.value_max
    assert g.select(cfg, [lo, hi, lo, hi], 3).indices.tolist() == [0, 1, 3]


@pytest.mark.parametrize("values,k,msg", [
    ([], 0, "n = 0"),
    ([1, 2], 3, "k = 3 is out of range"),
    ([1, 2], -1, "out of range"),
    ([1.5, 2], 1, "integers"),
    ([1, 1 << 20], 1, "does not fit 12 signed bits"),
    ([[1, 2]], 1, "1-D"),
    (list(range(257)), 1, "over the capacity 256"),
])
def test_errors(values, k, msg):
    with pytest.raises(g.TopKError, match=msg):
        g.select(preset("small").topk, values, k)


def test_statistical_selects_about_k():
    cfg = preset("default").topk
    rng = np.random.default_rng(pick_seed())
    for k in (64, 256, 512):
        v = np.clip(np.round(rng.normal(0, 3000, 1024)), -32768, 32767).astype(int)
        res = g.select_statistical(cfg, v, k)
        assert abs(res.indices.size - k) <= 0.15 * k + 8, (k, res.indices.size)
        assert np.all(v[res.indices] >= res.threshold)


def test_cycle_model_meets_target():
    """Mean selection cycles at n=1024, k=256, P=16 on uniform 16-bit values: at most 1.5 n/P
    (the issue's target); the random-pivot model on the same inputs sits near the paper's 3.7."""
    cfg = preset("default").topk
    rng = np.random.default_rng(pick_seed())
    sel, rnd = [], []
    for _ in range(50):
        v = rng.integers(-32768, 32768, 1024)
        sel.append(g.cycle_model(cfg, v, 256)["select"])
        rnd.append(g.random_pivot_cycles(v, 256, 16, rng))
    assert np.mean(sel) / 64 <= 1.5
    assert 3.0 <= np.mean(rnd) / 64 <= 4.5


def test_cycle_model_structure():
    """Total latency = input beats + selection + output pass + a fixed pipeline depth."""
    cfg = preset("default").topk
    v = np.arange(1024) - 512
    c = g.cycle_model(cfg, v, 256)
    assert c["total"] > 64 + c["select"] + 64
    assert c["total"] < 64 + c["select"] + 64 + 16
    assert [p["rows"] for p in c["passes"]][0] == 64


def test_random_pivot_model_terminates_on_ties():
    rng = np.random.default_rng(pick_seed())
    assert g.random_pivot_cycles(np.zeros(100, int), 50, 16, rng) == 7 + 3
