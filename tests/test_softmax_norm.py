# amaranth: UnusedElaboratable=no
"""The softmax's normalise pass and row output (`hw/attention/softmax_norm.py`): rows of golden
exponentials with their reciprocals, random row gaps, random backpressure on ``o`` and ``row``;
every probability bit for bit `golden.attention.softmax`, beat structure and order kept, every
``row`` beat right (error rows too), the banks released at the last read, the latencies exact.
Set SPATTEN_SEED to fix the seed."""

import random

import numpy as np
import pytest

from spatten.config import AttentionConfig
from spatten.golden.attention import ScoreParams, softmax
from spatten.hw.attention.softmax_common import E_BANKS, bank_depth
from spatten.hw.attention.softmax_norm import NormalisePass, RowOutput
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import pick_seed
from spatten.sim.testbenches.unit_top import lane_beats

CONFIGS = {
    "small": AttentionConfig(qk_mults=16, capacity=64),                     # S = 4
    "s1": AttentionConfig(qk_mults=16, capacity=32, softmax_lanes=1),
    "s8-depth6": AttentionConfig(qk_mults=64, capacity=48, softmax_lanes=8),
}


def make_rows(cfg, seed, count) -> list[dict]:
    """Golden rows (random dots and registers) and every fifth an error row."""
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (cfg.dot_width - 1)), (1 << (cfg.dot_width - 1)) - 1
    rows = []
    for k in range(count):
        if k % 5 == 3:
            rows.append({"error": 1, "e": [0], "n": 0, "max": 0, "esum": 0, "recip": 131071,
                         "norm": 0, "p": [], "p_max": 0})
            continue
        n = int(rng.integers(1, cfg.capacity + 1)) if k % 3 else int(rng.integers(1, 9))
        dots = np.clip(rng.integers(-(1 << 14), 1 << 14, n), lo, hi)
        g = softmax(cfg, dots, ScoreParams(0, int(rng.integers(1, 1 << 16)), 18))
        rows.append({"error": 0, "e": [int(x) for x in g.e], "n": n, "max": int(g.max),
                     "esum": int(g.esum), "recip": int(g.recip), "norm": int(g.norm),
                     "p": [int(x) for x in g.p], "p_max": int(g.p_max)})
    return rows


def run(cfg, rows, *, gap, stall, seed):
    rng = random.Random(seed)
    S, depth = cfg.softmax_lanes, bank_depth(cfg)
    dut = NormalisePass(config=cfg)
    inputs = []
    for k, row in enumerate(rows):
        beats = 1 if row["error"] else -(-row["n"] // S)
        last_count = 0 if row["error"] else row["n"] - S * (beats - 1)
        inputs.append({"bank": k % E_BANKS, "error": row["error"], "n": row["n"],
                       "beats": beats, "last_count": last_count,
                       "max": row["max"], "esum": row["esum"], "recip": row["recip"],
                       "norm": row["norm"]})
    want_o = []
    for row in rows:
        want_o += ([{"data": [0] * S, "count": 0, "last": 1}] if row["error"]
                   else lane_beats(row["p"], S))
    reading = {b: [] for b in range(E_BANKS)}     # rows in each bank, oldest first
    starts, releases = [], []
    read = [None]                                  # the previous cycle's (row, beat)

    def watch(ctx, cycle):
        # the e memory: the data of the previous cycle's address (junk where no row is)
        data = [rng.randrange(1 << 17) for _ in range(S)]
        if read[0] is not None:
            row, beat = read[0]
            e = rows[row]["e"][beat * S:beat * S + S]
            data = e + data[len(e):]
        ctx.set(dut.e_read.data, data)
        bank, beat = divmod(ctx.get(dut.e_read.addr), depth)
        read[0] = (reading[bank][0], beat) if reading.get(bank) else None
        if ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready):
            k = len(starts)
            starts.append(cycle)
            reading[k % E_BANKS].append(k)
        if ctx.get(dut.release):
            bank = ctx.get(dut.release_bank)
            releases.append((cycle, reading[bank].pop(0)))

    res = run_streams(dut, sources={"rows": inputs}, sinks={"o": len(want_o), "row": len(rows)},
                      gap=gap, stall=stall, rng=rng, watch=watch, quiet=10,
                      max_cycles=40 * len(want_o) + 40 * len(rows) + 200)
    assert res["beats"]["o"] == want_o
    for k, (got, row) in enumerate(zip(res["beats"]["row"], rows, strict=True)):
        want = {"p_max": row["p_max"], "esum": row["esum"], "n": row["n"], "max": row["max"],
                "error": row["error"]}
        assert got == want, f"row {k}"
    for k, (t, row) in enumerate(zip(starts, inputs, strict=True)):
        # released at the last read: at once unless the credit (o stalled) held reads back
        assert releases[k][1] == k and releases[k][0] >= t + row["beats"], f"row {k}: release"
        assert stall or releases[k][0] == t + row["beats"], f"row {k}: release"
        if k:
            assert t >= starts[k - 1] + inputs[k - 1]["beats"], f"row {k} taken early"
    if stall == 0.0:
        seen, first = res["seen"]["o"], 0
        for k, (t, row) in enumerate(zip(starts, inputs, strict=True)):
            assert res["seen"]["row"][k] == t + RowOutput.latency, f"row {k}: row latency"
            for b in range(row["beats"]):
                assert seen[first + b] == t + 1 + b + dut.latency, f"row {k} beat {b}: latency"
            first += row["beats"]
    return res


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.3, 0.5)])
def test_rows(name, gap, stall):
    seed = pick_seed()
    cfg = CONFIGS[name]
    run(cfg, make_rows(cfg, seed, 20), gap=gap, stall=stall, seed=seed)


def test_latencies():
    cfg = AttentionConfig()
    assert NormalisePass(config=cfg).latency == cfg.softmax_out_latency == 6
    assert RowOutput.latency + 1 == cfg.softmax_row_gap


def test_bad_config():
    for unit in (NormalisePass, RowOutput):
        with pytest.raises(TypeError, match="AttentionConfig"):
            unit(config=None)
