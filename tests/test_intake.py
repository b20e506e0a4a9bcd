"""The core's front (hw/memory/intake.py) with real job slots, in the Amaranth simulator under
random gaps on the job and survivor streams and random backpressure on the K MSB runs: the runs are
`golden.dram_image.buffer_runs` of the survivors at positions 0, 1, ... of the job's bank, the
index buffer gets every survivor at its position (from the bank's first), a good job is closed
READY in its banks, a bad list BAD with BAD_INDEX (swallowed to its last beat), a refused job BAD
with its code (its survivors swallowed), and the first survivor may follow its descriptor by
`ADMIT_LATENCY`."""

import os

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spatten.config import AttentionConfig, Config, MemoryConfig
from spatten.golden.dram_image import buffer_runs
from spatten.hw.memory.fetch import run_layout
from spatten.hw.memory.intake import ADMIT_LATENCY, Intake
from spatten.hw.memory.job_slots import (
    CoreError,
    JobSlots,
    SlotState,
    job_layout,
    pick,
    slot_layout,
    survivor_layout,
)
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8), memory=MemoryConfig(group_size=2))
N = CFG.attention.capacity
EVENTS = ("admit", "admit_job", "admit_banks", "admit_error", "admit_code", "survivor",
          "survivor_written", "survivor_bad", "survivor_last", "close", "close_state",
          "close_bad_list")


class Harness(wiring.Component):
    """`Intake` + `JobSlots`; the index buffer's write port and the slots are visible."""

    def __init__(self):
        super().__init__({
            "job": In(stream.Signature(job_layout(CFG))),
            "survivors": In(stream.Signature(survivor_layout(CFG))),
            "k_msb_runs": Out(stream.Signature(run_layout(CFG.memory.token_bits, N))),
            "slot0": Out(slot_layout(CFG)),
            "slot1": Out(slot_layout(CFG)),
            "index_addr": Out(range(N)),
            "index_data": Out(CFG.memory.token_bits),
            "index_en": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.intake = intake = Intake(config=CFG)
        m.submodules.slots = slots = JobSlots(config=CFG)
        wiring.connect(m, wiring.flipped(self.job), intake.job)
        wiring.connect(m, wiring.flipped(self.survivors), intake.survivors)
        wiring.connect(m, intake.k_msb_runs, wiring.flipped(self.k_msb_runs))
        m.d.comb += [intake.slot.eq(slots.intake), intake.k_msb_busy.eq(0),
                     intake.other_banks.eq(pick(m, slots.slots, ~slots.intake_slot).banks),
                     self.slot0.eq(slots.slots[0]), self.slot1.eq(slots.slots[1]),
                     self.index_addr.eq(intake.index_write.addr),
                     self.index_data.eq(intake.index_write.data),
                     self.index_en.eq(intake.index_write.en)]
        for name in EVENTS:
            m.d.comb += getattr(slots, name).eq(getattr(intake, name))
        return m


def job(n, **kw):
    fields = {"n": n, "n_stored": 40, "k_msb_base": 0, "k_lsb_base": 0x100, "v_base": 0x200,
              "q_base": [0x300, 0x400], "d_log2": 4, "k_v": n, "renorm": 0, "shift": 0,
              "scale": 1, "post_shift": 0, "pq": 0, "tau": 0, "fill_mid": 1}
    fields.update(kw)
    return fields


def run(jobs, lists, *, runs, gap=0.0, stall=0.0, seed=0):
    """Jobs and their survivor lists through the harness; returns (result, index writes, slots)."""
    dut = Harness()
    writes, final = [], {}
    beats = [{"index": t, "last": int(i == len(lst) - 1)} for lst in lists
             for i, t in enumerate(lst)]

    def watch(ctx, cycle):
        if ctx.get(dut.index_en):
            writes.append((ctx.get(dut.index_addr), ctx.get(dut.index_data)))

    async def finish(ctx):
        for _ in range(4):
            await ctx.tick()
        final[0], final[1] = ctx.get(dut.slot0), ctx.get(dut.slot1)

    res = run_streams(dut, sources={"job": jobs, "survivors": beats},
                      sinks={"k_msb_runs": runs}, gap=gap, stall=stall, seed=seed, quiet=8,
                      watch=watch, finish=finish, max_cycles=5000)
    return res, writes, final


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.5), (0.3, 0.8)])
def test_two_jobs_into_their_banks(gap, stall):
    seed = SEED + int(10 * gap + 100 * stall)
    print("seed", seed)
    a, b = [1, 2, 3, 7, 8, 20], [0, 5, 6, 7, 39]
    want = buffer_runs(a) + buffer_runs(b)     # positions within the job's bank
    res, writes, final = run([job(len(a)), job(len(b))], [a, b], runs=len(want), gap=gap,
                             stall=stall, seed=seed)
    assert res["beats"]["k_msb_runs"] == want
    assert writes == [(i, t) for i, t in enumerate(a)] + [(N // 2 + i, t) for i, t in enumerate(b)]
    assert [final[s].state for s in (0, 1)] == [SlotState.READY, SlotState.READY]
    assert [final[s].banks for s in (0, 1)] == [0b01, 0b10]
    assert [final[s].written for s in (0, 1)] == [len(a), len(b)]
    assert not final[0].error and not final[1].error
    if gap == 0.0:
        job_cycle, first_survivor = res["accepted"]["job"][0], res["accepted"]["survivors"][0]
        assert first_survivor - job_cycle == ADMIT_LATENCY


def test_a_job_over_half_takes_both_banks():
    lst = list(range(3, 3 + N // 2 + 1))
    res, writes, final = run([job(len(lst))], [lst], runs=1, gap=0.2, stall=0.2, seed=SEED)
    assert res["beats"]["k_msb_runs"] == buffer_runs(lst)
    assert final[0].banks == 0b11 and final[0].state == SlotState.READY


@pytest.mark.parametrize("lst,n", [([4, 4, 9], 3), ([3, 41], 2), ([1, 2, 3], 4), ([5, 6], 1)])
def test_bad_lists_are_swallowed(lst, n):
    """Repeated, beyond n_stored, ending before n, or running past n: BAD_INDEX; the list is
    consumed to its last beat and the next job comes in as usual."""
    good = [10, 11]
    first_bad = next((i for i, t in enumerate(lst)
                      if (i and t <= lst[i - 1]) or t >= 40), None)
    written = lst[:first_bad] if first_bad is not None else lst[:n]
    runs = buffer_runs(written) + buffer_runs(good)
    res, writes, final = run([job(n), job(len(good))], [lst, good], runs=len(runs), gap=0.3,
                             stall=0.3, seed=SEED + n)
    assert res["beats"]["k_msb_runs"] == runs
    assert final[0].state == SlotState.BAD and final[0].code == CoreError.BAD_INDEX
    assert final[1].state == SlotState.READY and not final[1].error


@pytest.mark.parametrize("bad,code", [
    (dict(n=0), CoreError.N_ZERO), (dict(n=N + 1), CoreError.N_OVER_CAPACITY),
    (dict(v_base=0x208), CoreError.MISALIGNED),
    (dict(q_base=[0x300, 0x401]), CoreError.MISALIGNED),
    (dict(d_log2=2), CoreError.BAD_HEAD_DIM), (dict(d_log2=5), CoreError.BAD_HEAD_DIM),
    (dict(k_v=0), CoreError.K_V_ZERO)])
def test_refused_jobs(bad, code):
    """Refused before any fetch: no run, no index write, its survivors (none for n = 0)
    swallowed; the next job is taken as usual."""
    lst, good = [1, 2, 3], [7]
    fields = {**job(3), **bad}
    lists = [good] if fields["n"] == 0 else [lst, good]
    res, writes, final = run([fields, job(1)], lists, runs=1, gap=0.3, stall=0.3, seed=SEED)
    assert res["beats"]["k_msb_runs"] == buffer_runs(good)
    assert writes == [(0, 7)]
    assert final[0].state == SlotState.BAD and final[0].refused and final[0].code == code
    assert final[0].banks == 0
    assert final[1].state == SlotState.READY


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config, not 3"):
        Intake(config=3)
