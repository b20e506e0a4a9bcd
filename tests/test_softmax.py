# amaranth: UnusedElaboratable=no
"""The streaming softmax (`hw/attention/softmax.py`) against `golden.attention.softmax`, bit for
bit, and against its cycle model (`golden.softmax_cycles`), cycle for cycle when nothing stalls.

Amaranth's simulator: edge rows, random and realistic rows, extreme score parameters, back-to-back
rows of different lengths, random input gaps, output backpressure and a late ``row`` consumer,
error rows followed by good ones. Then the same unit on Verilator through cocotb
(`sim/tb_softmax.py`). Set SPATTEN_SEED to change the seed.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.golden.attention import ScoreParams, score_params, softmax
from spatten.golden.softmax_cycles import softmax_cycle_model, softmax_interval, softmax_latency
from spatten.hw.attention.softmax import Softmax
from spatten.sim.testbenches.tb_softmax import beats_of, cycle_errors, softmax_selftest

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
SMALL = AttentionConfig(qk_mults=16, capacity=64)
DEFAULT = AttentionConfig()


# ------------------------------------------------------------------------------ rows
@dataclass
class Row:
    beats: list                     # input beats: {data, count, last}
    params: ScoreParams
    dots: np.ndarray | None         # None: an error row
    label: str = ""

    @property
    def model_row(self):
        return ("error", len(self.beats)) if self.dots is None else int(self.dots.size)


def good(cfg, dots, params, label="") -> Row:
    dots = np.asarray(dots, dtype=np.int64)
    return Row(beats_of(cfg, dots), params, dots, label)


def dot_range(cfg):
    return -(1 << (cfg.dot_width - 1)), (1 << (cfg.dot_width - 1)) - 1


def typical_params(cfg) -> ScoreParams:
    return score_params(cfg, 0.02, 0.02, cfg.head_dims[-1])


def quantize(x, bits):
    m = float(np.max(np.abs(x))) or 1.0
    top = (1 << (bits - 1)) - 1
    return np.round(x / m * top).astype(np.int64), m / top


def realistic_rows(cfg, rng, count, label="real") -> list[Row]:
    """Quantized Gaussian q, k; dots K q; registers from `score_params`."""
    rows = []
    for r in range(count):
        d = cfg.head_dims[r % len(cfg.head_dims)]
        n = int(rng.integers(1, cfg.capacity + 1))
        spread = [0.5, 1.0, 2.0, 4.0][r % 4]
        q, qs = quantize(rng.normal(0, spread, d), cfg.data_width)
        k, ks = quantize(rng.normal(0, 1.0, (n, d)), cfg.data_width)
        rows.append(good(cfg, k @ q, score_params(cfg, qs, ks, d),
                         f"{label} d={d} n={n} spread={spread}"))
    return rows


def edge_rows(cfg, rng) -> list[Row]:
    S, cap, DW = cfg.softmax_lanes, cfg.capacity, cfg.dot_width
    lo, hi = dot_range(cfg)
    p = typical_params(cfg)
    rows = []
    for n in sorted({1, max(1, S - 1), S, S + 1, 2 * S + 3, 7, cap - 1, cap}):
        rows.append(good(cfg, rng.integers(-3000, 3000, n), p, f"n={n}"))
    n = min(cap, 3 * S + 1)
    rows += [
        good(cfg, [123] * n, p, "all equal"),
        good(cfg, [lo] * n, p, "all min"),
        good(cfg, [hi] * (S + 2), p, "all max"),
        good(cfg, np.r_[[0] * (n - 1), [hi]], p, "one dominant, last"),
        good(cfg, np.r_[[50000], rng.integers(-5, 5, n - 1)], p, "one dominant, first"),
        good(cfg, rng.integers(lo, hi + 1, cap), p, "full range"),
        good(cfg, rng.choice([lo, hi], n), ScoreParams(0, 1, 0), "extremes, y saturates"),
        good(cfg, rng.integers(lo, hi + 1, n), ScoreParams(DW, (1 << cfg.scale_bits) - 1, 0),
             "shift max"),
        good(cfg, rng.integers(-1000, 1000, n), ScoreParams(0, (1 << cfg.scale_bits) - 1, 31),
             "post_shift 31"),
        good(cfg, rng.integers(-1000, 1000, n), ScoreParams(0, (1 << cfg.scale_bits) - 1, 0),
             "post_shift 0"),
        good(cfg, rng.integers(lo, hi + 1, n), ScoreParams(3, 0, 7), "scale 0"),
        good(cfg, rng.integers(-(1 << 12), 1 << 12, cap), ScoreParams(0, 1 << 15, 27),
             "fine ramp"),
        good(cfg, np.arange(cap) * 7 - 100, ScoreParams(0, 45000, 18), "ramp"),
        good(cfg, rng.integers(-(1 << 20), 1 << 20, cap), ScoreParams(2, 33000, 22),
             "wide y range"),
    ]
    return rows


def random_rows(cfg, rng, count, label="random") -> list[Row]:
    lo, hi = dot_range(cfg)
    rows = []
    for r in range(count):
        n = int(rng.integers(1, cfg.capacity + 1))
        params = ScoreParams(int(rng.integers(0, cfg.dot_width + 1)),
                             int(rng.integers(0, 1 << cfg.scale_bits)),
                             int(rng.integers(0, 32)))
        width = int(rng.integers(4, cfg.dot_width))
        dots = np.clip(rng.integers(-(1 << width), 1 << width, n), lo, hi)
        if r % 3 == 0:
            params = typical_params(cfg)
        rows.append(good(cfg, dots, params, f"{label}#{r} n={n} {params}"))
    return rows


def error_rows(cfg, rng) -> list[Row]:
    S, cap = cfg.softmax_lanes, cfg.capacity
    p = typical_params(cfg)
    z = [0] * S

    def bad(beats, label):
        return Row(beats, p, None, label)

    v = rng.integers(-100, 100, 2 * S + 1)
    rows = [
        bad(beats_of(cfg, rng.integers(-100, 100, cap + S)), "over capacity"),
        bad(beats_of(cfg, rng.integers(-100, 100, cap + 1)), "over capacity by one"),
        bad([{"data": z, "count": 0, "last": 1}], "n = 0"),
        bad([{"data": z, "count": 0, "last": 0}] + beats_of(cfg, v), "empty beat mid-row"),
    ]
    if S > 1:
        pm = beats_of(cfg, v)
        pm[0] = dict(pm[0], count=S - 1)
        rows.append(bad(pm, "partial beat mid-row"))
        rows.append(bad([{"data": z, "count": S + 1, "last": 1}], "count > S"))
    return rows


# ------------------------------------------------------------------------------ the simulation
@dataclass
class Run:
    packets: list = field(default_factory=list)     # per row: list of o beats
    rows: list = field(default_factory=list)        # per row: the row beat
    first_in: list = field(default_factory=list)    # cycle of each row's first input transfer
    last_out: list = field(default_factory=list)    # cycle of each row's last o transfer
    row_offered: list = field(default_factory=list)  # first cycle each row beat was valid
    row_taken: list = field(default_factory=list)
    o_offered: list = field(default_factory=list)   # first cycle each row's first o beat was valid
    stalls: int = 0
    idles: int = 0
    cycles: int = 0


def simulate(cfg, rows, *, gap=0.0, stall=0.0, row_delay=0, seed=0) -> Run:
    """Feed `rows` to a Softmax, collect everything; random input gaps with probability `gap`,
    o backpressure with probability `stall`, each row beat taken up to `row_delay` cycles late."""
    dut = Softmax(config=cfg)
    rng = random.Random(seed)
    DW = cfg.dot_width
    feed = []
    for ri, row in enumerate(rows):
        for bi, beat in enumerate(row.beats):
            feed.append((ri, bi == 0, beat, row.params))
    total_o = sum(max(1, len(r.beats)) if r.dots is not None else 1 for r in rows)
    limit = 50 * (len(feed) + total_o) + 400 * len(rows) + 1000
    run = Run()
    cur_packet = []

    async def tb(ctx):
        idx, presenting, cycle = 0, False, 0
        held_o = held_row = None
        row_wait = None
        while len(run.packets) < len(rows) or len(run.rows) < len(rows):
            if cycle > limit:
                raise AssertionError(f"hang: {len(run.packets)} packets, {len(run.rows)} row "
                                     f"beats of {len(rows)} rows after {cycle} cycles")
            if not presenting and idx < len(feed):
                if gap and rng.random() < gap:
                    run.idles += 1
                else:
                    ri, first, beat, p = feed[idx]
                    ctx.set(dut.i.payload, beat)
                    presenting = True
            if presenting:
                ri, first, beat, p = feed[idx]
                if first:
                    ctx.set(dut.shift, p.shift)
                    ctx.set(dut.scale, p.scale)
                    ctx.set(dut.post_shift, p.post_shift)
                else:   # junk: the parameters are sampled with the first beat only
                    ctx.set(dut.shift, rng.randrange(DW + 1))
                    ctx.set(dut.scale, rng.randrange(1 << cfg.scale_bits))
                    ctx.set(dut.post_shift, rng.randrange(32))
            ctx.set(dut.i.valid, presenting)
            o_ready = not (stall and rng.random() < stall)
            ctx.set(dut.o.ready, o_ready)
            # o
            if ctx.get(dut.o.valid):
                bits = ctx.get(dut.o.payload.as_value())
                if held_o is not None:
                    assert bits == held_o, f"o payload changed while stalled at cycle {cycle}"
                if not cur_packet and len(run.o_offered) == len(run.packets):
                    run.o_offered.append(cycle)
                if o_ready:
                    v = ctx.get(dut.o.payload)
                    cur_packet.append({"data": [int(x) for x in v.data], "count": int(v.count),
                                       "last": int(v.last)})
                    if v.last:
                        run.packets.append(list(cur_packet))
                        run.last_out.append(cycle)
                        cur_packet.clear()
                    held_o = None
                else:
                    held_o = bits
                    run.stalls += 1
            else:
                assert held_o is None, f"o valid dropped while stalled at cycle {cycle}"
            # row
            row_ready = False
            if ctx.get(dut.row.valid):
                bits = ctx.get(dut.row.payload.as_value())
                if held_row is not None:
                    assert bits == held_row, f"row payload changed while stalled at {cycle}"
                if len(run.row_offered) == len(run.rows):
                    run.row_offered.append(cycle)
                    row_wait = rng.randrange(row_delay + 1) if row_delay else 0
                row_ready = row_wait == 0
                if row_wait:
                    row_wait -= 1
                if row_ready:
                    v = ctx.get(dut.row.payload)
                    run.rows.append({k: int(getattr(v, k)) for k in
                                     ("p_max", "esum", "n", "max", "error")})
                    run.row_taken.append(cycle)
                    held_row = None
                else:
                    held_row = bits
            else:
                assert held_row is None, f"row valid dropped while stalled at cycle {cycle}"
            ctx.set(dut.row.ready, row_ready)
            # i
            if presenting and ctx.get(dut.i.ready):
                ri, first, beat, p = feed[idx]
                if first:
                    run.first_in.append(cycle)
                presenting = False
                idx += 1
            await ctx.tick()
            cycle += 1
        run.cycles = cycle

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return run


# ------------------------------------------------------------------------------ the checker
def check(cfg, rows, run, *, cycles_exact=False) -> list[str]:
    """Compare a run with the golden model (and the cycle model); return the problems found."""
    errs = []
    S = cfg.softmax_lanes
    if len(run.packets) != len(rows) or len(run.rows) != len(rows):
        return [f"{len(run.packets)} packets and {len(run.rows)} row beats for {len(rows)} rows"]
    for ri, (row, pk, rb) in enumerate(zip(rows, run.packets, run.rows, strict=True)):
        label = f"row {ri} ({row.label})"
        if row.dots is None:
            if rb["error"] != 1 or any(rb[k] for k in ("p_max", "esum", "n", "max")):
                errs.append(f"{label}: row beat {rb}, want error=1 and zeros")
            if len(pk) != 1 or pk[0]["count"] != 0 or any(pk[0]["data"]):
                errs.append(f"{label}: o packet {pk}, want one empty beat")
            continue
        g = softmax(cfg, row.dots, row.params)
        want_rb = {"p_max": int(g.p_max), "esum": int(g.esum), "n": int(row.dots.size),
                   "max": int(g.max), "error": 0}
        if rb != want_rb:
            errs.append(f"{label}: row beat {rb} != golden {want_rb}")
        want_counts = [b["count"] for b in row.beats]
        if [b["count"] for b in pk] != want_counts or [b["last"] for b in pk] != \
                [0] * (len(pk) - 1) + [1]:
            errs.append(f"{label}: beat structure {[(b['count'], b['last']) for b in pk]}")
            continue
        p = [x for b in pk for x in b["data"][:b["count"]]]
        if p != g.p.tolist():
            bad = next(i for i, (a, b) in enumerate(zip(p, g.p.tolist(), strict=False)) if a != b)
            errs.append(f"{label}: p[{bad}] = {p[bad]} != golden {int(g.p[bad])}")
        if any(x for b in pk for x in b["data"][b["count"]:S]):
            errs.append(f"{label}: lanes above count are not 0")
    for ri in range(len(rows)):
        if run.row_offered[ri] > run.o_offered[ri]:
            errs.append(f"row {ri}: row beat offered at {run.row_offered[ri]}, after its first "
                        f"o beat at {run.o_offered[ri]}")
        if ri and run.o_offered[ri] <= run.row_taken[ri - 1]:
            errs.append(f"row {ri}: o started at {run.o_offered[ri]} before row {ri - 1}'s row "
                        f"beat was taken at {run.row_taken[ri - 1]}")
    if cycles_exact:
        errs += cycle_errors(cfg, [r.model_row for r in rows], run.first_in, run.last_out)
    return errs


def run_and_check(cfg, rows, *, cycles_exact=False, **kw) -> Run:
    run = simulate(cfg, rows, **kw)
    errs = check(cfg, rows, run, cycles_exact=cycles_exact)
    assert not errs, f"seed {SEED}: {len(errs)} problems: " + "; ".join(errs[:6])
    return run


# ------------------------------------------------------------------------------ tests
def test_edge_rows_small():
    """Edge lengths, equal / dominant / full-range dots and extreme score registers, back to
    back; cycles exactly as modelled."""
    print("seed", SEED)
    rng = np.random.default_rng(SEED)
    run_and_check(SMALL, edge_rows(SMALL, rng), cycles_exact=True)


def test_realistic_rows():
    """Quantized Gaussian q and k with `score_params` registers, several d and spreads."""
    print("seed", SEED)
    rng = np.random.default_rng(SEED + 1)
    run_and_check(SMALL, realistic_rows(SMALL, rng, 16), cycles_exact=True)


def test_default_config():
    """The default configuration (S = 4, n_max = 1024, 30-bit dots): a capacity row, realistic
    rows at d = 8..64, short rows; cycles exact."""
    print("seed", SEED)
    rng = np.random.default_rng(SEED + 2)
    cfg = DEFAULT
    lo, hi = dot_range(cfg)
    rows = [good(cfg, rng.integers(lo, hi + 1, cfg.capacity), typical_params(cfg), "capacity"),
            good(cfg, [7], typical_params(cfg), "n=1"),
            good(cfg, rng.integers(-9000, 9000, 5), ScoreParams(0, 65535, 31), "n=5")]
    for d in cfg.head_dims:
        q, qs = quantize(rng.normal(0, 1, d), cfg.data_width)
        k, ks = quantize(rng.normal(0, 1, (300, d)), cfg.data_width)
        rows.append(good(cfg, k @ q, score_params(cfg, qs, ks, d), f"real d={d}"))
    run_and_check(cfg, rows, cycles_exact=True)


def test_s1_config():
    """One lane (the small preset's softmax): no trees, every beat a single dot."""
    cfg = AttentionConfig(qk_mults=8, pv_mults=8, capacity=32, softmax_lanes=1, y_frac_bits=8,
                          topk_lanes=4)
    rng = np.random.default_rng(SEED + 3)
    rows = edge_rows(cfg, rng)[::2] + random_rows(cfg, rng, 4) + error_rows(cfg, rng)[:3]
    run_and_check(cfg, rows, cycles_exact=True)


def test_odd_bank_depth():
    """capacity / S not a power of two (bank addresses through an adder)."""
    cfg = AttentionConfig(qk_mults=8, pv_mults=8, capacity=24, topk_lanes=4)
    rng = np.random.default_rng(SEED + 5)
    rows = edge_rows(cfg, rng) + random_rows(cfg, rng, 6) + error_rows(cfg, rng)
    run_and_check(cfg, rows, cycles_exact=True)
    run_and_check(cfg, rows, gap=0.3, stall=0.3, row_delay=6, seed=SEED + 5)


def test_default_config_stress():
    """The default configuration under gaps, backpressure and a late row consumer."""
    seed = SEED + 6
    print("seed", seed)
    rng = np.random.default_rng(seed)
    rows = random_rows(DEFAULT, rng, 5) + error_rows(DEFAULT, rng)[2:4]
    rows += realistic_rows(DEFAULT, rng, 3)
    run_and_check(DEFAULT, rows, gap=0.25, stall=0.35, row_delay=20, seed=seed)


@pytest.mark.parametrize("gap,stall,row_delay", [(0.3, 0.0, 0), (0.0, 0.5, 0), (0.0, 0.0, 40),
                                                 (0.4, 0.4, 12)])
def test_gaps_backpressure_late_rows(gap, stall, row_delay):
    """Random rows of random lengths under input gaps, o backpressure and a late row consumer:
    nothing lost, duplicated or reordered, payloads held while stalled, row before o."""
    seed = SEED + int(gap * 100) + int(stall * 1000) + row_delay
    print("seed", seed)
    rng = np.random.default_rng(seed)
    rows = random_rows(SMALL, rng, 14) + edge_rows(SMALL, rng)[:4]
    run = run_and_check(SMALL, rows, gap=gap, stall=stall, row_delay=row_delay, seed=seed)
    assert (run.idles > 0) == (gap > 0) and (run.stalls > 0) == (stall > 0)


def test_error_rows_then_good_rows():
    """Each error kind, each followed by a good row; back to back with exact cycles, then
    again under gaps and backpressure."""
    print("seed", SEED)
    rng = np.random.default_rng(SEED + 4)
    rows = []
    for bad in error_rows(SMALL, rng):
        rows += [bad, random_rows(SMALL, rng, 1, f"after {bad.label}")[0]]
    rows.insert(0, good(SMALL, [5, 6], typical_params(SMALL), "first"))
    run_and_check(SMALL, rows, cycles_exact=True)
    run_and_check(SMALL, rows, gap=0.3, stall=0.3, row_delay=5, seed=SEED + 4)


@pytest.mark.parametrize("n", [1, 4, 13, 64])
def test_steady_state_interval(n):
    """Back-to-back rows of n dots: the RTL's interval equals the model's, and meets
    ceil(n/S) + 24."""
    cfg = SMALL
    rng = np.random.default_rng(SEED + n)
    rows = [good(cfg, rng.integers(-999, 999, n), typical_params(cfg), f"n={n}")
            for _ in range(12)]
    run = run_and_check(cfg, rows, cycles_exact=True)
    got = (run.last_out[-1] - run.last_out[3]) / 8        # an even count: rows pair up
    B = -(-n // cfg.softmax_lanes)
    R = int(math.log2(cfg.softmax_lanes))
    assert got == softmax_interval(cfg, n)
    assert got == max(B + 18 + R / 2, 22) and got <= B + 24
    print(f"n={n}: one row every {got} cycles, latency {softmax_latency(cfg, n)}")


@pytest.mark.parametrize("cfg", [SMALL, DEFAULT, AttentionConfig(softmax_lanes=1),
                                 AttentionConfig(softmax_lanes=8),
                                 AttentionConfig(softmax_lanes=16, capacity=2048)],
                         ids=["small", "default", "s1", "s8", "s16"])
def test_cycle_model_closed_forms(cfg):
    """The model's latency and interval equal the formulas of the docstrings."""
    S = cfg.softmax_lanes
    R = int(math.log2(S))
    for n in (1, S, S + 1, cfg.capacity // 3 + 1, cfg.capacity):
        B = -(-n // S)
        assert softmax_latency(cfg, n) == 3 * B + 44 + 2 * R
        assert softmax_interval(cfg, n) == max(B + 18 + R / 2, 22)
    ev = softmax_cycle_model(cfg, [("error", 5)])[0]
    assert ev.latency == 5 + 2 + 44 + 2 * R


def test_bad_arguments():
    with pytest.raises(TypeError, match="AttentionConfig"):
        Softmax(config="default")
    with pytest.raises(TypeError):
        Softmax(SMALL)
    with pytest.raises(ValueError):
        softmax_cycle_model(SMALL, [0])
    with pytest.raises(ValueError):
        softmax_cycle_model(SMALL, [SMALL.capacity + 1])


# ------------------------------------------------------------------------------ cocotb
def _cocotb_cases():
    from spatten.sim.infra.runner import simulator_missing
    missing = simulator_missing("verilator")
    return [pytest.param(name, marks=pytest.mark.skipif(missing is not None, reason=str(missing)))
            for name in ("small", "default")]


@pytest.mark.parametrize("name", _cocotb_cases())
def test_softmax_cocotb(name):
    """tb_softmax.py on Verilator: seeded random and edge rows, exact cycles when unstalled,
    idle/stall, error rows."""
    cfg = {"small": SMALL, "default": DEFAULT}[name]
    print(f"seed {SEED}, config {name}: {cfg}")
    res = softmax_selftest(cfg, seed=SEED, random_rows=12 if name == "small" else 4)
    print(res.summary(), f"build {res.build_seconds:.1f} s, run {res.run_seconds:.1f} s")
    assert res.failed == 0 and res.passed >= 3, res.summary()
