"""The index-buffer scans (hw/memory/scan.py) in the Amaranth simulator: `SlotScan` reads a slot's
survivors back from its half of the index buffer and gives the runs of consecutive tokens
(`golden.dram_image.coalesce`) at positions 0, 1, ... of the job, the preferred slot first when
both want a scan, reads no further than the intake has written, stops at a bad list, reports
every item and pulses ``done`` for the scanned slot once the reader is drained; the first item
comes `SCAN_START_LATENCY` cycles after ``wanted``; under random backpressure on the runs."""

import os
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from spatten.config import AttentionConfig, Config
from spatten.golden.dram_image import buffer_runs
from spatten.hw.memory.job_slots import slot_layout
from spatten.hw.memory.scan import SCAN_START_LATENCY, SlotScan
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8))
N = CFG.attention.capacity


class Harness(wiring.Component):
    """A `SlotScan` on an index buffer holding ``index`` (one token per position)."""

    def __init__(self, index):
        self.index = index
        self.scan = SlotScan(config=CFG)
        super().__init__({name: member for name, member in self.scan.signature.members.items()
                          if name not in ("rd_addr", "rd_data")})

    def elaborate(self, platform):
        m = Module()
        m.submodules.scan = scan = self.scan
        m.submodules.index = index = Memory(shape=16, depth=N, init=self.index)
        port = index.read_port()
        m.d.comb += [port.addr.eq(scan.rd_addr), scan.rd_data.eq(port.data)]
        for name, member in self.signature.members.items():
            if member.is_port:
                mine, theirs = getattr(self, name), getattr(scan, name)
                m.d.comb += theirs.eq(mine) if member.flow == In else mine.eq(theirs)
        wiring.connect(m, scan.runs, wiring.flipped(self.runs))
        return m


def slot(n, banks, written=None, list_bad=0):
    return {"job": {"n": n}, "banks": banks, "written": n if written is None else written,
            "intake_done": int(written is None), "list_bad": list_bad}


def simulate(index, slots, wanted, preferred, *, runs, stall=0.0, seed=0, written_later=None):
    dut = Harness(index)
    want = [wanted & 1, wanted >> 1]
    log = {"done": [], "items": [], "first_item": None}

    async def setup(ctx):
        ctx.set(dut.slots, dut.slots.shape().const([slot_layout(CFG).const(s) for s in slots]))
        ctx.set(dut.preferred, preferred)
        ctx.set(dut.drained, 1)
        ctx.set(dut.wanted, wanted)

    def watch(ctx, cycle):
        if written_later and cycle == written_later[0]:
            s, value = written_later[1]
            slots[s] = value
            ctx.set(dut.slots, dut.slots.shape().const([slot_layout(CFG).const(x)
                                                         for x in slots]))
        if ctx.get(dut.item):
            log["items"].append(ctx.get(dut.item_position))
            if log["first_item"] is None:
                log["first_item"] = cycle
        if ctx.get(dut.done):
            s = ctx.get(dut.slot)
            log["done"].append(s)
            want[s] = 0                   # the slot's rows are in: no scan wanted any more
            ctx.set(dut.wanted, want[0] | want[1] << 1)

    res = run_streams(dut, sources={}, sinks={"runs": runs}, stall=stall, seed=seed,
                      setup=setup, watch=watch, quiet=20)
    return res, log


@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_both_slots_preferred_first(stall):
    seed = SEED + int(10 * stall)
    print("seed", seed)
    rng = random.Random(seed)
    lower = sorted(rng.sample(range(200), 20))
    upper = sorted(rng.sample(range(200), 11))
    index = lower + [0] * (N // 2 - len(lower)) + upper + [0] * (N // 2 - len(upper))
    slots = [slot(len(lower), 0b01), slot(len(upper), 0b10)]
    want = buffer_runs(upper) + buffer_runs(lower)
    res, log = simulate(index, slots, 0b11, 1, runs=len(want), stall=stall, seed=seed)
    assert res["beats"]["runs"] == want
    assert log["done"] == [1, 0]
    assert log["items"] == [N // 2 + i for i in range(len(upper))] + list(range(len(lower)))
    if stall == 0.0:
        assert log["first_item"] == SCAN_START_LATENCY


def test_scan_waits_for_the_intake():
    """Only the written positions are read; the rest follow once written."""
    tokens = [3, 4, 5, 9, 10, 30]
    index = tokens + [0] * (N - len(tokens))
    slots = [slot(6, 0b01, written=2), slot(1, 0b10)]
    res, log = simulate(index, slots, 0b01, 0, runs=3, written_later=(30, (0, slot(6, 0b01))))
    assert res["beats"]["runs"] == buffer_runs(tokens)
    assert log["items"][:2] == [0, 1] and log["done"] == [0]
    assert res["seen"]["runs"][0] > 30                    # the run 3, 4, 5 waited for 5


def test_bad_list_stops_the_scan():
    """Positions 0 and 1 written, then the list goes bad: their run closes, the scan ends."""
    tokens = [3, 4, 5, 9]
    index = tokens + [0] * (N - len(tokens))
    slots = [slot(4, 0b01, written=2), slot(1, 0b10)]
    res, log = simulate(index, slots, 0b01, 1, runs=1,
                        written_later=(30, (0, slot(4, 0b01, written=2, list_bad=1))))
    assert res["beats"]["runs"] == buffer_runs(tokens[:2]) and log["done"] == [0]
    assert res["seen"]["runs"][0] > 30


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config"):
        SlotScan(config="default")
