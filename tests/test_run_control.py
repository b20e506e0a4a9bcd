# amaranth: UnusedElaboratable=no
"""The query pipeline's run control (`hw/attention/run_control.py`): a good run (registers sampled
as it starts and held, every result out with its tag and ``last`` on the final one, the counters)
under random gaps on the results and backpressure on ``o``; every bad register with its error
code, the drain and the single error beat; a load beyond the buffer; loads before runs.
Set SPATTEN_SEED to fix the seed."""

import random

import pytest
from amaranth.sim import Simulator

from spatten.config import AttentionConfig
from spatten.hw.attention.run_control import ErrorCode, RunControl, RunState, run_registers
from spatten.sim.infra.amaranth_tb import run_streams, to_py
from spatten.sim.infra.testbench import pick_seed

CFG = AttentionConfig(qk_mults=16, pv_mults=16, capacity=64, softmax_lanes=4, topk_lanes=8)
GOOD = {"n": 30, "d_log2": 4, "k_v": 12, "renorm": 1, "shift": 3, "scale": 1234,
        "post_shift": 7, "pq": 1, "tau": 40000, "fill_mid": 1, "bank": 0, "v_wait": 1}


@pytest.fixture
def seed():
    return pick_seed()


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def set_registers(ctx, dut, registers):
    for name, value in registers.items():
        ctx.set(getattr(dut, name), value)


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.5)])
@pytest.mark.parametrize("bank", [0, 1])
def test_a_good_run(gap, stall, bank, seed):
    rng = random.Random(seed)
    count = 9
    results = [{"data": [rng.randrange(-(1 << 15), 1 << 15) for _ in range(CFG.pv_mults)],
                "psum": rng.randrange(1 << 16)} for _ in range(count)]
    finals = [rng.randrange(1 << 16) for _ in range(count)]
    registers = {**GOOD, "bank": bank}
    dut = RunControl(config=CFG)
    log = {"states": [], "refetch": 0, "macs0": 1000, "tags": 0}

    def watch(ctx, cycle):
        # the first query starts the run in cycle 0; the issuer takes one query a cycle (the
        # results never overtake them); the registers change as soon as the run has started
        # (the run must hold its own)
        set_registers(ctx, dut, registers if cycle == 0 else
                      {name: 0 for name in registers})
        ctx.set(dut.query_valid, cycle == 0)
        ctx.set(dut.accepted, min(count, cycle))
        ctx.set(dut.last_seen, cycle >= count)
        ctx.set(dut.unit_macs, log["macs0"] + 7 * cycle)
        # the final passes' tags are there before their results (the gate writes a tag as the
        # pass's row leaves the softmax, long before prob x V's result)
        ctx.set(dut.finals.valid, log["tags"] < count)
        ctx.set(dut.finals.payload, finals[min(log["tags"], count - 1)])
        if ctx.get(dut.finals.ready):
            assert ctx.get(dut.finals.valid)
            log["tags"] += 1
        pulse = int(rng.random() < 0.2)
        ctx.set(dut.refetch, pulse)
        state = ctx.get(dut.state)
        log["states"].append(state)
        log["refetch"] += pulse
        assert ctx.get(dut.start) == ctx.get(dut.start_ok) == (cycle == 0)
        assert ctx.get(dut.busy) == (state != RunState.IDLE)
        if state == RunState.RUN:
            assert ctx.get(dut.macs) == 7 * cycle
            params = to_py(ctx.get(dut.params))
            assert {k: params[k] for k in ("n", *run_registers(CFG), "v_wait")} == \
                {k: v for k, v in registers.items() if k != "bank"}
            assert params["prune"] == 1 and params["offset"] == bank * CFG.capacity // 2

    async def finish(ctx):
        assert ctx.get(dut.state) == RunState.IDLE and ctx.get(dut.done)
        assert not ctx.get(dut.error) and ctx.get(dut.error_code) == ErrorCode.NONE
        assert ctx.get(dut.queries) == count
        run_cycles = sum(s == RunState.RUN for s in log["states"])
        assert ctx.get(dut.cycles) == run_cycles and ctx.get(dut.refetched) == log["refetch"]

    res = run_streams(dut, sources={"results": results}, sinks={"o": count},
                      gap=gap, stall=stall, rng=rng, watch=watch, quiet=5, finish=finish)
    assert res["beats"]["o"] == [
        {"data": r["data"], "tag": t, "last": int(i == count - 1), "error": 0}
        for i, (r, t) in enumerate(zip(results, finals, strict=True))]
    assert res["seen"]["o"][-1] >= count, "the final output after the final query"


BAD = [
    ({"n": 0}, ErrorCode.N_ZERO),
    ({"n": CFG.capacity + 1}, ErrorCode.N_OVER_CAPACITY),
    ({"d_log2": 2}, ErrorCode.BAD_HEAD_DIM),
    ({"d_log2": 5}, ErrorCode.BAD_HEAD_DIM),             # d = 32 > M = 16
    ({"k_v": 0}, ErrorCode.K_V_ZERO),
    ({"bank": 1, "n": CFG.capacity // 2 + 1}, ErrorCode.BAD_BANK),
]


@pytest.mark.parametrize("bad,code", BAD, ids=[c.name + str(i) for i, (_, c) in enumerate(BAD)])
def test_a_bad_run_drains_then_one_error_beat(bad, code):
    dut = RunControl(config=CFG)

    async def bench(ctx):
        set_registers(ctx, dut, {**GOOD, **bad})
        ctx.set(dut.query_valid, 1)
        assert ctx.get(dut.start) and not ctx.get(dut.start_ok)
        await ctx.tick()
        ctx.set(dut.query_valid, 0)
        assert ctx.get(dut.state) == RunState.DRAIN and ctx.get(dut.busy)
        assert ctx.get(dut.error) and ctx.get(dut.error_code) == code
        for _ in range(3):                     # the run's queries are still being swallowed
            assert not ctx.get(dut.o.valid)
            await ctx.tick()
        ctx.set(dut.last_seen, 1)
        ctx.set(dut.o.ready, 0)
        for _ in range(2):                     # the error beat waits for o.ready
            beat = to_py(ctx.get(dut.o.payload))
            assert ctx.get(dut.o.valid) and beat["error"] == beat["last"] == 1
            await ctx.tick()
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        assert ctx.get(dut.state) == RunState.IDLE and ctx.get(dut.done)
        assert ctx.get(dut.error) and ctx.get(dut.error_code) == code, "held after the run"
        assert not ctx.get(dut.o.valid) and not ctx.get(dut.busy)

    simulate(dut, bench)


def test_bank_needs_an_even_buffer():
    cfg = AttentionConfig(qk_mults=8, pv_mults=8, capacity=9, softmax_lanes=1, topk_lanes=1)
    dut = RunControl(config=cfg)

    async def bench(ctx):
        set_registers(ctx, dut, {**GOOD, "n": 2, "d_log2": 3, "k_v": 1, "bank": 1})
        ctx.set(dut.query_valid, 1)
        await ctx.tick()
        assert ctx.get(dut.error_code) == ErrorCode.BAD_BANK

    simulate(dut, bench)


def test_loads_come_first_and_a_load_beyond_the_buffer_is_an_error():
    dut = RunControl(config=CFG)

    async def bench(ctx):
        set_registers(ctx, dut, GOOD)
        ctx.set(dut.query_valid, 1)
        ctx.set(dut.loading, 1)
        for load_error, error_after in ((0, 0), (1, 1), (0, 1)):
            ctx.set(dut.load_error, load_error)
            assert not ctx.get(dut.start), "a run starts while a load is taken"
            await ctx.tick()
            assert ctx.get(dut.state) == RunState.IDLE and ctx.get(dut.error) == error_after
        assert ctx.get(dut.error_code) == ErrorCode.BAD_LOAD and not ctx.get(dut.done)
        ctx.set(dut.loading, 0)
        ctx.set(dut.load_error, 0)
        assert ctx.get(dut.start) and ctx.get(dut.start_ok)
        await ctx.tick()
        assert ctx.get(dut.state) == RunState.RUN and not ctx.get(dut.error)
        assert ctx.get(dut.error_code) == ErrorCode.NONE

    simulate(dut, bench)


def test_named_states_and_bad_parameters():
    assert [s.name for s in RunState] == ["IDLE", "RUN", "DRAIN"]
    with pytest.raises(TypeError, match="config must be an AttentionConfig, not 1"):
        RunControl(config=1)
    with pytest.raises(TypeError):
        RunControl(CFG)                                     # keyword-only
