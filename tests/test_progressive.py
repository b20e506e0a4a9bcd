"""The golden model of progressive quantization and head-group DRAM traffic
(golden/progressive.py)."""

import os

import numpy as np
import pytest

from spatten.config import MemoryConfig, preset
from spatten.golden.attention import AttentionError, attention_query, score_params
from spatten.golden.dram_image import ImageLayout, coalesce, merge_k, msb_estimate, split_k
from spatten.golden.progressive import group_planes, issue_order, run_group, tau_fixed

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = preset("default").attention


def _case(seed, N=40, d=32, G=2, rows=5, spread=600):
    rng = np.random.default_rng(seed)
    k = rng.integers(-spread, spread + 1, size=(N, d))
    v = rng.integers(-2048, 2048, size=(N, d))
    q = [rng.integers(-spread, spread + 1, size=(rows, d)) for _ in range(G)]
    layout = ImageLayout.from_config(CFG, layers=1, kv_heads=1, q_heads=G, d=d, n_max=N,
                                     m_max=rows)
    planes = group_planes(layout, 0, 0)
    params = score_params(CFG, 0.02, 0.02, d)
    return k, v, q, planes, params, layout


def test_issue_order():
    assert issue_order([]) == []
    assert issue_order([False]) == [("M", 0)]
    assert issue_order([True]) == [("M", 0), ("F", 0)]
    assert issue_order([False, False, False]) == [("M", 0), ("M", 1), ("M", 2)]
    assert issue_order([True, False, True, True]) == [
        ("M", 0), ("M", 1), ("F", 0), ("M", 2), ("M", 3), ("F", 2), ("F", 3)]


def test_tau_fixed():
    assert tau_fixed(0) == 0 and tau_fixed(1.0) == 65536 and tau_fixed(0.1) == 6554
    for bad in (-0.1, 1.5, "x", None, True):
        with pytest.raises(AttentionError):
            tau_fixed(bad)


@pytest.mark.parametrize("msb_bits", [8, 6])
def test_full_precision_and_extremes_of_tau(msb_bits):
    print(f"seed {SEED}")
    k, v, q, planes, params, layout = _case(SEED)
    mem = MemoryConfig(msb_bits=msb_bits)
    lsb_bits = 12 - msb_bits
    layout = ImageLayout.from_config(CFG, layers=1, kv_heads=1, q_heads=2, d=32, n_max=40,
                                     m_max=5, msb_bits=msb_bits)
    planes = group_planes(layout, 0, 0)
    surv = [0, 1, 2, 7, 9, 10, 11, 30, 39]
    queries = [(0, 0), (1, 3), (0, 4), (1, 1)]
    msb, lsb = split_k(k[surv], 12, msb_bits)
    k_full = merge_k(msb, lsb, lsb_bits)
    assert np.array_equal(k_full, k[surv])
    runs = coalesce(surv)
    assert runs == [(0, 3), (7, 1), (9, 3), (30, 1), (39, 1)]
    B = mem.beat_bytes

    full = run_group(CFG, planes, k, v, q, surv, queries, params, memory=mem)
    for j, (h, r) in enumerate(queries):
        want = attention_query(CFG, q[h][r], k[surv], v[surv], params)
        assert np.array_equal(full.out[j], want.pv.out)
    assert not full.refetched.any() and full.order == [0, 1, 2, 3]
    by = full.dram_bytes(B)
    # every run is read whole; an 8-bit MSB row of d=32 is 32 bytes (2 beats), 6 bits 24 bytes
    assert by["k_msb"] == sum(planes.k_msb.run_requests(s, c, B, 16).beats for s, c in runs) * B
    assert by["k_lsb"] > 0 and by["q"] == 4 * 48
    assert by["v"] == sum(planes.v.run_requests(s, c, B, 16).beats for s, c in runs) * B

    never = run_group(CFG, planes, k, v, q, surv, queries, params, tau=0.0, memory=mem)
    est = msb_estimate(msb, lsb_bits, "mid")
    for j, (h, r) in enumerate(queries):
        want = attention_query(CFG, q[h][r], est, v[surv], params)
        assert np.array_equal(never.out[j], want.pv.out)
    assert not never.refetched.any() and never.dram_bytes(B)["k_lsb"] == 0

    always = run_group(CFG, planes, k, v, q, surv, queries, params, tau=1.0, memory=mem)
    assert always.refetched.all()
    assert np.array_equal(always.out, full.out) and np.array_equal(always.p, full.p)
    assert always.dram_bytes(B)["k_lsb"] == by["k_lsb"]          # fetched once for the group
    assert always.order == [0, 1, 2, 3]
    assert always.passes == [("M", 0), ("M", 1), ("F", 0), ("M", 2), ("F", 1), ("M", 3),
                             ("F", 2), ("F", 3)]


def _graded_queries(seed, G=2, rows=5, d=32):
    """Queries of every sharpness, whatever the seed: query j (row r of head h, j = 2r + h) is
    uniform in +-m_j with m_j = 2**j - 1 (0 .. 511), so its scores against K (+-1500, the
    registers of 0.02 x 0.02) have a spread from 0 (p_max = 1/n, flat) up to far past one
    (p_max saturated at 65535)."""
    rng = np.random.default_rng(seed)
    return [np.stack([rng.integers(-m, m + 1, d) for m in ((1 << (2 * r + h)) - 1
                                                          for r in range(rows))])
            for h in range(G)]


def test_middle_tau_refetches_flat_rows_and_orders_outputs():
    """tau set to a p_max of the MSB passes, the median of their distinct values: the queries
    below it are refetched, those at it (on purpose: p_max = tau exactly) and above are not."""
    print(f"seed {SEED}")
    k, v, _, planes, params, _ = _case(SEED + 1, spread=1500)
    q = _graded_queries(SEED + 1)
    surv = list(range(0, 40, 3))
    queries = [(h, r) for r in range(5) for h in range(2)]
    msb_pass = run_group(CFG, planes, k, v, q, surv, queries, params, tau=0.0)
    pm = msb_pass.p_max_msb
    levels = np.unique(pm)
    assert levels.size >= 5, pm                        # the graded queries spread p_max
    tau_q = int(levels[levels.size // 2])
    tau = tau_q / 65536
    assert tau_fixed(tau) == tau_q
    res = run_group(CFG, planes, k, v, q, surv, queries, params, tau=tau)
    want = pm < tau_q
    assert want.any() and not want.all() and (pm == tau_q).any()
    assert np.array_equal(res.refetched, want)
    assert sorted(res.order) == list(range(len(queries)))
    full = run_group(CFG, planes, k, v, q, surv, queries, params)
    for j in range(len(queries)):
        ref = full if want[j] else msb_pass
        assert np.array_equal(res.out[j], ref.out[j])
    # the final order follows the issue order of final passes
    finals = [j for kind, j in res.passes if kind == "F" or not want[j]]
    assert res.order == finals


def test_trigger_is_strictly_below_tau():
    """Every query's p_max taken as tau in turn: a row maximum equal to tau is not refetched,
    one LSB more of tau refetches it (p_max < tau, not <=)."""
    print(f"seed {SEED}")
    k, v, _, planes, params, _ = _case(SEED + 3, spread=1500)
    q = _graded_queries(SEED + 3)
    surv = list(range(1, 40, 2))
    queries = [(h, r) for r in range(5) for h in range(2)]
    pm = run_group(CFG, planes, k, v, q, surv, queries, params, tau=0.0).p_max_msb
    for j, p in enumerate(pm.tolist()):
        at = run_group(CFG, planes, k, v, q, surv, queries, params, tau=p / 65536)
        above = run_group(CFG, planes, k, v, q, surv, queries, params, tau=(p + 1) / 65536)
        assert not at.refetched[j] and above.refetched[j], (j, p)
        assert np.array_equal(at.refetched, pm < p) and np.array_equal(above.refetched, pm <= p)


def test_value_pruning_fetches_each_kept_row_once():
    print(f"seed {SEED}")
    k, v, q, planes, params, _ = _case(SEED + 2, N=64)
    surv = [i for i in range(64) if i % 5 != 2]
    queries = [(0, r) for r in range(5)] + [(1, r) for r in range(5)]
    res = run_group(CFG, planes, k, v, q, surv, queries, params, k_v=6)
    need = sorted({surv[p] for kept in res.kept for p in kept})
    assert all(len(kk) == 6 for kk in res.kept)
    covered = []
    rb = planes.v.row_bytes
    for addr, beats in res.requests["v"]:
        lo, hi = addr - planes.v.base, addr - planes.v.base + beats * 16
        covered += [t for t in range(64) if lo <= t * rb and (t + 1) * rb <= hi]
    assert set(need) <= set(covered)
    # the first query's rows come first, each row at most once across the group
    dense = run_group(CFG, planes, k, v, q, surv, queries, params)
    assert res.dram_bytes(16)["v"] < dense.dram_bytes(16)["v"]


def test_bad_input():
    k, v, q, planes, params, _ = _case(SEED)
    good = dict(tau=0.1)
    with pytest.raises(AttentionError, match="n = 0"):
        run_group(CFG, planes, k, v, q, [], [(0, 0)], params, **good)
    with pytest.raises(AttentionError, match="ascending"):
        run_group(CFG, planes, k, v, q, [3, 2], [(0, 0)], params, **good)
    with pytest.raises(AttentionError, match="outside"):
        run_group(CFG, planes, k, v, q, [3, 40], [(0, 0)], params, **good)
    with pytest.raises(AttentionError, match="does not exist"):
        run_group(CFG, planes, k, v, q, [3], [(2, 0)], params, **good)
    with pytest.raises(AttentionError, match="fill"):
        run_group(CFG, planes, k, v, q, [3], [(0, 0)], params, fill="half")
    with pytest.raises(AttentionError, match="capacity"):
        small = preset("small").attention                 # capacity 128, d = 8
        lay = ImageLayout.from_config(small, layers=1, kv_heads=1, q_heads=1, d=8, n_max=200)
        run_group(small, group_planes(lay, 0, 0), np.zeros((200, 8), int),
                  np.zeros((200, 8), int), [np.zeros((1, 8), int)], list(range(200)), [(0, 0)],
                  score_params(small, 0.02, 0.02, 8))
