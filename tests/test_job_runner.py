"""The running job (hw/memory/job_runner.py) in the Amaranth simulator, its slot played by a model
of the job slots: a READY job starts, its Q rows (and only those of its slot) go to the pipeline,
the pipeline's outputs to ``o`` up to the last, then the slot is released once its scans are
over; a BAD job's rows are dropped and its error beat follows `ERROR_BEAT_LATENCY` cycle after
the last condition holds; the status counters; under random gaps and backpressure."""

import os

import pytest

from spatten.config import AttentionConfig, Config
from spatten.hw.memory.job_runner import ERROR_BEAT_LATENCY, JobRunner
from spatten.hw.memory.job_slots import CoreError, RowsState, SlotState, slot_layout
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))
CFG = Config(attention=AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4,
                                       topk_lanes=8))
M = CFG.attention.qk_mults


def rows(n, slot, first=0):
    return [{"data": [first + i] * M, "last": int(i == n - 1), "slot": slot} for i in range(n)]


def results(n, error=0):
    return [{"data": [7 * i] * CFG.attention.pv_mults, "tag": i, "last": int(i == n - 1),
             "error": error if i == n - 1 else 0} for i in range(n)]


def simulate(state, q_rows, outs, *, code=CoreError.NONE, scans_until=0, gap=0.0, stall=0.0,
             seed=0, q_beats=None, o_beats=None):
    dut = JobRunner(config=CFG)
    slot = {"state": state, "error": int(code != CoreError.NONE), "code": code,
            "queries_taken": 1, "lsb": RowsState.WANTED, "v_prefetch": RowsState.IN}
    log = {"run_start": [], "release": [], "rows_ready": [], "o_valid": []}

    def put(ctx):
        ctx.set(dut.slot, slot_layout(CFG).const(slot))

    async def setup(ctx):
        put(ctx)
        ctx.set(dut.slot_index, 1)

    taken = [0]
    pending = {}

    def watch(ctx, cycle):
        ctx.set(dut.rows_empty, taken[0] == len(q_rows))     # as the ring's count: registered
        if cycle == scans_until:
            slot["lsb"] = RowsState.IN         # the K LSB scan of the slot is over
        slot.update(pending)                   # the events of the cycle before, as JobSlots
        pending.clear()
        put(ctx)
        if ctx.get(dut.run_start):
            log["run_start"].append(cycle)
            pending["state"] = SlotState.RUN
        if ctx.get(dut.release):
            log["release"].append(cycle)
            pending["state"] = SlotState.FREE
        log["o_valid"].append(ctx.get(dut.o.valid))
        taken[0] += ctx.get(dut.rows.valid) and ctx.get(dut.rows.ready)

    res = run_streams(dut, sources={"rows": q_rows, "results": outs},
                      sinks={"q": len([r for r in q_rows if r["slot"] == 1])
                             if q_beats is None else q_beats,
                             "o": len(outs) if o_beats is None else o_beats},
                      gap=gap, stall=stall, seed=seed, setup=setup, watch=watch,
                      quiet=scans_until + 12,
                      finish=None)
    return dut, res, log


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.4)])
def test_a_ready_job_runs(gap, stall):
    seed = SEED + int(10 * gap)
    print("seed", seed)
    q_rows = rows(5, 1)
    _, res, log = simulate(SlotState.READY, q_rows, results(5), gap=gap, stall=stall,
                           seed=seed, scans_until=40)
    assert res["beats"]["q"] == [{"data": r["data"], "last": r["last"]} for r in q_rows]
    assert res["beats"]["o"] == results(5)
    assert log["run_start"] == [0]
    # released after the last output, not before the slot's scans are over
    assert len(log["release"]) == 1 and log["release"][0] >= 40


def test_a_bad_job_drops_its_rows_then_its_error_beat():
    q_rows = rows(3, 1)
    dut, res, log = simulate(SlotState.BAD, q_rows, [], code=CoreError.BAD_HEAD, q_beats=0,
                             o_beats=1, scans_until=0)
    assert res["beats"]["q"] == []
    assert res["beats"]["o"] == [{"data": [0] * CFG.attention.pv_mults, "tag": 0, "last": 1,
                                  "error": 1}]
    # the rows leave one a cycle from cycle 0 (the slot's scans are over at cycle 0); the last
    # one gone, the error beat follows
    last_row = res["accepted"]["rows"][-1]
    assert res["seen"]["o"][0] == last_row + 1 + ERROR_BEAT_LATENCY
    assert log["run_start"] == [] and len(log["release"]) == 1


def test_other_slots_rows_wait():
    """Rows of the other slot at the ring's head are not the running job's: nothing goes."""
    _, res, _ = simulate(SlotState.READY, rows(2, 0), [], q_beats=0, o_beats=0)
    assert res["accepted"]["rows"] == []


def test_bad_parameters():
    with pytest.raises(TypeError, match="config must be a Config"):
        JobRunner(config=CFG.attention)
