# amaranth: UnusedElaboratable=no
"""ZeroEliminator and PrefixCount against a pure-Python model, in Amaranth's simulator."""

import itertools
import random

import pytest
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from spatten.config import zero_eliminator_latency
from spatten.hw.common.zero_elim import PrefixCount, ZeroEliminator
from spatten.sim.infra.amaranth_tb import run_streams

ALL_LANES = (1, 2, 4, 8, 16, 32)


# ---------------------------------------------------------------------------------------------
# Models


def compact(data, keep, lanes):
    """Kept elements in lane order, zero-padded to `lanes`, and their count."""
    kept = [d for j, d in enumerate(data) if keep >> j & 1]
    return kept + [0] * (lanes - len(kept)), len(kept)


def expected_outputs(beats, lanes):
    out = []
    for b in beats:
        d, c = compact(b["data"], b["keep"], lanes)
        out.append({"data": d, "count": c, "last": b["last"]})
    return out


# ---------------------------------------------------------------------------------------------
# Cycle-by-cycle stream harness


def run_stream(dut, beats, n_out, *, rng=None, gap=0.0, stall=0.0, max_cycles=None):
    """Feeds `beats` into dut.i (random idle cycles with probability `gap`), takes `n_out` beats
    from dut.o (ready low with probability `stall`), through `run_streams`, which checks the
    stream rules on dut.o on every cycle. Returns (accept cycles, [(cycle, payload dict)],
    [i.ready per cycle])."""
    rng = rng or random.Random(0)
    max_cycles = max_cycles or 20 + 4 * (len(beats) + n_out) * (1 + int(10 * max(gap, stall)))
    res = run_streams(dut, sources={"i": beats}, sinks={"o": n_out}, rng=rng, gap=gap,
                      stall=stall, max_cycles=max_cycles)
    assert len(res["accepted"]["i"]) == len(beats), "outputs complete before every input went in"
    out = list(zip(res["seen"]["o"], res["beats"]["o"], strict=True))
    return res["accepted"]["i"], out, res["ready"]["i"]


def random_beats(rng, lanes, n, width=8, keep_p=None):
    beats = []
    for _ in range(n):
        p = rng.random() if keep_p is None else keep_p
        keep = sum((rng.random() < p) << j for j in range(lanes))
        beats.append({"data": [rng.randrange(1 << width) for _ in range(lanes)],
                      "keep": keep, "last": rng.randrange(2)})
    return beats


@pytest.fixture
def seed(request):
    s = random.randrange(1 << 32)
    print(f"seed={s}")
    return s


# ---------------------------------------------------------------------------------------------
# PrefixCount


@pytest.mark.parametrize("lanes", ALL_LANES)
def test_prefix_count(lanes, seed):
    rng = random.Random(seed)
    dut = PrefixCount(lanes)
    if lanes <= 8:
        vectors = range(1 << lanes)
    else:
        vectors = [0, (1 << lanes) - 1, 0x5555_5555 & ((1 << lanes) - 1)]
        vectors += [rng.randrange(1 << lanes) for _ in range(300)]

    async def tb(ctx):
        for flags in vectors:
            ctx.set(dut.flags, flags)
            bits = [flags >> j & 1 for j in range(lanes)]
            assert [int(x) for x in ctx.get(dut.prefix)] == \
                [sum(bits[:j]) for j in range(lanes)], f"flags={flags:#x}"
            assert ctx.get(dut.total) == sum(bits), f"flags={flags:#x}"

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()


# ---------------------------------------------------------------------------------------------
# ZeroEliminator


def test_latency_formula():
    assert [ZeroEliminator(unsigned(4), n).latency for n in ALL_LANES] == [1, 2, 2, 3, 3, 4]
    assert [zero_eliminator_latency(n) for n in ALL_LANES] == [1, 2, 2, 3, 3, 4]


@pytest.mark.parametrize("lanes", ALL_LANES)
def test_latency_and_throughput_unstalled(lanes, seed):
    rng = random.Random(seed)
    dut = ZeroEliminator(unsigned(8), lanes)
    beats = random_beats(rng, lanes, 24)
    accepted, outputs, ready_log = run_stream(dut, beats, len(beats), rng=rng)
    assert accepted == list(range(len(beats))), "not one beat per cycle"
    assert all(ready_log)
    assert [c for c, _ in outputs] == [a + dut.latency for a in accepted]
    assert [p for _, p in outputs] == expected_outputs(beats, lanes)


def edge_beats(lanes, rng):
    full = (1 << lanes) - 1
    keeps = [full, 0, full, 0, 0, full]
    keeps += [1 << j for j in range(lanes)]                       # a single kept lane
    keeps += [full ^ (1 << j) for j in range(lanes)]              # a single empty lane
    keeps += [full >> (lanes // 2), full << (lanes // 2) & full]  # low half, high half
    return [{"data": [rng.randrange(1, 256) for _ in range(lanes)], "keep": k,
             "last": n % 3 == 0} for n, k in enumerate(keeps)]


@pytest.mark.parametrize("lanes", ALL_LANES)
def test_edge_cases_stalled(lanes, seed):
    rng = random.Random(seed)
    dut = ZeroEliminator(unsigned(8), lanes)
    beats = edge_beats(lanes, rng)
    _, outputs, _ = run_stream(dut, beats, len(beats), rng=rng, gap=0.3, stall=0.3)
    assert [p for _, p in outputs] == expected_outputs(beats, lanes)


@pytest.mark.parametrize("lanes,n", [(1, 150), (2, 150), (4, 150), (8, 120), (16, 100), (32, 60)])
@pytest.mark.parametrize("gap,stall", [(0.5, 0.1), (0.1, 0.6), (0.4, 0.4)])
def test_random_with_gaps_and_backpressure(lanes, n, gap, stall, seed):
    rng = random.Random(seed)
    dut = ZeroEliminator(unsigned(8), lanes)
    beats = random_beats(rng, lanes, n)
    _, outputs, _ = run_stream(dut, beats, len(beats), rng=rng, gap=gap, stall=stall)
    assert [p for _, p in outputs] == expected_outputs(beats, lanes)


def test_signed_payload(seed):
    rng = random.Random(seed)
    lanes = 8
    dut = ZeroEliminator(signed(5), lanes)
    beats = [{"data": [rng.randrange(-16, 16) for _ in range(lanes)],
              "keep": rng.randrange(1 << lanes), "last": 0} for _ in range(40)]
    _, outputs, _ = run_stream(dut, beats, len(beats), rng=rng, gap=0.2, stall=0.2)
    assert [p for _, p in outputs] == expected_outputs(beats, lanes)


def test_wide_payload_exhaustive_keep_4():
    lanes = 4
    dut = ZeroEliminator(unsigned(20), lanes)
    rng = random.Random(1)
    beats = [{"data": [rng.randrange(1 << 20) for _ in range(lanes)], "keep": k, "last": k & 1}
             for k, _ in itertools.product(range(1 << lanes), range(2))]
    _, outputs, _ = run_stream(dut, beats, len(beats), rng=rng, stall=0.3)
    assert [p for _, p in outputs] == expected_outputs(beats, lanes)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"payload_shape": unsigned(8), "lanes": 0}, ValueError, "power of two"),
    ({"payload_shape": unsigned(8), "lanes": 3}, ValueError, "not 3"),
    ({"payload_shape": unsigned(8), "lanes": 64}, ValueError, "not 64"),
    ({"payload_shape": unsigned(8), "lanes": True}, TypeError, "integer"),
    ({"payload_shape": unsigned(8), "lanes": 4.0}, TypeError, "integer"),
    ({"payload_shape": "wide", "lanes": 4}, TypeError, "shape-castable"),
    ({"payload_shape": unsigned(0), "lanes": 4}, ValueError, "at least 1 bit"),
])
def test_parameter_validation(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        ZeroEliminator(**kwargs)
    if "lanes" in kwargs and kwargs["payload_shape"] == unsigned(8):
        with pytest.raises(exc, match=msg):
            PrefixCount(kwargs["lanes"])
