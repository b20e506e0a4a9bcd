# amaranth: UnusedElaboratable=no
"""The query pipeline's pair router (`hw/attention/pair_router.py`): without pruning every key of a
row is a pair (its index its place in the row); with pruning the rows go to the selector and its
pairs come back; with ``v_wait`` the kept indices leave first and prob x V starts a query only after
its ``v_done`` pulse (``v_stall`` meanwhile); all under random gaps on the inputs and random
backpressure on the outputs. Set SPATTEN_SEED to fix the seed."""

import random

import pytest

from spatten.config import AttentionConfig
from spatten.hw.attention.pair_router import PairRouter, kept_depth
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)
S = CFG.softmax_lanes


@pytest.fixture
def seed():
    return pick_seed()


def rows_of(rng, count, element):
    """`count` rows of 1..3 beats of S lanes, `element(rng)` each (0 past ``count``)."""
    beats = []
    for _ in range(count):
        n = rng.randint(1, 3 * S)
        for lo in range(0, n, S):
            k = min(S, n - lo)
            beats.append({"data": [element(rng) for _ in range(k)] + [element(None)] * (S - k),
                          "count": k, "last": int(lo + S >= n)})
    return beats


def prob(rng):
    return rng.randrange(1 << CFG.prob_bits) if rng else 0


def pair(rng):
    if rng is None:
        return {"index": 0, "prob": 0}
    return {"index": rng.randrange(CFG.capacity), "prob": rng.randrange(1 << CFG.prob_bits)}


def every_key(beats):
    """The pairs of rows without pruning: each key with its place in its row."""
    out, base = [], 0
    for b in beats:
        out.append({"data": [{"index": base + j, "prob": p} for j, p in enumerate(b["data"])],
                    "count": b["count"], "last": b["last"]})
        base = 0 if b["last"] else base + S
    return out


def to_pv(beats):
    """Pair beats as prob x V's input beats."""
    return [{"index": [d["index"] for d in b["data"]], "prob": [d["prob"] for d in b["data"]],
             "count": b["count"], "last": b["last"]} for b in beats]


@pytest.mark.parametrize("prune", [0, 1])
@pytest.mark.parametrize("v_wait", [0, 1])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.5)])
def test_pairs_reach_prob_x_v(prune, v_wait, gap, stall, seed):
    rng = random.Random(seed)
    count = 12
    probs = rows_of(rng, count, prob)
    selected = rows_of(rng, count, pair) if prune else []
    pairs = selected if prune else every_key(probs)
    kept = [{"data": [d["index"] for d in b["data"]], "count": b["count"], "last": b["last"]}
            for b in pairs]
    dut = PairRouter(config=CFG)
    log = {"v_done": [], "due": [], "starts": [], "mid": False, "stalls": 0}

    def watch(ctx, cycle):
        ctx.set(dut.start, cycle == 0)
        ctx.set(dut.prune, prune)
        ctx.set(dut.v_wait, v_wait)
        # each query's V rows arrive a few cycles after its kept indices have left
        if ctx.get(dut.kept.valid) and ctx.get(dut.kept.ready) and \
                to_py(ctx.get(dut.kept.payload))["last"]:
            log["due"].append(max([cycle, *log["due"]]) + rng.randrange(1, 10))
        pulse = bool(log["due"]) and log["due"][0] == cycle
        ctx.set(dut.v_done, pulse)
        if pulse:
            log["v_done"].append(log["due"].pop(0))
        if not prune:
            assert not ctx.get(dut.to_select.valid)
        if not v_wait:
            assert not ctx.get(dut.kept.valid) and not ctx.get(dut.v_stall)
        stalled = ctx.get(dut.v_stall)
        log["stalls"] += stalled
        assert not (stalled and ctx.get(dut.pairs.valid))
        if ctx.get(dut.pairs.valid) and ctx.get(dut.pairs.ready):
            if not log["mid"]:
                log["starts"].append(cycle)
            log["mid"] = not to_py(ctx.get(dut.pairs.payload))["last"]

    sinks = {"pairs": len(pairs)}
    sinks |= {"to_select": len(probs)} if prune else {}
    sinks |= {"kept": len(kept)} if v_wait else {}
    res = run_streams(dut, sources={"probs": probs, "selected": selected}, sinks=sinks, gap=gap,
                      stall=stall, rng=rng, watch=watch, quiet=20, max_cycles=5000)
    assert res["beats"]["pairs"] == to_pv(pairs)
    if prune:
        assert res["beats"]["to_select"] == probs
    if v_wait:
        assert res["beats"]["kept"] == kept
        # prob x V starts query i only after the i-th v_done pulse
        assert len(log["starts"]) == count
        assert all(s > v for s, v in zip(log["starts"], log["v_done"], strict=False))
        assert log["stalls"], "prob x V waited for V rows at least once"


def test_fifo_depth_and_bad_parameters():
    assert kept_depth(CFG) == 16 and kept_depth(AttentionConfig(capacity=8, qk_mults=8,
                                                                pv_mults=8, topk_lanes=4)) == 4
    with pytest.raises(TypeError, match="config must be an AttentionConfig, not None"):
        PairRouter(config=None)
    with pytest.raises(TypeError):
        PairRouter(CFG)                                     # keyword-only
