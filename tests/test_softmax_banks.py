# amaranth: UnusedElaboratable=no
"""The softmax's e-bank ring (`hw/attention/softmax_banks.py`): rows claimed, summed, given their
reciprocal, taken by the normalise pass and released, with random delays between the phases and
random backpressure on ``sums`` (one row at a time, as the reciprocal takes them) and ``rows``;
every row's figures arrive in order and intact, no
bank is claimed again before its release, and each phase sees a bank one cycle after the
previous phase is done with it. Set SPATTEN_SEED to fix the seed."""

import random

import pytest

from spatten.config import AttentionConfig
from spatten.hw.attention.softmax_banks import EBankRing
from spatten.hw.attention.softmax_common import E_BANKS
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig(qk_mults=16, capacity=64)


def run(count, *, gap, stall, delay, seed):
    rng = random.Random(seed)
    cfg = CFG
    metas = [{"error": rng.randrange(2), "n": rng.randrange(cfg.capacity + 1),
              "beats": rng.randrange(1, 17), "last_count": rng.randrange(5),
              "max": rng.randrange(-(1 << 20), 1 << 20)} for _ in range(count)]
    esums = [rng.randrange(1 << cfg.esum_width) for _ in range(count)]
    results = [{"recip": rng.randrange(1 << 17),
                "norm": rng.randrange(cfg.esum_width - cfg.prob_bits)} for _ in range(count)]
    dut = EBankRing(config=cfg)
    events = {"summed": {}, "reciprocals": {}, "release": {}}
    log = {"claim": [], "summed": [], "sums": [], "recip": [], "rows": [], "release": []}
    outstanding = []
    sums = []

    last = {kind: -1 for kind in events}

    def schedule(kind, cycle, value):
        """An event of the phase `kind` after a random delay, after its previous one (each
        phase handles the rows in order)."""
        last[kind] = max(cycle + 1 + rng.randrange(delay + 1), last[kind] + 1)
        events[kind][last[kind]] = value

    def watch(ctx, cycle):
        summed = events["summed"].pop(cycle, None)
        ctx.set(dut.summed.valid, summed is not None)
        if summed is not None:
            k, bank = summed
            ctx.set(dut.summed.bank, bank)
            ctx.set(dut.summed.esum, esums[k])
            log["summed"].append(cycle)
        recip = events["reciprocals"].pop(cycle, None)
        ctx.set(dut.reciprocals.valid, recip is not None)
        if recip is not None:
            ctx.set(dut.reciprocals.payload, results[recip])
            assert ctx.get(dut.reciprocals.ready)
            log["recip"].append(cycle)
        bank = events["release"].pop(cycle, None)
        ctx.set(dut.release, bank is not None)
        ctx.set(dut.release_bank, bank or 0)
        if bank is not None:
            outstanding.remove(bank)
            log["release"].append(cycle)
        if ctx.get(dut.claim.valid) and ctx.get(dut.claim.ready):
            bank = ctx.get(dut.claim_bank)
            assert bank not in outstanding and len(outstanding) < E_BANKS, \
                f"cycle {cycle}: bank {bank} claimed while in use"
            outstanding.append(bank)
            schedule("summed", cycle, (len(log["claim"]), bank))
            log["claim"].append(cycle)
        # the reciprocal: one row at a time, taken under random stalls
        busy = len(log["sums"]) > len(log["recip"])
        ctx.set(dut.sums.ready, not busy and rng.random() >= stall)
        if ctx.get(dut.sums.valid) and ctx.get(dut.sums.ready):
            schedule("reciprocals", cycle, len(log["sums"]))
            log["sums"].append(cycle)
            sums.append(ctx.get(dut.sums.payload))
        if ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready):
            schedule("release", cycle, ctx.get(dut.rows.payload.bank))
            log["rows"].append(cycle)

    res = run_streams(dut, sources={"claim": metas}, sinks={"rows": count},
                      gap=gap, stall=stall, rng=rng, watch=watch, quiet=delay + 4,
                      max_cycles=count * (4 * delay + 20) * 4 + 100)
    assert sums == esums
    for k, row in enumerate(res["beats"]["rows"]):
        want = dict(metas[k], bank=k % E_BANKS, esum=esums[k], **results[k])
        assert row == want, f"row {k}: {row} != {want}"
    if stall == 0.0:
        # each phase sees its bank the cycle after the previous phase was done with it
        for k in range(count):
            # (the test's reciprocal takes the next sum as it gives back the last)
            prev_sum = max(log["sums"][k - 1] + 1, log["recip"][k - 1]) if k else 0
            prev_row = log["rows"][k - 1] + 1 if k else 0
            assert log["sums"][k] == max(log["summed"][k] + 1, prev_sum), f"row {k}: sums"
            assert log["rows"][k] == max(log["recip"][k] + 1, prev_row), f"row {k}: rows"
    if gap == 0.0:
        for k in range(E_BANKS, count):
            assert log["claim"][k] <= max(log["release"][k - E_BANKS], log["claim"][k - 1]) + 1
    return res


@pytest.mark.parametrize("gap,stall,delay", [(0.0, 0.0, 0), (0.0, 0.0, 12), (0.5, 0.0, 6),
                                             (0.0, 0.6, 6), (0.3, 0.5, 20)])
def test_phases_in_turn(gap, stall, delay):
    run(40, gap=gap, stall=stall, delay=delay, seed=pick_seed())


def test_bad_config():
    with pytest.raises(TypeError, match="AttentionConfig"):
        EBankRing(config="default")
