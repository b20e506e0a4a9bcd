# amaranth: UnusedElaboratable=no
"""The top-k engine's run status (`hw/topk/radix_status.py`) in the Amaranth simulator: runs of
random length with idle cycles, a selection that ends early or with the run, output beats;
every counter and flag against a model of the contract, STATUS_LATENCY after each event; one
lane; bad parameters. Set SPATTEN_SEED to change the seed."""

import os
import random

import pytest
from amaranth.sim import Simulator

from spatten.hw.topk.radix_status import STATUS_LATENCY, RunStatus

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_run_status(lanes):
    seed = SEED + lanes
    print("seed", seed)
    rng = random.Random(seed)
    dut = RunStatus(lanes=lanes, capacity=64)
    events = []                         # per cycle: the inputs
    for _ in range(8):
        beats = rng.randrange(1, 5)
        for b in range(beats):
            events += [{}] * rng.randrange(3)
            events.append({"take": 1, "first": int(b == 0), "last": int(b == beats - 1)})
        select = rng.randrange(0, 6)
        events += [{}] * select
        if rng.random() < 0.7:          # the threshold is known before the run ends
            events.append({"select_done": 1})
        for _ in range(rng.randrange(0, 4)):
            events += [{}] * rng.randrange(2)
            events.append({"out_take": 1, "out_count": rng.randrange(lanes + 1)})
        events.append({"out_take": 1, "out_count": rng.randrange(lanes + 1), "end": 1})
        events += [{}] * rng.randrange(3)

    def model():
        """The counters after each cycle, as the contract says."""
        total = select = selected = 0
        busy = done = counting_total = counting_select = False
        out = []
        for e in events:
            total += counting_total
            select += counting_select
            if e.get("out_take"):
                selected += e["out_count"]
            if e.get("select_done"):
                counting_select = False
            if e.get("end"):
                counting_total = counting_select = busy = False
                done = True
            if e.get("take"):
                counting_total = True
                if e["first"]:
                    total, select, selected, busy, done = 1, 0, 0, True, False
                if e["last"]:
                    counting_select = True
            out.append((total, select, selected, int(busy), int(done)))
        return out

    want = model()
    assert any(w[1] > 0 for w in want) and any(w[4] for w in want)

    async def bench(ctx):
        for e, after in zip(events, want, strict=True):
            for port in ("take", "first", "last", "select_done", "out_take", "out_count", "end"):
                ctx.set(getattr(dut, port), e.get(port, 0))
            for _ in range(STATUS_LATENCY):
                await ctx.tick()
            got = (ctx.get(dut.total_cycles), ctx.get(dut.select_cycles), ctx.get(dut.selected),
                   ctx.get(dut.busy), ctx.get(dut.done))
            assert got == after, (e, got, after)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"lanes": 0, "capacity": 8}, ValueError, "lanes must be from 1 to 32"),
    ({"lanes": 4, "capacity": 0}, ValueError, "capacity must be at least 1"),
    ({"lanes": "4", "capacity": 8}, TypeError, "lanes must be an int"),
])
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        RunStatus(**kwargs)
