"""The core's Q row ring (hw/memory/query_rows.py) in the Amaranth simulator with a model reader:
each query's row is asked for once (its head's plane, one run of one row into the next ring slot),
rows leave in query order with their job's slot and last flag, at most ``q_slots`` are in the
ring, a head outside the group is fetched as head 0 and flagged, a refused job's queries are
dropped; a fetched row at the ring's head is offered `ROW_READY_LATENCY` cycle after its
``done``; under random gaps on the queries, random reader delays and random backpressure."""

import os
import random

import pytest

from spatten.config import AttentionConfig, Config, MemoryConfig
from spatten.hw.memory.job_slots import SlotState, slot_layout
from spatten.hw.memory.query_rows import ROW_READY_LATENCY, QueryRows
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
Q_BASE = [0x1000, 0x2000, 0x3000]


def config(q_slots):
    return Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64,
                                            softmax_lanes=4, topk_lanes=8),
                  memory=MemoryConfig(group_size=3, q_slots=q_slots))


def row_of(base, row):
    """The model plane's row: distinct small integers per (plane, row)."""
    return [((base >> 12) * 37 + row * 5 + e) % 2000 - 1000 for e in range(16)]


def simulate(cfg, queries, *, refused=False, gap=0.0, stall=0.0, delay=(1, 1), seed=0,
             rows=None):
    dut = QueryRows(config=cfg)
    rng = random.Random(seed)
    slot = slot_layout(cfg).const({
        "state": SlotState.INTAKE, "refused": int(refused),
        "job": {"d_log2": 4, "q_base": Q_BASE, "n": 8, "k_v": 8}})
    asked, pending, log = [], [], {"bad_head": 0, "taken": 0, "done": [], "valid": []}

    async def setup(ctx):
        ctx.set(dut.slot, slot)
        ctx.set(dut.slot_index, 1)

    def watch(ctx, cycle):
        ctx.set(dut.cmd.ready, rng.random() >= stall)
        write = pending[0] if pending and pending[0]["at"] <= cycle else None
        ctx.set(dut.wr.valid, write is not None)
        ctx.set(dut.done, write is not None)
        if write is not None:
            pending.pop(0)
            ctx.set(dut.wr.payload, dut.wr.payload.shape().const(
                {"addr": write["dst"], "data": write["data"], "en": 0b11}))
            log["done"].append(cycle)
        log["valid"].append(ctx.get(dut.rows.valid))
        log["bad_head"] += ctx.get(dut.bad_head)
        log["taken"] += ctx.get(dut.queries_taken)
        if ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready):
            cmd, base = ctx.get(dut.cmd.payload), ctx.get(dut.base)
            assert cmd.count == 1 and ctx.get(dut.d_log2) == 4
            asked.append((base, cmd.start))
            at = max([cycle + rng.randint(*delay)] + [p["at"] + 1 for p in pending[-1:]])
            pending.append({"at": at, "dst": cmd.dst, "data": row_of(base, cmd.start)})

    beats = [{"head": h, "row": r, "last": int(i == len(queries) - 1)}
             for i, (h, r) in enumerate(queries)]
    n_rows = 0 if refused else len(queries) if rows is None else rows
    res = run_streams(dut, sources={"queries": beats}, sinks={"rows": n_rows}, gap=gap,
                      stall=stall, seed=seed, setup=setup, watch=watch, quiet=12)
    return res, asked, log


@pytest.mark.parametrize("q_slots,gap,stall,delay", [(4, 0.0, 0.0, (1, 1)),
                                                     (4, 0.4, 0.4, (1, 9)),
                                                     (2, 0.2, 0.6, (0, 4)),
                                                     (1, 0.0, 0.3, (2, 6))])
def test_rows_in_query_order(q_slots, gap, stall, delay):
    seed = SEED + q_slots + int(10 * gap)
    print("seed", seed)
    rng = random.Random(seed)
    queries = [(rng.randrange(3), rng.randrange(40)) for _ in range(11)] + [(3, 7)]
    res, asked, log = simulate(config(q_slots), queries, gap=gap, stall=stall, delay=delay,
                               seed=seed)
    planes = [Q_BASE[h] if h < 3 else Q_BASE[0] for h, _ in queries]
    assert asked == [(b, r) for b, (_, r) in zip(planes, queries, strict=True)]
    want = [{"data": row_of(b, r), "last": int(i == len(queries) - 1), "slot": 1}
            for i, (b, (_, r)) in enumerate(zip(planes, queries, strict=True))]
    assert res["beats"]["rows"] == want
    assert log["bad_head"] == 1 and log["taken"] == 1
    # never more queries taken than the ring holds
    assert max(sum(1 for a in res["accepted"]["queries"] if a <= c)
               - sum(1 for s in res["seen"]["rows"] if s < c)
               for c in range(len(log["valid"]))) <= q_slots
    if gap == stall == 0.0:
        assert res["seen"]["rows"][0] - log["done"][0] == ROW_READY_LATENCY


def test_refused_job_queries_are_dropped():
    res, asked, log = simulate(config(4), [(0, 1), (1, 2), (0, 3)], refused=True)
    assert asked == [] and res["beats"]["rows"] == [] and log["taken"] == 1
    assert res["accepted"]["queries"] == [0, 1, 2]          # one a cycle, at once


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config"):
        QueryRows(config=None)
    with pytest.raises(ValueError, match="q_slots must be an integer from 1 to 16, not 0"):
        config(0)
