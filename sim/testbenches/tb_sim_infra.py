"""cocotb testbench of the simulation infrastructure itself (run by tests/test_sim_infra.py).

The design under test (built in the test) is an "add a constant" stream stage:

    i: In(stream.Signature(in_layout(lanes, width)))    {data: lanes x signed(width), kind, last}
    o: Out(stream.Signature(out_layout(lanes, width)))  {data: data + offset (wrapping), kind,
                                                         count: beat index in its packet, last}
    glitch: In(1)   when high, the stalled output's `count` changes (breaks the stream rule)

one register stage (one beat per cycle, latency 1). The layouts live here so that the RTL and this
testbench pack with the same objects. Settings (`spatten.sim.infra.testbench.run_testbench`):
lanes, width, offset, packets, seed; the negative tests run only with ``negative`` true: they must
fail. The bench is `spatten.sim.infra.bench.UnitBench`.
"""

from __future__ import annotations

import random

import cocotb
from amaranth.hdl import signed
from amaranth.lib import data, enum
from cocotb.triggers import ClockCycles

from ..infra.bench import UnitBench
from ..infra.testbench import DEFAULT_SEED, tb_settings

COUNT_WIDTH = 8


class Kind(enum.Enum, shape=2):
    HEAD = 0
    BODY = 1
    TAIL = 3


def in_layout(lanes: int, width: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(width), lanes), "kind": Kind,
                              "last": 1})


def out_layout(lanes: int, width: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(width), lanes), "kind": Kind,
                              "count": COUNT_WIDTH, "last": 1})


def expected(beats: list[dict], offset: int, width: int) -> list[dict]:
    """The transaction-level model of the design."""
    half = 1 << (width - 1)
    out, count = [], 0
    for b in beats:
        out.append({"data": [((x + offset + half) % (2 * half)) - half for x in b["data"]],
                    "kind": b["kind"], "count": count % (1 << COUNT_WIDTH), "last": b["last"]})
        count = 0 if b["last"] else count + 1
    return out


_SETTINGS = tb_settings()
_NEGATIVE = bool(_SETTINGS.get("negative", False))
LANES = _SETTINGS.get("lanes", 4)
WIDTH = _SETTINGS.get("width", 8)
OFFSET = _SETTINGS.get("offset", 3)
PACKETS = _SETTINGS.get("packets", 12)
SEED = _SETTINGS.get("seed", DEFAULT_SEED)


def random_packets(rng: random.Random, packets: int) -> list[list[dict]]:
    lo, hi = -(1 << (WIDTH - 1)), (1 << (WIDTH - 1)) - 1
    edge = [lo, hi, 0, -1]
    result = []
    for _ in range(packets):
        n = rng.randint(1, 6)
        result.append([{"data": [rng.choice(edge) if rng.random() < 0.2 else rng.randint(lo, hi)
                                 for _ in range(LANES)],
                        "kind": rng.choice(list(Kind)), "last": int(i == n - 1)}
                       for i in range(n)])
    return result


class Bench(UnitBench):
    # i__valid: a test that failed mid-beat may have left it high
    INPUTS = {"glitch": 0, "i__valid": 0, "o__ready": 0}


async def setup(dut):
    await Bench.start(dut)


async def run_traffic(dut, seed, idle_prob, stall_prob, offset=OFFSET, packets=PACKETS):
    """Send random packets, receive them packet by packet and check every beat in order
    (after `setup`)."""
    rng = random.Random(seed)
    dut._log.info("seed %d, idle_prob %.2f, stall_prob %.2f", seed, idle_prob, stall_prob)
    bench = Bench(dut, ("i", in_layout(LANES, WIDTH)), ("o", out_layout(LANES, WIDTH)),
                  idle=idle_prob, stall=stall_prob, seed=seed)
    source, sink = bench.src, bench.sink
    sent = random_packets(rng, packets)
    for packet in sent:
        source.send_nowait(packet)
    start = cocotb.utils.get_sim_time("ns")
    for i, packet in enumerate(sent):
        got = await sink.recv_packet()
        want = expected(packet, offset, WIDTH)
        assert got == want, f"packet {i}: got {got}, expected {want}"
    await source.wait_idle()
    cycles = round((cocotb.utils.get_sim_time("ns") - start) / 10)
    beats = sum(len(p) for p in sent)
    assert sink.received == source.sent == beats, (sink.received, source.sent, beats)
    bench.stop()
    return source, sink, cycles, beats


@cocotb.test()
async def test_back_to_back(dut):
    """No gaps, no backpressure: every beat checked, one beat per cycle."""
    await setup(dut)
    _, sink, cycles, beats = await run_traffic(dut, SEED, 0.0, 0.0)
    assert sink.stall_cycles == 0
    # Latency 1 and one beat per cycle: anything slower means the drivers lose cycles.
    assert cycles <= beats + 2, f"{beats} beats took {cycles} cycles"


@cocotb.test()
async def test_gaps_and_backpressure(dut):
    """Random idle cycles on the input and random backpressure on the output."""
    await setup(dut)
    for k, (idle, stall) in enumerate([(0.3, 0.0), (0.0, 0.5), (0.4, 0.4)]):
        source, sink, _, _ = await run_traffic(dut, SEED + 100 + 10 * k, idle, stall)
        assert idle == 0 or source.idle_cycles > 0, "no idle cycle was inserted"
        assert stall == 0 or sink.stall_cycles > 0, "no stall happened"


@cocotb.test(skip=not _NEGATIVE)
async def test_negative_wrong_expectation(dut):
    """Expects offset + 1: must fail with a beat mismatch."""
    await setup(dut)
    await run_traffic(dut, SEED, 0.2, 0.2, offset=OFFSET + 1)


@cocotb.test(skip=not _NEGATIVE)
async def test_negative_stream_rule(dut):
    """The design changes a stalled payload (glitch=1): the sink must flag it."""
    await setup(dut)
    dut.glitch.value = 1
    bench = Bench(dut)
    source = bench.add_source("i", in_layout(LANES, WIDTH))
    sink = bench.add_sink("o", out_layout(LANES, WIDTH), stall=0.5, rng=random.Random(SEED))
    for packet in random_packets(random.Random(SEED), PACKETS):
        await source.send(packet)
    await ClockCycles(dut.clk, 4)
    assert sink.stall_cycles > 0
