# amaranth: UnusedElaboratable=no
"""The top-k engine's candidate writer (`hw/topk/radix_writer.py`) in the Amaranth simulator: two
candidate passes announced ahead, their packed beats written row by row into B and C (with the
progress the next pass reads behind: ``written`` a cycle after each write, ``complete`` after the
last), every other beat passed on to ``o``; random input gaps and output backpressure; one lane;
a run cleared in between; bad parameters. Set SPATTEN_SEED to change the seed."""

import os
import random

import pytest
from amaranth import unsigned

from spatten.hw.topk.radix_writer import WRITER_LATENCY, CandidateWriter
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def packet(rng, lanes, rows, last=True):
    """The packed beats of one pass: full beats, the last with 1..lanes."""
    beats = []
    for r in range(rows):
        count = lanes if r < rows - 1 else rng.randrange(1, lanes + 1)
        data = [{"key": rng.randrange(256), "index": rng.randrange(64)} if j < count
                else {"key": 0, "index": 0} for j in range(lanes)]
        beats.append({"data": data, "count": count, "last": int(last and r == rows - 1)})
    return beats


def run_writer(lanes, rows, passes, out_beats, *, gap, stall, seed, clear_first=False):
    """Announces `passes` (list of (buffer, beats)) in setup, then streams their beats and
    `out_beats`; returns (writes per cycle, progress per cycle, run_streams' result)."""
    rng = random.Random(seed)
    dut = CandidateWriter(key_shape=unsigned(8), index_width=6, lanes=lanes, rows=rows)
    writes, progress = [], []

    async def setup(ctx):
        if clear_first:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
        for buffer, _ in passes:
            ctx.set(dut.pass_start, 1)
            ctx.set(dut.pass_buffer, buffer)
            await ctx.tick()
        ctx.set(dut.pass_start, 0)

    def watch(ctx, cycle):
        progress.append(([int(x) for x in ctx.get(dut.written)], ctx.get(dut.complete)))
        if ctx.get(dut.write_en):
            writes.append((cycle, ctx.get(dut.write_buffer), ctx.get(dut.write_row),
                           [int(x) for x in ctx.get(dut.write_data)]))

    beats = [b for _, p in passes for b in p] + out_beats
    res = run_streams(dut, sources={"i": beats}, sinks={"o": len(out_beats)}, gap=gap,
                      stall=stall, rng=rng, setup=setup, watch=watch, quiet=4,
                      max_cycles=40 * len(beats) + 100)
    assert len(res["accepted"]["i"]) == len(beats)
    return writes, progress, res


@pytest.mark.parametrize("lanes,rows", [(4, 5), (1, 6), (16, 3)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_two_passes_then_output(lanes, rows, gap, stall):
    seed = SEED + lanes * 7 + rows + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    first = packet(rng, lanes, rng.randrange(1, rows + 1))
    second = packet(rng, lanes, rng.randrange(1, rows + 1))
    out = packet(rng, lanes, 3)
    writes, progress, res = run_writer(lanes, rows, [(0, first), (1, second)], out, gap=gap,
                                       stall=stall, seed=seed)
    # every candidate beat written, in order, into its buffer's rows from 0
    want = [(0, r, [d["key"] for d in b["data"]]) for r, b in enumerate(first)]
    want += [(1, r, [d["key"] for d in b["data"]]) for r, b in enumerate(second)]
    assert [w[1:] for w in writes] == want
    # written the cycle after each write (WRITER_LATENCY); complete after the pass's last
    for cycle, buffer, row, _ in writes:
        written, complete = progress[cycle + WRITER_LATENCY]
        assert written[buffer] == row + 1
        is_last = row == (len(first) if buffer == 0 else len(second)) - 1
        assert (complete >> buffer & 1) == int(is_last)
    assert progress[-1] == ([len(first), len(second)], 3)
    # the beats of no pass went on to o, untouched
    assert res["beats"]["o"] == out
    if gap == stall == 0:
        acc = res["accepted"]["i"]
        assert [w[0] for w in writes] == acc[:len(first) + len(second)]
        assert res["seen"]["o"] == acc[len(first) + len(second):]     # o is i: no register


def test_pass_start_clears_and_clear_restarts_at_b():
    """Passes alternate B, C, B; announcing a pass clears its buffer's progress (the other's
    stays); after `clear` the next pass writes B whatever the parity of the passes before."""
    from amaranth.sim import Simulator
    rng = random.Random(SEED)
    dut = CandidateWriter(key_shape=unsigned(8), index_width=6, lanes=4, rows=4)
    writes = []

    async def bench(ctx):
        async def announce(buffer):
            ctx.set(dut.pass_start, 1)
            ctx.set(dut.pass_buffer, buffer)
            await ctx.tick()
            ctx.set(dut.pass_start, 0)

        async def stream(beats):
            for b in beats:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, b)
                assert ctx.get(dut.i.ready) and ctx.get(dut.write_en)
                writes.append((ctx.get(dut.write_buffer), ctx.get(dut.write_row)))
                await ctx.tick()
            ctx.set(dut.i.valid, 0)

        def progress():
            return [int(x) for x in ctx.get(dut.written)], ctx.get(dut.complete)

        await announce(0)
        await stream(packet(rng, 4, 2))
        await announce(1)
        await stream(packet(rng, 4, 1))
        assert progress() == ([2, 1], 3)
        await announce(0)
        assert progress() == ([0, 1], 2)
        await stream(packet(rng, 4, 1))
        assert progress() == ([1, 1], 3)
        ctx.set(dut.clear, 1)                   # the next pass would go to C: clear -> B
        await announce(0)
        ctx.set(dut.clear, 0)
        await stream(packet(rng, 4, 3))
        assert progress() == ([3, 1], 3)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert writes == [(0, 0), (0, 1), (1, 0), (0, 0), (0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"key_shape": "k", "index_width": 4, "lanes": 4, "rows": 2}, TypeError, "shape-castable"),
    ({"key_shape": unsigned(8), "index_width": 0, "lanes": 4, "rows": 2}, ValueError,
     "index_width must be at least 1"),
    ({"key_shape": unsigned(8), "index_width": 4, "lanes": 5, "rows": 2}, ValueError,
     "power of two"),
    ({"key_shape": unsigned(8), "index_width": 4, "lanes": 4, "rows": 0}, ValueError,
     "rows must be at least 1"),
])
def test_bad_parameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        CandidateWriter(**kwargs)
