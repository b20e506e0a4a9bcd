# amaranth: UnusedElaboratable=no
"""The query pipeline's issuer (`hw/attention/query_issuer.py`): the passes of a run's queries in
the order `golden.progressive.issue_order` gives (one full pass each without progressive
quantization), each with its query's data, tag and precision, under random gaps on ``q``, random
backpressure on ``passes`` and ``in_flight`` and decisions that come late; full passes wait for
``lsb_ready`` and ask for it; a bad run's queries are swallowed; ``start`` clears the run.
Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.golden.progressive import issue_order
from spatten.hw.attention.query_issuer import RING, QueryIssuer, query_layout
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)


@pytest.fixture
def seed():
    return pick_seed()


def random_queries(rng, count):
    lo, hi = CFG.data_min, CFG.data_max
    return [{"data": [rng.randint(lo, hi) for _ in range(CFG.qk_mults)],
             "last": int(j == count - 1)} for j in range(count)]


@pytest.mark.parametrize("pq", [0, 1])
@pytest.mark.parametrize("count", [1, 2, 3, 11])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.4)])
def test_passes_in_issue_order(pq, count, gap, stall, seed):
    rng = random.Random(seed)
    queries = random_queries(rng, count)
    refetch = [rng.randrange(2) for _ in range(count)] if pq else [1] * count
    order = issue_order(refetch) if pq else [("F", j) for j in range(count)]
    want_flight = [{"tag": j, "full": int(kind == "F")} for kind, j in order]
    lsb_at = rng.randrange(0, 40)          # the LSB plane arrives in this cycle
    dut = QueryIssuer(config=CFG)
    log = {"decisions": [], "pending": [], "full_at": [], "needed": 0, "pass_full": []}

    def watch(ctx, cycle):
        ctx.set(dut.start, cycle == 0)
        ctx.set(dut.running, cycle >= 1)
        ctx.set(dut.pq, pq)
        ctx.set(dut.lsb_ready, cycle >= lsb_at)
        needed = ctx.get(dut.lsb_needed)
        assert not (needed and cycle >= lsb_at), "lsb_needed while the plane is there"
        log["needed"] += needed
        # the decision of an MSB pass comes a few cycles after its pass left `in_flight`
        dec = dut.decisions
        ready_now = log["pending"] and log["pending"][0][0] <= cycle
        ctx.set(dec.valid, bool(ready_now))
        if ready_now:
            ctx.set(dec.payload, log["pending"][0][1])
            if ctx.get(dec.ready):
                log["decisions"].append(log["pending"].pop(0)[1])
        flight = dut.in_flight
        if ctx.get(flight.valid) and ctx.get(flight.ready):
            beat = to_py(ctx.get(flight.payload))
            if pq and not beat["full"]:
                log["pending"].append((cycle + rng.randrange(1, 12), refetch[beat["tag"]]))
        if log["pass_full"] and log["pass_full"][-1][0] == cycle - 1:
            assert ctx.get(dut.pass_full) == log["pass_full"][-1][1]
        if ctx.get(dut.passes.valid) and ctx.get(dut.passes.ready):
            full = want_flight[len(log["pass_full"])]["full"]
            log["pass_full"].append((cycle, full))
            if full:
                log["full_at"].append(cycle)

    async def finish(ctx):
        assert ctx.get(dut.accepted) == count and ctx.get(dut.last_seen) == 1

    res = run_streams(dut, sources={"q": queries},
                      sinks={"passes": len(order), "in_flight": len(order)}, rng=rng, gap=gap,
                      stall=stall, watch=watch, quiet=30, finish=finish, max_cycles=2000)
    assert res["beats"]["passes"] == [queries[j]["data"] for _, j in order]
    assert res["beats"]["in_flight"] == want_flight
    assert all(c > lsb_at for c in log["full_at"]), "a full pass before the LSB plane"
    if not pq and lsb_at > res["accepted"]["q"][0] + 1:
        # the first query's pass is due the cycle after the query is taken
        assert log["needed"], "a full pass waited for the LSB plane without asking for it"
    assert log["decisions"] == [refetch[j] for kind, j in order if kind == "M"]
    # the ring holds RING queries: a query is taken only when at most RING - 1 of those taken
    # before have not yet been issued (one more may sit in the pass register)
    passed = [c for c, _ in log["pass_full"]]
    for k, taken in enumerate(res["accepted"]["q"]):
        assert k < RING + 1 + sum(c < taken for c in passed), f"query {k} overfills the ring"


def test_a_bad_run_swallows_its_queries_then_start_clears():
    """Draining: every query is taken up to the run's final one (then ``q`` is not ready),
    nothing is issued or counted; ``start`` clears ``last_seen``."""
    rng = random.Random(3)
    dut = QueryIssuer(config=CFG)
    queries = random_queries(rng, 5)

    async def bench(ctx):
        ctx.set(dut.draining, 1)
        for query in queries:
            ctx.set(dut.q.payload, query)
            ctx.set(dut.q.valid, 1)
            assert ctx.get(dut.q.ready) and not ctx.get(dut.passes.valid)
            await ctx.tick()
        assert ctx.get(dut.last_seen) and not ctx.get(dut.q.ready)
        assert ctx.get(dut.accepted) == 0 and not ctx.get(dut.in_flight.valid)
        ctx.set(dut.draining, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        assert not ctx.get(dut.last_seen) and not ctx.get(dut.q.ready)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_layout_and_bad_parameters():
    assert query_layout(CFG).size == CFG.qk_mults * CFG.data_width + 1
    with pytest.raises(TypeError, match="config must be an AttentionConfig, not 3"):
        QueryIssuer(config=3)
    with pytest.raises(TypeError):
        QueryIssuer(CFG)                                    # keyword-only
