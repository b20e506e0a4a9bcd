"""The core's job slots (hw/memory/job_slots.py) in the Amaranth simulator: each event changes the
slot its pointer selects, one cycle later (`EVENT_LATENCY`), the pointers move on when their part is
done with a job, a later event wins over an earlier one on the same field, and a DRAM error
flags only a running job."""

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig, Config, MemoryConfig
from spatten.hw.memory.job_slots import (
    EVENT_LATENCY,
    CoreError,
    JobSlots,
    RowsState,
    SlotState,
    job_layout,
)

CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8), memory=MemoryConfig(group_size=2))


def job(**kw):
    fields = {"n": 5, "n_stored": 20, "k_msb_base": 0, "k_lsb_base": 0x100, "v_base": 0x200,
              "q_base": [0x300, 0x400], "d_log2": 4, "k_v": 5, "renorm": 0, "shift": 0,
              "scale": 1, "post_shift": 0, "pq": 0, "tau": 0, "fill_mid": 1}
    fields.update(kw)
    return job_layout(CFG).const(fields)


def simulate(steps):
    """Run ``steps``: a list of ({input: value} for one cycle, check(ctx, dut) after it)."""
    dut = JobSlots(config=CFG)

    async def tb(ctx):
        for inputs, check in steps:
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            for _ in range(EVENT_LATENCY):
                await ctx.tick()
            for name in inputs:
                if name not in ("admit_job", "admit_banks", "admit_code", "close_state"):
                    ctx.set(getattr(dut, name), 0)
            if check is not None:
                check(ctx, dut)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def slot(ctx, dut, s):
    return ctx.get(dut.slots[s])


def test_a_job_through_its_slot():
    seen = []

    def admitted(ctx, dut):
        s0 = slot(ctx, dut, 0)
        assert s0.state == SlotState.INTAKE and s0.job.n == 5 and s0.banks == 0b01
        assert s0.lsb == RowsState.WANTED and s0.v_prefetch == RowsState.WANTED
        assert not s0.error and not s0.refused and s0.written == 0
        assert ctx.get(dut.intake.job.v_base) == 0x200
        seen.append("admitted")

    def written(ctx, dut):
        s0 = slot(ctx, dut, 0)
        assert (s0.written, s0.list_bad, s0.intake_done) == (2, 0, 1)
        seen.append("written")

    def closed(ctx, dut):
        assert slot(ctx, dut, 0).state == SlotState.READY
        assert (ctx.get(dut.intake_slot), ctx.get(dut.run_slot)) == (1, 0)
        assert ctx.get(dut.running.state) == SlotState.READY
        seen.append("closed")

    def running(ctx, dut):
        s0 = slot(ctx, dut, 0)
        assert s0.state == SlotState.RUN and s0.lsb == RowsState.IN
        assert s0.queries_taken and ctx.get(dut.query_slot) == 1
        seen.append("running")

    def released(ctx, dut):
        s0 = slot(ctx, dut, 0)
        assert s0.state == SlotState.FREE and s0.banks == 0 and ctx.get(dut.run_slot) == 1
        seen.append("released")

    simulate([
        ({"admit": 1, "admit_job": job(), "admit_banks": 0b01}, admitted),
        ({"survivor": 1, "survivor_written": 1}, None),
        ({"survivor": 1, "survivor_written": 1, "survivor_last": 1}, written),
        ({"close": 1, "close_state": SlotState.READY}, closed),
        ({"run_start": 1, "lsb_in": 1, "lsb_slot": 0, "queries_taken": 1}, running),
        ({"release": 1}, released),
    ])
    assert seen == ["admitted", "written", "closed", "running", "released"]


def test_refused_and_progressive_jobs_want_nothing_at_once():
    def refused(ctx, dut):
        s0 = slot(ctx, dut, 0)
        assert s0.refused and s0.error and s0.code == CoreError.K_V_ZERO
        assert s0.lsb == RowsState.NOT_WANTED and s0.v_prefetch == RowsState.NOT_WANTED
        assert s0.state == SlotState.BAD and ctx.get(dut.intake_slot) == 1

    def pruned(ctx, dut):
        s1 = slot(ctx, dut, 1)
        assert s1.lsb == RowsState.NOT_WANTED and s1.v_prefetch == RowsState.NOT_WANTED
        assert s1.state == SlotState.INTAKE and not s1.refused

    simulate([
        ({"admit": 1, "admit_job": job(k_v=0), "admit_error": 1,
          "admit_code": CoreError.K_V_ZERO, "close": 1, "close_state": SlotState.BAD},
         refused),
        ({"admit": 1, "admit_job": job(pq=1, k_v=3), "admit_banks": 0b10}, pruned),
    ])


def test_later_events_win_and_dram_errors_flag_only_a_running_job():
    def both(ctx, dut):
        # the intake and the query pointer both at slot 0: BAD_HEAD (later) wins over BAD_INDEX
        s0 = slot(ctx, dut, 0)
        assert s0.state == SlotState.BAD and s0.error and s0.code == CoreError.BAD_HEAD

    def not_running(ctx, dut):
        assert slot(ctx, dut, 1).code == CoreError.NONE and not slot(ctx, dut, 1).error

    def flagged(ctx, dut):
        s1 = slot(ctx, dut, 1)
        assert s1.error and s1.code == CoreError.DRAM
        # want_lsb is for the run slot: slot 1 asked, slot 0 untouched
        assert s1.lsb == RowsState.WANTED and slot(ctx, dut, 0).lsb == RowsState.WANTED

    simulate([
        ({"admit": 1, "admit_job": job(), "admit_banks": 0b01}, None),
        ({"close": 1, "close_state": SlotState.BAD, "close_bad_list": 1, "bad_head": 1}, both),
        ({"release": 1}, None),                                   # run pointer -> slot 1
        ({"admit": 1, "admit_job": job(pq=1), "admit_banks": 0b10}, None),
        ({"dram_error": 1}, not_running),                         # slot 1 is in its intake
        ({"close": 1, "close_state": SlotState.READY}, None),
        ({"run_start": 1, "dram_error": 1, "want_lsb": 1}, None),  # RUN and the error at once
        ({"dram_error": 1}, flagged),
    ])


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config, not None"):
        JobSlots(config=None)
    with pytest.raises(TypeError, match="config must be a Config"):
        JobSlots(config=CFG.attention)
