# amaranth: UnusedElaboratable=no
"""cocotb testbench of the DRAM model (`sim/models/dram.py`), run by `tests/test_dram.py` on
Verilator and Icarus through `spatten.sim.infra.testbench.run_testbench` (settings: ``seed``,
``params``, the `DramModel` parameters; `make_top` builds the design from `PARAMS`, the default).

The bench is `spatten.sim.infra.bench.UnitBench`: driver `StreamSource` on ``load`` and ``req``,
monitor `StreamSink` on ``resp`` (it checks the
stream rules and that no X/Z reaches a valid payload), reference `expected_resp`, in-order
checker. Tests: random traffic (every kind of bad request among good ones) with request gaps and
response backpressure at a low bandwidth with stalls, then at full rate (reports simulated cycles
per second); the exact timing of lone requests; the sticky error flag cleared by reset.
"""

from __future__ import annotations

import random
import time

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from spatten.config import MemoryConfig

from ..infra.bench import PERIOD, UnitBench
from ..infra.streams import pack, with_timeout
from ..infra.testbench import DEFAULT_SEED, tb_settings
from ..models.dram import DramModel, expected_resp, image_beats

__all__ = ["PARAMS", "make_top"]

_MEMORY = MemoryConfig()
#: The model under test: the memory side's beat and burst (`MemoryConfig`), 256 beats, 8 requests
#: in flight (the full-rate check of `test_random_traffic` needs 1 + ceil(latency 20 / 4 beats)).
PARAMS = dict(beat_bytes=_MEMORY.beat_bytes, depth_beats=256, max_burst=_MEMORY.max_burst,
              max_outstanding=8, max_latency=64, lfsr_seed=0x2468_ACE1)


def make_top(params: dict | None = None) -> DramModel:
    return DramModel(**(PARAMS if params is None else params))


def random_requests(rng, p, n, bad_rate=0.1, min_beats=1):
    """n (byte address, beats) requests of at least `min_beats` beats; a fraction `bad_rate` of
    them bad, of every kind."""
    B, depth, mb = p["beat_bytes"], p["depth_beats"], p["max_burst"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < bad_rate / 4:
            out.append((rng.randrange(depth) * B + rng.randrange(1, B), 1))       # misaligned
        elif r < bad_rate / 2:
            out.append((rng.randrange(depth) * B, 0))                             # no beats
        elif r < 3 * bad_rate / 4:
            out.append((0, rng.randrange(mb + 1, 1 << mb.bit_length())))          # too long
        elif r < bad_rate:
            beats = rng.randrange(2, mb + 1)
            out.append(((depth - beats + rng.randrange(1, beats)) * B, beats))    # past the end
        else:
            beats = rng.randrange(min_beats, mb + 1)
            out.append((rng.randrange(depth - beats + 1) * B, beats))
    return out


_SETTINGS = tb_settings()
P = dict(PARAMS, **_SETTINGS.get("params", {}))
SEED = int(_SETTINGS.get("seed", DEFAULT_SEED))
TOP = make_top(P)
B = P["beat_bytes"]
COUNTERS = ("requests", "beats_served", "bytes_served", "outstanding", "busy", "error")


def counters(dut) -> dict:
    """The counter outputs as ints (raises ValueError on X/Z)."""
    return {name: int(getattr(dut, name).value) for name in COUNTERS}


class Bench(UnitBench):
    INPUTS = {"req__valid": 0, "load__valid": 0, "resp__ready": 0}


async def start(dut, latency=1, bpc=B, stall=0) -> Bench:
    """Set the model's knobs, reset, check that it is idle with zero counters."""
    dut.latency.value = latency
    dut.bytes_per_cycle.value = bpc
    dut.stall.value = stall
    bench = await Bench.start(dut)
    await ReadOnly()
    got = counters(dut)
    assert got == dict.fromkeys(COUNTERS, 0), f"after reset: {got}"
    assert int(dut.resp__valid.value) == 0 and int(dut.req__ready.value) == 1
    await RisingEdge(dut.clk)
    return bench


async def load(bench, image):
    src = bench.add_source("load", TOP.load_layout)
    await src.send([{"addr": k, "data": w} for k, w in enumerate(image_beats(image, B))])
    src.stop()
    src.valid.value = 0


async def traffic(bench, image, reqs, *, idle, stall_prob, seed):
    """Send `reqs`, collect every response beat, check them and the counters."""
    dut = bench.dut
    want = expected_resp(image, B, P["depth_beats"], P["max_burst"], reqs)
    before = counters(dut)
    src = bench.add_source("req", TOP.req_layout, idle=idle, rng=random.Random(seed))
    sink = bench.add_sink("resp", TOP.resp_layout, stall=stall_prob, rng=random.Random(seed + 1))
    src.send_nowait([{"addr": a, "beats": n} for a, n in reqs])
    t0, w0 = get_sim_time("ns"), time.perf_counter()

    async def collect():
        beats = [await sink.recv() for _ in want]
        return beats, get_sim_time("ns"), time.perf_counter()

    got, t1, w1 = await with_timeout(collect(), dut, 200 + 100 * len(want) + 50 * len(reqs))
    cycles, wall = (t1 - t0) / PERIOD, w1 - w0
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"seed {SEED}: beat {k}: {g} != {w}"
    await ClockCycles(dut.clk, 4)
    await ReadOnly()
    assert int(dut.resp__valid.value) == 0, "extra response beat"
    after = counters(dut)
    good = sum(1 for b in want if not b["error"])
    assert after["requests"] - before["requests"] == len(reqs)
    assert after["beats_served"] - before["beats_served"] == len(want)
    assert after["bytes_served"] - before["bytes_served"] == good * B
    assert after["outstanding"] == after["busy"] == 0
    assert after["error"] == int(good < len(want) or before["error"])
    await RisingEdge(dut.clk)
    sink.stop()
    src.stop()
    dut.resp__ready.value = 0
    dut.req__valid.value = 0
    return cycles, wall


@cocotb.test()
async def test_random_traffic(dut):
    """Random good and bad requests, gaps and backpressure, low bandwidth with stalls; then
    at full rate without gaps or backpressure."""
    rng = random.Random(SEED)
    bench = await start(dut, latency=12, bpc=5, stall=48)
    image = rng.randbytes(P["depth_beats"] * B)
    await load(bench, image)
    reqs = random_requests(rng, P, 150)
    cycles, wall = await traffic(bench, image, reqs, idle=0.2, stall_prob=0.3, seed=SEED)
    dut._log.info("seed %d: %d requests in %d cycles (%.0f cycles/s)", SEED, len(reqs),
                  cycles, cycles / wall)
    # full rate: with max_outstanding >= 1 + ceil(L / n) the beats come back to back
    L, n_min = 20, 4
    assert P["max_outstanding"] >= 1 + -(-L // n_min)
    dut.latency.value = L
    dut.bytes_per_cycle.value = B
    dut.stall.value = 0
    reqs = random_requests(rng, P, 400, bad_rate=0.0, min_beats=n_min)
    cycles, wall = await traffic(bench, image, reqs, idle=0.0, stall_prob=0.0, seed=SEED + 7)
    beats = sum(n for _, n in reqs)
    dut._log.info("full rate: %d beats in %d cycles (%.0f cycles/s)", beats, cycles,
                  cycles / wall)
    assert beats + L <= cycles <= beats + L + 3, (beats, L, cycles)


@cocotb.test()
async def test_lone_request_timing(dut):
    """Accepted in cycle t with latency L: beats exactly in cycles t + L .. t + L + n - 1."""
    bench = await start(dut)
    image = bytes(range(256)) * (P["depth_beats"] * B // 256)
    await load(bench, image)
    dut.resp__ready.value = 1
    for L, n in ((1, 1), (1, 5), (4, 3), (23, P["max_burst"])):
        dut.latency.value = L
        dut.req__payload.value = pack(TOP.req_layout, {"addr": 5 * B, "beats": n})
        dut.req__valid.value = 1
        seen, t_acc = [], None
        for c in range(L + n + 10):
            await ReadOnly()
            if t_acc is None and int(dut.req__valid.value) and int(dut.req__ready.value):
                t_acc = c
            if int(dut.resp__valid.value):
                seen.append(c)
            await RisingEdge(dut.clk)
            if t_acc is not None:
                dut.req__valid.value = 0
        assert t_acc == 0, t_acc
        assert seen == [t_acc + L + k for k in range(n)], (L, n, seen)
    dut.resp__ready.value = 0


@cocotb.test()
async def test_error_and_reset(dut):
    """A bad request sets the sticky error flag; good requests still work; reset clears
    the flag and the counters."""
    rng = random.Random(SEED + 3)
    bench = await start(dut, latency=3)
    image = rng.randbytes(P["depth_beats"] * B)
    await load(bench, image)
    reqs = [(B, 2), (3, 1), (2 * B, 1)]
    await traffic(bench, image, reqs, idle=0.0, stall_prob=0.0, seed=SEED)
    await ReadOnly()
    assert int(dut.error.value) == 1
    await RisingEdge(dut.clk)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await ReadOnly()
    assert counters(dut) == dict.fromkeys(COUNTERS, 0)
    await RisingEdge(dut.clk)
    await traffic(bench, image, [(0, 3)], idle=0.0, stall_prob=0.0, seed=SEED)
    await ReadOnly()
    assert int(dut.error.value) == 0
