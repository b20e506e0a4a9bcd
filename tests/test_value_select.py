# amaranth: UnusedElaboratable=no
"""The value-pruning selector (`hw/attention/value_select.py`) against
`golden.attention.value_select`: every kept (index, probability) pair of every row, in order, under
random gaps and backpressure; bad rows give the empty packet and an error code, and the next row is
fine; the cycle model (`golden.select_cycles`) exactly, for a row alone and for rows back to back;
the status of back-to-back bad rows; bad parameters. cocotb runs (Verilator: small
and default config; Icarus: small) repeat the checks through `sim/tb_value_select.py`."""

import os
import random
import time

import numpy as np
import pytest

from spatten.config import AttentionConfig
from spatten.golden.attention import value_select
from spatten.hw.attention.value_select import ValueSelect
from spatten.hw.topk.radix import RunError as ErrorCode
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import cfg_tag, run_testbench

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))

SMALL = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)


def beats_of(row, S):
    beats = []
    for lo in range(0, len(row), S):
        chunk = [int(x) for x in row[lo:lo + S]]
        beats.append({"data": chunk + [0] * (S - len(chunk)), "count": len(chunk),
                      "last": int(lo + S >= len(row))})
    return beats


def expected_beats(cfg, row, k):
    """The output packet of one row (golden selection, S pairs a beat)."""
    S = cfg.softmax_lanes
    keep = [] if k == 0 else list(value_select(cfg, np.array(row), k))
    if not keep:
        return [{"data": [{"index": 0, "prob": 0}] * S, "count": 0, "last": 1}]
    beats = []
    for lo in range(0, len(keep), S):
        chunk = [{"index": int(i), "prob": int(row[i])} for i in keep[lo:lo + S]]
        beats.append({"data": chunk + [{"index": 0, "prob": 0}] * (S - len(chunk)),
                      "count": len(chunk), "last": int(lo + S >= len(keep))})
    return beats


def random_row(rng, n, kind):
    if kind == "equal":
        return [rng.randrange(1 << 16)] * n
    if kind == "dominant":
        row = [rng.randrange(64) for _ in range(n)]
        row[rng.randrange(n)] = 60000
        return row
    if kind == "few":                       # many ties
        return [rng.choice([0, 5, 5, 9, 1 << 15, 65535]) for _ in range(n)]
    if kind == "small":                     # softmax-like: small values, top digits constant
        return [min(65535, int(rng.expovariate(1.0) * 65536 / n)) for _ in range(n)]
    return [rng.randrange(1 << 16) for _ in range(n)]


def run_rows(cfg, rows, ks, *, gap=0.0, stall=0.0, seed=0, finish=None):
    dut = ValueSelect(config=cfg)
    S = cfg.softmax_lanes
    beats, side, want = [], [], []
    for row, k in zip(rows, ks, strict=True):
        b = beats_of(row, S) if row else [{"data": [0] * S, "count": 0, "last": 1}]
        beats += b
        side += [{"k": k}] * len(b)
        want += expected_beats(cfg, row, k) if 0 < len(row) <= cfg.capacity and k <= len(row) \
            else [{"data": [{"index": 0, "prob": 0}] * S, "count": 0, "last": 1}]
    res = run_streams(dut, sources={"i": beats}, sinks={"o": len(want)}, sideband={"i": side},
                      gap=gap, stall=stall, seed=seed, quiet=20, finish=finish)
    return dut, res, want


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
@pytest.mark.parametrize("P,D", [(8, 4), (4, 3), (16, 4)])
def test_random_rows(gap, stall, P, D):
    seed = SEED + P * 7 + D + int(gap * 10) * 3 + int(stall * 10)
    print("seed", seed)
    rng = random.Random(seed)
    cfg = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                          topk_lanes=P, topk_digit_bits=D)
    rows, ks = [], []
    for kind in ["uniform", "equal", "dominant", "few", "small"] * 4:
        n = rng.choice([1, 3, 4, 5, P, P + 1, 63, 64, rng.randrange(1, 65)])
        rows.append(random_row(rng, n, kind))
        ks.append(rng.choice([1, n, max(1, n // 4), rng.randrange(1, n + 1)]))
    dut, res, want = run_rows(cfg, rows, ks, gap=gap, stall=stall, seed=seed)
    assert res["beats"]["o"] == want


def test_cycles_exact():
    """One row at a time, input always valid, o always ready: the cycle model exactly."""
    from spatten.golden.select_cycles import select_cycles
    rng = random.Random(SEED + 5)
    print("seed", SEED + 5)
    for P, D in [(8, 4), (4, 3), (16, 4)]:
        cfg = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                              topk_lanes=P, topk_digit_bits=D)
        for kind in ["uniform", "equal", "dominant", "few", "small"] * 3:
            n = rng.choice([1, 3, 4, 5, P, P + 1, 63, 64, rng.randrange(1, 65)])
            row = random_row(rng, n, kind)
            for k in sorted({0, 1, n, max(1, n // 4), rng.randrange(1, n + 1)}):
                dut, res, want = run_rows(cfg, [row], [k])
                assert res["beats"]["o"] == want
                got = res["seen"]["o"][-1] - res["accepted"]["i"][0] + 1
                assert got == select_cycles(cfg, row, k), (P, D, n, k, kind, row)


def test_stream_starts_exact():
    """Rows back to back (input always valid, o always ready): row i + 1 loads while row i is
    selected; the cycle each row's first beat is taken equals `select_stream_starts`, for rows
    that keep at most S keys in each P-key row of A (where the model is exact; random rows
    that do not are left out)."""
    from spatten.golden.select_cycles import kept_per_row, select_stream_starts
    seed = SEED + 11
    print("seed", seed)
    rng = random.Random(seed)
    for P in (8, 16):
        cfg = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                              topk_lanes=P)
        rows, ks = [], []
        while len(rows) < 16:
            n = rng.randrange(1, 65)
            row = random_row(rng, n, rng.choice(["uniform", "small", "few", "equal"]))
            k = rng.choice([0, 1, max(1, n // 4), max(1, n // 2), n + 1])
            if 0 < k <= n and max(kept_per_row(cfg, n, value_select(cfg, row, k))) > 4:
                continue
            rows.append(row)
            ks.append(k)
        dut, res, want = run_rows(cfg, rows, ks)
        assert res["beats"]["o"] == want
        acc, firsts, j = res["accepted"]["i"], [], 0
        for r in rows:
            firsts.append(acc[j] - acc[0])
            j += -(-len(r) // 4)
        assert firsts == select_stream_starts(cfg, rows, ks)
        # the overlap is real: a row's first beat comes before the previous row's packet ends
        ends = [t - acc[0] for t, b in zip(res["seen"]["o"], res["beats"]["o"], strict=True)
                if b["last"]]
        assert sum(f < e for f, e in zip(firsts[1:], ends, strict=False)) >= len(rows) // 2


def test_bad_rows_back_to_back():
    """Two bad rows in a row, then good ones: each bad row's code is shown from the cycle the
    selector takes it (no NONE in between), and the good rows after them are selected."""
    codes = []
    rows = [[], [1, 2, 3], [5] * 9, [7, 1, 7]]
    ks = [1, 5, 2, 2]
    dut = ValueSelect(config=SMALL)
    S = SMALL.softmax_lanes
    beats, side = [], []
    for row, k in zip(rows, ks, strict=True):
        b = beats_of(row, S) if row else [{"data": [0] * S, "count": 0, "last": 1}]
        beats += b
        side += [{"k": k}] * len(b)
    empty = {"data": [{"index": 0, "prob": 0}] * S, "count": 0, "last": 1}
    want = [empty, empty] + expected_beats(SMALL, rows[2], 2) + expected_beats(SMALL, rows[3], 2)
    res = run_streams(dut, sources={"i": beats}, sinks={"o": len(want)}, sideband={"i": side},
                      quiet=10, watch=lambda ctx, c: codes.append(ctx.get(dut.error_code)))
    assert res["beats"]["o"] == want
    seq = [c for i, c in enumerate(codes) if i == 0 or c != codes[i - 1]]
    assert seq == [ErrorCode.NONE, ErrorCode.N_ZERO, ErrorCode.K_OVER_N, ErrorCode.NONE], seq


def test_bad_parameters():
    with pytest.raises(TypeError, match="AttentionConfig"):
        ValueSelect(config=SMALL.__dict__)
    with pytest.raises(ValueError, match="topk_lanes"):
        AttentionConfig(topk_lanes=12)
    with pytest.raises(ValueError, match="softmax_lanes"):
        AttentionConfig(softmax_lanes=8, topk_lanes=4)


# ---------------------------------------------------------------------------------------------
# cocotb on Verilator (and Icarus)


@pytest.mark.parametrize("name,cfg,runs,sim", [("small", SMALL, 6, "verilator"),
                                              ("default", AttentionConfig(), 4, "verilator"),
                                              ("small", SMALL, 3, "icarus")],
                         ids=["small-verilator", "default-verilator", "small-icarus"])
def test_cocotb(name, cfg, runs, sim, seed):
    """The cocotb testbench (`tb_value_select.py`): rows alone with exact cycles, random rows
    back to back, gaps and backpressure, bad rows and their error codes, resets mid-row."""
    from spatten.sim.infra.runner import simulator_missing
    from spatten.sim.testbenches.tb_value_select import TOPLEVEL, ValueSelectTop

    missing = simulator_missing(sim)
    if missing:
        pytest.skip(missing)
    t = time.time()
    res = run_testbench(lambda: ValueSelectTop(cfg), name=TOPLEVEL, tag=f"{name}-{cfg_tag(cfg)}",
                        tb_module="spatten.sim.testbenches.tb_value_select", sim=sim, config=cfg,
                        settings={"seed": seed % (1 << 31), "runs": runs})
    print(f"{name} on {sim}: {res.summary()} in {time.time() - t:.1f} s (built: {res.built}, "
          f"{res.build_seconds:.1f} s)")
    assert res.failed == 0 and res.passed == 5, res.summary()
