"""Every rounding of the golden models against a reference written again from the formula of
its docstring (`spatten.config.AttentionConfig`, `golden/attention.py`, `golden/quant.py`,
`golden/progressive.py`), in exact arithmetic: Python integers and `fractions.Fraction`, never
the golden model's own shifts. Edge cases (ties, saturation boundaries, the reciprocal's cap)
are built on purpose; seeded random values cover the rest.

Rounding conventions, as documented: "round" in the datapath (e, recip, p, y, out) is half up,
floor(x + 1/2) (`AttentionConfig`: "(... + half) >> ..."; `golden.attention.pv`: "half up
(towards +inf)"); the quantizer rounds half to even (`numpy.rint`); the host-side `round` of a
float (tau, k_v) is Python's, half to even. Tables are pinned in `tests/test_tables.py`.

Seeds: ``SPATTEN_SEED`` overrides the fixed default; every randomized test prints its seed.
"""

from __future__ import annotations

import functools
import math
import os
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest

from spatten.config import AttentionConfig, preset
from spatten.golden import attention as A
from spatten.golden.progressive import tau_fixed
from spatten.golden.quant import quantize

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = preset("default").attention
SMALL = preset("small").attention
CONFIGS = {"default": CFG, "small": SMALL}
HALF = Fraction(1, 2)


def _rng(offset: int) -> np.random.Generator:
    print(f"seed {SEED} + {offset} (SPATTEN_SEED overrides {SEED})")
    return np.random.default_rng(SEED + offset)


def round_half_up(x: Fraction) -> int:
    return math.floor(x + HALF)


def round_half_even(x: Fraction) -> int:
    r = math.floor(x)
    return r + (x - r > HALF or (x - r == HALF and r % 2 == 1))


# ---------------------------------------------------------------------------------------------
# References, from the docstrings of AttentionConfig and golden/attention.py


@functools.lru_cache(maxsize=8)
def _exp_table(cfg: AttentionConfig) -> tuple:
    return tuple(cfg.exp_table())


def ref_e(cfg: AttentionConfig, y: int) -> int:
    """e = 2**-y in U1.16: the table entry of y's fraction, divided by 2**(integer part) and
    rounded half up. (The table itself is pinned entry by entry in tests/test_tables.py.)"""
    whole, frac = divmod(y, 1 << cfg.y_frac_bits)
    return round_half_up(Fraction(_exp_table(cfg)[frac], 2 ** whole))


def ref_y(cfg: AttentionConfig, t: int, params: A.ScoreParams) -> int:
    """y = min(round(min(floor(t / 2**shift), 2**t_bits - 1) * scale / 2**post_shift), y_max)."""
    ts = min(t // 2 ** params.shift, 2 ** cfg.t_bits - 1)
    return min(round_half_up(Fraction(ts * params.scale, 2 ** params.post_shift)), cfg.y_max)


def ref_softmax(cfg: AttentionConfig, dots, params: A.ScoreParams) -> dict:
    """Every intermediate of the softmax of one row, from the formats of AttentionConfig."""
    dots = [int(x) for x in dots]
    top = max(dots)
    y = [ref_y(cfg, top - x, params) for x in dots]
    e = [ref_e(cfg, v) for v in y]
    esum = sum(e)
    norm = 0
    while esum // 2 ** norm >= 2 ** 17:           # esum >> norm in [2**16, 2**17)
        norm += 1
    m = esum // 2 ** norm                         # truncated
    assert 2 ** 16 <= m < 2 ** 17
    recip = min(round_half_up(Fraction(2 ** 33, m)), 2 ** 17 - 1)

    def prob(ev):
        return min(round_half_up(Fraction(ev * recip, 2 ** (17 + norm))), 2 ** 16 - 1)

    return {"max": top, "y": y, "e": e, "esum": esum, "norm": norm, "recip": recip,
            "p": [prob(v) for v in e], "p_max": prob(2 ** 16)}


def ref_pv(cfg: AttentionConfig, p, v, renorm: bool) -> dict:
    """out = round(acc / 2**(16 - F)), or round(acc * recip / 2**(15 - F + L)) with
    L = bit_length(psum), m2 = floor(psum * 2**(16 - L)), recip = round(2**31 / m2); saturated."""
    p = [int(x) for x in p]
    v = [[int(x) for x in row] for row in v]
    d = len(v[0])
    acc = [sum(pi * row[j] for pi, row in zip(p, v, strict=True)) for j in range(d)]
    psum = sum(p)
    F = cfg.out_frac_bits
    recip = 0
    if not renorm:
        out = [round_half_up(Fraction(a, 2 ** (16 - F))) for a in acc]
    elif psum == 0:
        out = [0] * d
    else:
        L = psum.bit_length()
        m2 = math.floor(Fraction(psum * 2 ** 16, 2 ** L))
        assert 2 ** 15 <= m2 < 2 ** 16
        recip = round_half_up(Fraction(2 ** 31, m2))
        out = [round_half_up(Fraction(a * recip, 2 ** (15 - F + L))) for a in acc]
    out = [min(max(o, cfg.out_min), cfg.out_max) for o in out]
    return {"acc": acc, "psum": psum, "recip": recip, "out": out}


def check_softmax(cfg, dots, params, where=""):
    got = A.softmax(cfg, np.asarray(dots, dtype=np.int64), params)
    want = ref_softmax(cfg, dots, params)
    assert int(got.max) == want["max"], where
    for name in ("y", "e", "p"):
        assert getattr(got, name).tolist() == want[name], (where, name)
    for name in ("esum", "norm", "recip", "p_max"):
        assert int(getattr(got, name)) == want[name], (where, name)
    return want


def check_pv(cfg, p, v, renorm, where=""):
    got = A.pv(cfg, np.asarray(p, dtype=np.int64), np.asarray(v, dtype=np.int64), renorm)
    want = ref_pv(cfg, p, v, renorm)
    assert got.acc.tolist() == want["acc"], where
    assert (got.psum, got.recip) == (want["psum"], want["recip"]), where
    assert got.out.tolist() == want["out"], where
    return want


# y = t directly: shift 0, scale 1, post_shift 0. Rows are then built from the y (and so the e)
# each key should get: dots = -y, the maximum (y = 0) first.
IDENTITY = A.ScoreParams(0, 1, 0)


# ---------------------------------------------------------------------------------------------
# e = 2**-y


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exp2_every_y(name):
    """Every y of the format, 0 .. y_max: the table entry shifted right with rounding (half
    up), 0 from an integer part of 18 up."""
    cfg = CONFIGS[name]
    y = np.arange(cfg.y_max + 1)
    got = A.exp2_neg(cfg, y).tolist()
    want = [ref_e(cfg, int(v)) for v in y]
    bad = [(int(v), g, w) for v, g, w in zip(y, got, want, strict=True) if g != w]
    assert not bad, f"{name}: (y, e, reference) {bad[:8]}"
    F = cfg.y_frac_bits
    assert got[0] == 1 << 16 and got[17 << F] == 1 and got[(17 << F) + 1] == 0
    assert all(e == 0 for e in got[18 << F:])


# ---------------------------------------------------------------------------------------------
# y, the score scaling


def _dots_for_t(cfg, ts):
    """A row whose maximum is the top of the dot range and whose t (max - dot) are `ts`."""
    top = (1 << (cfg.dot_width - 1)) - 1
    return np.array([top] + [top - t for t in ts], dtype=np.int64)


def _check_y(cfg, ts, params, where):
    ts = [int(t) for t in ts]
    mx, y = A.scores_to_y(cfg, _dots_for_t(cfg, ts), params)
    want = [0] + [ref_y(cfg, t, params) for t in ts]
    assert y.tolist() == want, (where, params)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_score_scaling_edges(name):
    """Ties of the rounding (half up), the saturation of t >> shift at 2**t_bits - 1 and of y at
    y_max, the extremes of every register."""
    cfg = CONFIGS[name]
    tmax = (1 << cfg.dot_width) - 1
    smax = (1 << cfg.scale_bits) - 1
    for shift in (0, 1, 7, cfg.dot_width):
        for post_shift in (0, 1, 5, cfg.scale_bits, 31):
            for scale in (0, 1, 3, 1 << (cfg.scale_bits - 1), smax):
                p = A.ScoreParams(shift, scale, post_shift)
                A.check_params(cfg, p)
                ts = {0, 1, tmax}
                # t >> shift at 2**t_bits - 2 .. 2**t_bits + 1 (saturation of t)
                for k in range((1 << cfg.t_bits) - 2, (1 << cfg.t_bits) + 2):
                    ts |= {k << shift, ((k + 1) << shift) - 1}
                if scale:
                    # ts * scale at odd multiples of 2**(post_shift - 1): ties; and one either side
                    for j in (1, 3, 7, 2 * cfg.y_max - 1, 2 * cfg.y_max + 1):
                        num = j << max(post_shift - 1, 0)
                        if num % scale == 0:
                            ts |= {(num // scale) << shift}
                        ts |= {-(-num // scale) << shift, (num // scale) << shift}
                    # y at y_max - 1, y_max, y_max + 1 before saturation
                    for target in (cfg.y_max - 1, cfg.y_max, cfg.y_max + 1):
                        tsc = -(-(target << post_shift) // scale)
                        ts |= {tsc << shift, max(tsc - 1, 0) << shift}
                ts = sorted(t for t in ts if 0 <= t <= tmax)
                _check_y(cfg, ts, p, name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_t_saturation_where_y_sees_it(name):
    """t >> shift saturates at T = 2**t_bits - 1. For every scale and post_shift (exhaustive),
    y cannot tell a saturation at T from one at T - 1, T - 2 or T - 3 (below y_max, scale / 2**
    post_shift < 1/8 and y moves by less than one in three steps); from T - 4 on it can. The
    registers where T and T - 4 differ are found here and checked, so the saturation is pinned
    as tightly as y allows."""
    cfg = CONFIGS[name]
    T = (1 << cfg.t_bits) - 1
    scales = np.arange(1, 1 << cfg.scale_bits, dtype=np.int64)

    def y_of(ts, post_shift):
        return np.minimum((ts * scales + ((1 << post_shift) >> 1)) >> post_shift, cfg.y_max)

    seen = {delta: [] for delta in (1, 2, 3, 4)}
    for post_shift in range(cfg.post_shift_max + 1):
        for delta in seen:
            differ = np.nonzero(y_of(T, post_shift) != y_of(T - delta, post_shift))[0]
            step = max(1, differ.size // 3)
            seen[delta] += [(int(scales[i]), post_shift) for i in differ[::step]]
    assert not seen[1] and not seen[2] and not seen[3]
    assert len(seen[4]) >= 3
    for scale, post_shift in seen[4]:
        for shift in (0, 3):
            p = A.ScoreParams(shift, scale, post_shift)
            _check_y(cfg, [(T - 4) << shift, (T << shift) - 1, T << shift, (T + 1) << shift,
                           (1 << cfg.dot_width) - 1], p, name)


def test_score_scaling_ties_hit():
    """The edge list above contains exact ties: half up makes y odd where half down would not."""
    cfg = CFG
    p = A.ScoreParams(0, 3, 2)                    # y = round(3 t / 4)
    mx, y = A.scores_to_y(cfg, -np.array([0, 1, 2, 6, 10]), p)
    assert y.tolist() == [0, 1, 2, 5, 8]          # 0.75, 1.5, 4.5, 7.5 -> 1, 2, 5, 8


@pytest.mark.parametrize("name", list(CONFIGS))
def test_score_scaling_random(name):
    cfg = CONFIGS[name]
    rng = _rng(11 + len(name))
    for _ in range(200):
        p = A.ScoreParams(int(rng.integers(0, cfg.dot_width + 1)),
                          int(rng.integers(0, 1 << cfg.scale_bits)),
                          int(rng.integers(0, cfg.post_shift_max + 1)))
        bits = int(rng.integers(1, cfg.dot_width + 1))
        ts = rng.integers(0, 1 << bits, 64)
        _check_y(cfg, ts, p, name)


# ---------------------------------------------------------------------------------------------
# the score registers: score_params


def _exact_c(cfg, q_scale, k_scale, d) -> Decimal:
    """y LSBs per t LSB, q_scale * k_scale * log2(e) / sqrt(d) * 2**y_frac_bits, at 40 digits."""
    with localcontext() as ctx:
        ctx.prec = 40
        return (Decimal(q_scale) * Decimal(k_scale) / Decimal(2).ln() / Decimal(d).sqrt()
                * (1 << cfg.y_frac_bits))


def check_score_params(cfg, q_scale, k_scale, d):
    """The registers from their definition: shift is the smallest (up to dot_width) with
    2**t_bits * 2**shift * c >= y_max + 1; scale / 2**post_shift is c * 2**shift rounded to the
    nearest multiple of 2**-post_shift, with scale's top bit set. Float c carries a relative
    error of a few 1e-16, so decisions closer than 1e-12 to a boundary are skipped (returns
    False); none is expected at random."""
    p = A.score_params(cfg, q_scale, k_scale, d)
    c = _exact_c(cfg, q_scale, k_scale, d)
    with localcontext() as ctx:
        ctx.prec = 40
        tol = Decimal("1e-12")
        need = Decimal(cfg.y_max + 1) / (c * 2 ** cfg.t_bits)    # 2**shift must reach this
        shift = 0
        while Decimal(2) ** shift < need and shift < cfg.dot_width:
            shift += 1
        for s in (shift - 1, shift):
            if s >= 0 and abs(Decimal(2) ** s / need - 1) < tol:
                return False
        assert p.shift == shift, (q_scale, k_scale, d, p)
        ideal = c * 2 ** shift * Decimal(2) ** p.post_shift
        assert 2 ** (cfg.scale_bits - 1) <= p.scale < 2 ** cfg.scale_bits, p
        frac = ideal - int(ideal)
        if abs(frac - Decimal("0.5")) < tol * ideal:
            return False
        assert p.scale == int(ideal + Decimal("0.5")), (q_scale, k_scale, d, p, ideal)
    return True


@pytest.mark.parametrize("name", list(CONFIGS))
def test_score_params_exact(name):
    cfg = CONFIGS[name]
    rng = _rng(21 + len(name))
    decided = 0
    cases = [(0.02, 0.02, d) for d in cfg.head_dims] + [(1.0, 1.0, 8), (1e-4, 1e-4, 8)]
    for _ in range(400):
        a, b = 10 ** rng.uniform(-4, -0.5, 2)
        cases.append((float(a), float(b), int(rng.choice(cfg.head_dims))))
    for a, b, d in cases:
        decided += check_score_params(cfg, a, b, d)
    assert decided >= 0.95 * len(cases)


def test_score_params_saturation_of_shift():
    """c = 2**-40 y LSBs per t LSB: t would need a shift past the dot width to reach y_max, so
    the shift stops at dot_width; smaller still, post_shift passes 31 and it is refused."""
    cfg = CFG
    d = 32
    qk_scale = 2.0 ** -40 * math.sqrt(d) * math.log(2) / (1 << cfg.y_frac_bits)
    p = A.score_params(cfg, math.sqrt(qk_scale), math.sqrt(qk_scale), d)
    assert p.shift == cfg.dot_width
    assert check_score_params(cfg, math.sqrt(qk_scale), math.sqrt(qk_scale), d)
    with pytest.raises(A.AttentionError, match="too small"):
        A.score_params(cfg, 1e-12, 1e-12, d)


# ---------------------------------------------------------------------------------------------
# softmax: recip, norm, p


def _row_from_y(ys):
    """Dots whose y under IDENTITY are `ys` (ys[0] must be 0, the maximum)."""
    return [-int(y) for y in ys]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_softmax_edges(name):
    """The reciprocal's cap (m = 2**16 exactly: one key, or two maxima), m = 2**16 + 1 and
    2**17 - 1, esum at powers of two and just past them (norm), ties of p (half up), p's cap."""
    cfg = CONFIGS[name]
    F = cfg.y_frac_bits
    one = check_softmax(cfg, [5], IDENTITY, name)
    assert one["recip"] == 2 ** 17 - 1 and one["p"] == [65535]        # 65536 capped
    two = check_softmax(cfg, [7, 7], IDENTITY, name)                   # esum = 2**17: norm 1
    assert (two["esum"], two["norm"], two["recip"]) == (2 ** 17, 1, 2 ** 17 - 1)
    # p tie: e = 2**16 and 2**15 (y = 1.0): esum = 98304, recip = 87381, p_max = 43690.5 -> 43691
    tie = check_softmax(cfg, _row_from_y([0, 1 << F]), IDENTITY, name)
    assert (tie["recip"], tie["p"]) == (87381, [43691, 21845])
    e = cfg.exp_table()
    # m = 2**16 + 1 .. and m = 2**17 - 1: the maximum plus small e's; esum just past a power
    # of two (norm steps up, m truncated)
    rows = [[0, 16 << F], [0] + [(16 << F)] * 3, [0, 1], [0, 1, 2, 3],
            [0] * 3 + [17 << F], [0] * 4, [0] * 4 + [16 << F], [0] * 5,
            [0] * 7 + [(1 << F) * 16] * 2, [0, (1 << F) - 1], [0, (1 << F) - 1, 1 << F]]
    assert e[(1 << F) - 1] > 1 << 15
    for ys in rows:
        check_softmax(cfg, _row_from_y(ys), IDENTITY, (name, ys))
    # a full row of equal keys, and a full row of keys far below the maximum (e = 0)
    check_softmax(cfg, [3] * cfg.capacity, IDENTITY, name)
    check_softmax(cfg, [0] + [-(cfg.y_max)] * (cfg.capacity - 1), IDENTITY, name)


def test_softmax_ties_of_p_are_hit():
    """Rows built so that e * recip lands exactly on a half: the reference's count of ties is
    positive, so half up against half down is decided by this test."""
    cfg = CFG
    F = cfg.y_frac_bits
    ties = 0
    for k in range(1, 12):
        ys = [0] + [k << F] * (1 << (k - 1))        # 2**(k-1) keys of e = 2**(16-k)
        want = check_softmax(cfg, _row_from_y(ys), IDENTITY, k)
        for ev in want["e"]:
            ties += (ev * want["recip"]) % 2 ** (17 + want["norm"]) == 2 ** (16 + want["norm"])
    assert ties > 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_softmax_random(name):
    """Rows of every length scale, with the registers of `score_params` and random ones."""
    cfg = CONFIGS[name]
    rng = _rng(31 + len(name))
    for trial in range(60):
        n = int(rng.choice([1, 2, 3, int(rng.integers(1, cfg.capacity + 1))]))
        spread = int(rng.choice([0, 3, 300, 1 << (cfg.dot_width - 2)]))
        dots = rng.integers(-spread, spread + 1, n)
        if trial % 2:
            params = A.score_params(cfg, float(10 ** rng.uniform(-3, -1)),
                                    float(10 ** rng.uniform(-3, -1)),
                                    int(rng.choice(cfg.head_dims)))
        else:
            params = A.ScoreParams(int(rng.integers(0, 8)), int(rng.integers(0, 1 << 16)),
                                   int(rng.integers(0, 32)))
        check_softmax(cfg, dots, params, (name, trial))
    # y built directly: esum sweeps [2**16, n * 2**16]
    for _ in range(100):
        n = int(rng.integers(2, 64))
        ys = [0] + rng.integers(0, min(cfg.y_max, 6 << cfg.y_frac_bits) + 1, n - 1).tolist()
        check_softmax(cfg, _row_from_y(ys), IDENTITY, name)


def test_softmax_batch_equals_rows():
    """A (m, n) batch gives each row what the row alone gives."""
    cfg = CFG
    rng = _rng(41)
    dots = rng.integers(-3000, 3000, (6, 50))
    params = A.score_params(cfg, 0.02, 0.03, 32)
    batch = A.softmax(cfg, dots, params)
    for i in range(6):
        want = ref_softmax(cfg, dots[i], params)
        assert batch.p[i].tolist() == want["p"] and int(batch.recip[i]) == want["recip"]
        assert int(batch.p_max[i]) == want["p_max"] and int(batch.norm[i]) == want["norm"]


def test_bit_length_exact():
    """`_bit_length` (float log2, then corrected) against int.bit_length at every power of two
    up to 2**52 and either side of it."""
    xs = [0, 1, 2, 3]
    for k in range(2, 53):
        xs += [(1 << k) - 1, 1 << k, (1 << k) + 1]
    got = A._bit_length(np.array(xs, dtype=np.int64)).tolist()
    assert got == [x.bit_length() for x in xs]


# ---------------------------------------------------------------------------------------------
# prob x V: out, with and without renormalisation


def _rows_for_acc(cfg, acc):
    """(p, v) of one column whose sum of p * v is exactly `acc`."""
    sign, rest = (1 if acc >= 0 else -1), abs(acc)
    bulk = rest // (65535 * cfg.data_max)
    rest -= bulk * 65535 * cfg.data_max
    p = [65535] * bulk + [65535, rest % 65535]
    v = [[sign * cfg.data_max]] * bulk + [[sign * (rest // 65535)], [sign]]
    return p, v


@pytest.mark.parametrize("out_frac_bits", range(0, 9))
def test_pv_ties_and_saturation(out_frac_bits):
    cfg = AttentionConfig(out_frac_bits=out_frac_bits)
    F = out_frac_bits
    v = [[1, -1, 3, -3, 0, cfg.data_max, cfg.data_min, 5]]
    # acc / 2**(16-F) = v / 2: ties both ways; half up gives 1, 0, 2, -1
    w = check_pv(cfg, [1 << (15 - F)], v, False, F)
    assert w["out"][:4] == [1, 0, 2, -1]
    # renormalised ties: psum = 2**15, acc = 2**(14-F): acc * 2**F / psum = 1/2 -> 1
    w = check_pv(cfg, [(1 << 15) - (1 << (14 - F)), 1 << (14 - F)], [[0, 0], [1, -1]], True, F)
    assert w["out"] == [1, 0] and w["recip"] == 1 << 16
    # saturation, never wrapped: every p at its largest, every v at an extreme
    n = cfg.capacity
    for x in (cfg.data_min, cfg.data_max):
        for renorm in (False, True):
            w = check_pv(cfg, [65535] * n, [[x, -x]] * n, renorm, F)
    # right at the saturation boundaries: acc rounding to out_max and to out_max + 1, to
    # out_min (a tie, rounded up onto it) and to out_min - 1
    half = 1 << (15 - F)
    for acc in ((cfg.out_max << (16 - F)) + half - 1, (cfg.out_max << (16 - F)) + half,
                (cfg.out_min << (16 - F)) - half, (cfg.out_min << (16 - F)) - half - 1):
        p, rows = _rows_for_acc(cfg, acc)
        w = check_pv(cfg, p, rows, False, (F, acc))
        assert w["acc"] == [acc]
    # psum = 0 with renormalisation: 0
    assert check_pv(cfg, [0, 0], [[5], [-5]], True, F)["out"] == [0]


@pytest.mark.parametrize("out_frac_bits", [0, 4, 8])
def test_pv_random(out_frac_bits):
    """psum across its whole range (1 .. n * 65535: m2 shifted left and right, truncated),
    random acc."""
    cfg = AttentionConfig(out_frac_bits=out_frac_bits)
    rng = _rng(51 + out_frac_bits)
    for trial in range(300):
        k = int(rng.choice([1, 2, int(rng.integers(1, 64)), int(rng.integers(1, 1024))]))
        top = int(rng.choice([2, 16, 300, 65536]))
        p = rng.integers(0, top, k)
        vmax = int(rng.choice([1, 7, cfg.data_max]))
        v = rng.integers(-vmax - 1, vmax + 1, (k, 4))
        for renorm in (False, True):
            check_pv(cfg, p, v, renorm, (out_frac_bits, trial))


def test_attention_against_reference_chain():
    """The per-query attention = the reference softmax, the k_v largest p (ties to the lowest
    index), the reference prob x V over them."""
    cfg = CFG
    rng = _rng(61)
    n, d = 70, 16
    q = rng.integers(-300, 300, (5, d))
    k = rng.integers(-300, 300, (n, d))
    v = rng.integers(cfg.data_min, cfg.data_max + 1, (n, d))
    params = A.score_params(cfg, 0.02, 0.02, d)
    for k_v, renorm in ((None, False), (9, False), (9, True), (1, True)):
        res = A.attention(cfg, q, k, v, params, k_v, renorm)
        for i in range(q.shape[0]):
            dots = [sum(int(a) * int(b) for a, b in zip(q[i], row, strict=True)) for row in k]
            sm = ref_softmax(cfg, dots, params)
            order = sorted(range(n), key=lambda j: (-sm["p"][j], j))
            kept = sorted(order[:n if k_v is None else k_v])
            want = ref_pv(cfg, [sm["p"][j] for j in kept], [v[j] for j in kept], renorm)
            assert res.p[i].tolist() == sm["p"] and int(res.p_max[i]) == sm["p_max"]
            assert res.kept[i].tolist() == kept
            assert res.out[i].tolist() == want["out"], (k_v, renorm, i)


# ---------------------------------------------------------------------------------------------
# host side: the quantizer, tau, k_v


def ref_quantize(x: float, width: int, scale: float) -> int:
    """round(x / scale), ties to even, of the float64 quotient (as documented), saturated."""
    r = round_half_even(Fraction(x / scale))
    return min(max(r, -(1 << (width - 1))), (1 << (width - 1)) - 1)


@pytest.mark.parametrize("width", [2, 3, 4, 8, 12, 16, 32])
def test_quantize_exact(width):
    rng = _rng(71 + width)
    qmax = (1 << (width - 1)) - 1
    for scale in (1.0, 0.5, 0.25, 3.0):
        # every half-integer multiple of the scale across the range, and past it both ways
        ks = np.arange(-min(qmax + 3, 300), min(qmax + 3, 300)) + 0.5
        xs = [float(k * scale) for k in ks] + [float(k * scale) for k in np.round(ks)]
        xs += [float((qmax + 7) * scale), float(-(qmax + 7) * scale), 1e30, -1e30]
        got, s = quantize(np.array(xs), width, scale)
        assert s == scale
        assert got.tolist() == [ref_quantize(x, width, scale) for x in xs], (width, scale)
    for _ in range(20):
        x = rng.standard_normal(200) * float(10 ** rng.uniform(-3, 3))
        got, scale = quantize(x, width)
        assert scale == float(np.abs(x).max()) / qmax     # max|x| / qmax, one float division
        assert got.tolist() == [ref_quantize(float(v), width, scale) for v in x]
        assert int(np.abs(got).max()) == qmax
        given = float(scale * rng.uniform(0.3, 3))
        got, _ = quantize(x, width, given)
        assert got.tolist() == [ref_quantize(float(v), width, given) for v in x]


def ref_tau(tau: float) -> int:
    """round(tau * 2**16), ties to even (Python's round, the one the docstring names)."""
    return round_half_even(Fraction(tau) * 2 ** 16)


def test_tau_fixed_exact():
    rng = _rng(81)
    taus = [0.0, 1.0, 0.5, 0.1, 2 ** -17, 3 * 2 ** -17, 5 * 2 ** -17, 1 - 2 ** -17,
            (2 ** 16 - 0.5) / 2 ** 16, 0.9999999]
    taus += [float(t) for t in rng.uniform(0, 1, 200)]
    taus += [float(k + 0.5) / 2 ** 16 for k in rng.integers(0, 1 << 16, 50)]    # ties
    assert [tau_fixed(t) for t in taus] == [ref_tau(t) for t in taus]


def test_kept_keys_per_row():
    """fixed_point_attention keeps k_v = max(1, round(kv_keep * n)) keys (ties to even),
    checked on products that are exact in float64 (dyadic kv_keep) so the tie is a real one."""
    from spatten.golden.minilm import HEAD_DIM

    cfg = CFG
    rng = _rng(91)
    d = HEAD_DIM
    for n in (1, 2, 3, 5, 6, 7, 33):
        for keep in (0.0625, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0):
            stats = []
            attend = A.fixed_point_attention(cfg, kv_keep=keep, stats=stats)
            x = rng.standard_normal((3, n, d)).astype(np.float32)
            attend(x[0], x[1], x[2], 0, 0)
            want = max(1, round_half_even(Fraction(keep) * n))
            assert stats[0]["k_v"] == want, (n, keep)
