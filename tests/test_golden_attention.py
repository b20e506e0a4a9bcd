"""The attention datapath's golden model: formats at their extremes, agreement with float
attention, value selection, prob x V rounding and renormalisation."""

import math
import os

import numpy as np
import pytest

from spatten.config import AttentionConfig, preset
from spatten.golden import attention as A

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = preset("default").attention
SMALL = preset("small").attention


def float_softmax(scores):
    s = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def quantize(x, width=12):
    s = float(np.abs(x).max()) / (2 ** (width - 1) - 1)
    return np.round(x / s).astype(np.int64), s


@pytest.mark.parametrize("cfg", [CFG, SMALL], ids=["default", "small"])
def test_score_params_scale(cfg):
    """y from the registers equals t * c (the real exponent in y LSBs) to within one LSB, over
    scales spanning six decades and every head dimension."""
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    for d in cfg.head_dims:
        for scale in (1e-4, 3e-3, 0.02, 0.3):
            p = A.score_params(cfg, scale, scale * 0.7, d)
            A.check_params(cfg, p)
            assert (1 << (cfg.scale_bits - 1)) <= p.scale < (1 << cfg.scale_bits)
            c = scale * scale * 0.7 * A.LOG2E / math.sqrt(d) * (1 << cfg.y_frac_bits)
            t = rng.integers(0, 1 << (cfg.dot_width - 1), 2000)
            t[0] = 0                                   # the row maximum: t is relative to it
            _, y = A.scores_to_y(cfg, -t[None, :], p)
            want = np.minimum(t * c, cfg.y_max)
            ok = want < cfg.y_max - 2
            assert np.all(np.abs(y[0][ok] - want[ok]) <= 1.0), (d, scale)
            assert np.all(y[0][t * c > cfg.y_max + 1] == cfg.y_max)


def test_score_params_errors():
    with pytest.raises(A.AttentionError, match="positive"):
        A.score_params(CFG, 0.0, 1.0, 32)
    with pytest.raises(A.AttentionError, match="head dimension"):
        A.score_params(CFG, 0.01, 0.01, 48)
    with pytest.raises(A.AttentionError, match="too large"):
        A.score_params(CFG, 1e4, 1e4, 32)
    with pytest.raises(A.AttentionError, match="too small"):
        A.score_params(CFG, 1e-12, 1e-12, 32)


def test_softmax_edges():
    p = A.score_params(CFG, 0.01, 0.01, 32)
    one = A.softmax(CFG, np.array([123]), p)
    assert one.p.tolist() == [65535] and one.p_max == 65535 and one.esum == 65536
    flat = A.softmax(CFG, np.full(CFG.capacity, -77), p)
    assert np.all(flat.p == 64) and flat.p_max == 64
    dom = A.softmax(CFG, np.array([0] * 100 + [1 << 28] + [0] * 20), p)
    assert dom.p[100] == 65535 and np.all(np.delete(dom.p, 100) == 0)
    # the extremes of the dot format: no intermediate leaves its width
    lo = CFG.data_min * CFG.data_max * CFG.qk_mults
    hi = CFG.data_min * CFG.data_min * CFG.qk_mults
    assert hi < 1 << (CFG.dot_width - 1) and lo >= -(1 << (CFG.dot_width - 1))
    for params in (A.ScoreParams(0, (1 << CFG.scale_bits) - 1, 0),
                   A.ScoreParams(CFG.dot_width, 1, 31), A.ScoreParams(0, 0, 0)):
        r = A.softmax(CFG, np.array([lo, hi, 0, hi] + [lo] * (CFG.capacity - 4)), params)
        assert r.y.max() <= CFG.y_max and r.e.max() <= 1 << 16
        assert int(r.esum) < 1 << CFG.esum_width
        assert 1 << 16 <= int(r.recip) < 1 << CFG.recip_width
        assert r.p.max() <= 65535 and r.p.min() >= 0


def test_softmax_matches_float():
    """Probabilities of quantized Gaussian rows against float softmax of the same integer
    scores, within the error the formats allow (before quantization of q and k), per element:

    - y, in log2 units, is off by at most 2**-(F+1) (its rounding) + 2**-(F+2) (t >> shift
      drops less than one t LSB, worth under 1/4 y LSB: shift > 0 only when c * 2**shift < 1/4)
      + y * 2**-16 (scale, at least 2**15, is rounded to an integer): dy;
    - e = 2**-y is then off by a factor of at most 2**dy; p = e / sum(e) by 2**(dy + dy_sum),
      dy_sum for the sum, whose e-weighted mean y is at most log2(n) (an entropy);
    - the table, the reciprocal (m truncated, recip rounded) and p's rounding add 3 * 2**-16
      relative and 2 * 2**-16 absolute.

    Measured: at most 0.59 of this bound (seeds 1..200), up to 5.9e-4 absolute at d = 64,
    n = 1024; the flat 2**-12 used before held for the default seed but not for 8 of seeds
    1..10."""
    rng = np.random.default_rng(SEED + 1)
    print("seed", SEED + 1)
    F = CFG.y_frac_bits
    for d, n, spread in ((32, 128, 1.0), (64, 1024, 2.0), (8, 7, 3.0), (32, 300, 0.2)):
        q, qs = quantize(rng.normal(size=(16, d)) * spread)
        k, ks = quantize(rng.normal(size=(n, d)) * spread)
        params = A.score_params(CFG, qs, ks, d)
        r = A.softmax(CFG, A.qk(CFG, q, k), params)
        scores = (q @ k.T) * qs * ks / math.sqrt(d)
        ref = float_softmax(scores)
        y = (scores.max(axis=1, keepdims=True) - scores) / math.log(2)    # exact -log2(p/p_max)
        dy = 2.0 ** -(F + 1) + 2.0 ** -(F + 2) + y * 2.0 ** -16
        dy_sum = 2.0 ** -(F + 1) + 2.0 ** -(F + 2) + math.log2(n) * 2.0 ** -16
        bound = ref * (2.0 ** (dy + dy_sum) - 1 + 3 * 2.0 ** -16) + 2 * 2.0 ** -16
        err = np.abs(r.p / 65536 - ref)
        assert np.all(err <= bound), (d, n, float(err.max()), float((err / bound).max()))
        assert np.array_equal(r.p_max, r.p.max(axis=1))


def test_value_select_ties_and_bypass():
    p = np.array([5, 9, 9, 1, 9, 0])
    assert A.value_select(CFG, p, 2).tolist() == [1, 2]
    assert A.value_select(CFG, p, 4).tolist() == [0, 1, 2, 4]
    assert A.value_select(CFG, p, None).tolist() == list(range(6))
    assert A.value_select(CFG, p, 6).tolist() == list(range(6))
    with pytest.raises(A.AttentionError):
        A.value_select(CFG, p, 0)


def test_value_select_over_the_whole_probability_range():
    """Value selection keeps what the top-k engine's exact mode keeps (an independent model:
    `golden.topk.select`, radix select on signed values, here p - 2**15) over the whole U0.16
    range, across 2**15, with ties to the lowest index."""
    from spatten.config import TopKConfig
    from spatten.golden.topk import select

    engine = TopKConfig(lanes=16, value_width=16, capacity=1024)

    def reference(p, k):
        return select(engine, np.asarray(p) - (1 << 15), k).indices

    p = np.array([0, 32767, 32768, 65535, 32768, 1, 32769, 32768, 65534, 0])
    for k in range(1, len(p) + 1):
        assert A.value_select(CFG, p, k).tolist() == reference(p, k).tolist(), k
    assert A.value_select(CFG, p, 3).tolist() == [3, 6, 8]
    assert A.value_select(CFG, p, 5).tolist() == [2, 3, 4, 6, 8]     # two of three 32768s
    rng = np.random.default_rng(SEED + 7)
    print("seed", SEED + 7)
    for _ in range(50):
        n = int(rng.integers(1, 200))
        p = rng.choice([0, 32767, 32768, 65535, *rng.integers(0, 65536, 8)], size=n)
        k = int(rng.integers(1, n + 1))
        assert A.value_select(CFG, p, k).tolist() == reference(p, k).tolist()


def test_pv_rounding_renorm_saturation():
    v = np.array([[100, -100], [3, -3]])
    F = 1 << CFG.out_frac_bits                            # output LSBs per v LSB
    r = A.pv(CFG, np.array([32768, 32768]), v)          # 0.5 * 100 + 0.5 * 3 = 51.5
    assert r.out.tolist() == [round(51.5 * F + 0.01), -round(51.5 * F - 0.01)]
    assert r.psum == 65536
    r = A.pv(CFG, np.array([16384]), v[:1], renorm=True)  # one kept row renormalises to itself
    assert r.out.tolist() == [100 * F, -100 * F]
    r = A.pv(CFG.__class__(out_frac_bits=0), np.array([32768, 32768]), v)   # half up: 52, -51
    assert r.out.tolist() == [52, -51]
    r = A.pv(CFG, np.array([0, 0]), v, renorm=True)
    assert r.out.tolist() == [0, 0]
    big = np.full((CFG.capacity, 1), CFG.data_min)
    r = A.pv(CFG, np.full(CFG.capacity, 65535), big)
    assert -(1 << (CFG.acc_width - 1)) <= int(r.acc[0]) and r.out.tolist() == [CFG.out_min]
    r = A.pv(CFG, np.full(CFG.capacity, 65535), -big)     # saturates, never wraps
    assert r.out.tolist() == [CFG.out_max] and int(r.acc[0]) < 1 << (CFG.acc_width - 1)
    rng = np.random.default_rng(SEED + 2)
    for _ in range(50):
        k = int(rng.integers(1, 40))
        pk = rng.integers(0, 65536, k)
        vk = rng.integers(CFG.data_min, CFG.data_max + 1, (k, 8))
        r = A.pv(CFG, pk, vk, renorm=True)
        if pk.sum():
            want = (pk @ vk) / pk.sum() * F
            # half an LSB of rounding plus the 16-bit reciprocal's relative error
            tol = 0.5 + np.abs(want) * 2.0 ** -15
            assert np.all(np.abs(r.out - np.clip(want, CFG.out_min, CFG.out_max)) <= tol)


def test_attention_consistent_and_accurate():
    rng = np.random.default_rng(SEED + 3)
    n, d, m = 96, 32, 12
    qf, kf, vf = (rng.normal(size=s) for s in ((m, d), (n, d), (n, d)))
    q, qs = quantize(qf * 2)
    k, ks = quantize(kf * 2)
    v, vs = quantize(vf)
    params = A.score_params(CFG, qs, ks, d)
    for k_v, renorm in ((None, False), (24, False), (24, True), (1, True)):
        res = A.attention(CFG, q, k, v, params, k_v, renorm)
        for i in (0, 5, m - 1):
            one = A.attention_query(CFG, q[i], k, v, params, k_v, renorm)
            assert np.array_equal(one.out, res.out[i]) and one.p_max == res.p_max[i]
            assert np.array_equal(one.kept, res.kept[i])
    res = A.attention(CFG, q, k, v, params)
    ref = float_softmax((q * qs) @ (k * ks).T / math.sqrt(d)) @ (v * vs)
    out = res.out * vs / (1 << CFG.out_frac_bits)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.9999


def test_check_qkv_errors():
    ok = np.zeros((4, 32), dtype=np.int64)
    with pytest.raises(A.AttentionError, match="head dimension"):
        A.attention(CFG, np.zeros((1, 24), int), np.zeros((4, 24), int), np.zeros((4, 24), int),
                    A.ScoreParams(0, 1, 0))
    with pytest.raises(A.AttentionError, match="capacity"):
        big = np.zeros((CFG.capacity + 1, 32), dtype=np.int64)
        A.attention(CFG, ok, big, big, A.ScoreParams(0, 1, 0))
    with pytest.raises(A.AttentionError, match="outside"):
        A.attention(CFG, ok + 5000, ok, ok, A.ScoreParams(0, 1, 0))
    with pytest.raises(A.AttentionError, match="rows"):
        A.attention(CFG, ok, ok, ok[:3], A.ScoreParams(0, 1, 0))


def test_config_errors():
    with pytest.raises(ValueError, match="qk_mults must be a power of two"):
        AttentionConfig(qk_mults=48)
    with pytest.raises(ValueError, match="softmax_lanes"):
        AttentionConfig(softmax_lanes=32, topk_lanes=16)
    with pytest.raises(TypeError):
        AttentionConfig(capacity=1.5)
