# amaranth: UnusedElaboratable=no
"""The top-k engine's output (`hw/topk/radix_output.py`) and compaction path
(`hw/topk/radix_compactor.py`) in the Amaranth simulator: packed (key, index) beats become (index,
value) beats (the sign flipped back, lanes above count zero), the empty packet on request;
keep-flagged rows become full beats of the kept elements in order; random input gaps and output
backpressure; exact latencies (OUTPUT_LATENCY, compactor_latency); one lane; extreme values; bad
parameters. Set SPATTEN_SEED to change the seed."""

import os
import random

import pytest
from amaranth import unsigned

from spatten.hw.topk.radix_compactor import Compactor, compactor_latency
from spatten.hw.topk.radix_output import OUTPUT_LATENCY, ValueOutput
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


# ------------------------------------------------------------------------------- ValueOutput


@pytest.mark.parametrize("lanes,width", [(4, 8), (1, 6), (16, 16)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_values(lanes, width, gap, stall):
    seed = SEED + lanes + width + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    key_width, index_width = width + 2, 7
    dut = ValueOutput(value_width=width, key_width=key_width, index_width=index_width,
                      lanes=lanes)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    beats, want = [], []
    for _ in range(40):
        count = rng.choice([lanes, 0, rng.randrange(lanes + 1)])
        values = [rng.choice([lo, hi, 0, -1, rng.randrange(lo, hi + 1)]) for _ in range(count)]
        indices = [rng.randrange(1 << index_width) for _ in range(count)]
        pad = lanes - count
        beats.append({"data": [{"key": (v & ((1 << width) - 1)) ^ (1 << (width - 1)),
                                "index": i} for v, i in zip(values, indices, strict=True)]
                      + [{"key": 0, "index": 0}] * pad,       # zero above count (the packer)
                      "count": count, "last": rng.randrange(2)})
        want.append({"index": indices + [0] * pad, "value": values + [0] * pad, "count": count,
                     "last": beats[-1]["last"]})
    res = run_streams(dut, sources={"i": beats}, sinks={"o": len(beats)}, gap=gap, stall=stall,
                      rng=rng, quiet=4)
    assert res["beats"]["o"] == want
    if gap == stall == 0:
        assert res["seen"]["o"] == [t + OUTPUT_LATENCY for t in res["accepted"]["i"]]


def test_empty_packets():
    dut = ValueOutput(value_width=8, key_width=8, index_width=4, lanes=4)
    rng = random.Random(SEED)
    res = run_streams(dut, sources={"empty": [0] * 5}, sinks={"o": 5}, gap=0.3, stall=0.3,
                      rng=rng, quiet=4)
    assert res["beats"]["o"] == [{"index": [0] * 4, "value": [0] * 4, "count": 0,
                                  "last": 1}] * 5


# -------------------------------------------------------------------------------- Compactor


def compacted(rows, lanes):
    """Output beats of a packet stream: the kept elements regrouped, `lanes` a beat."""
    out, pending = [], []
    for r in rows:
        pending += [d for j, d in enumerate(r["data"]) if r["keep"] >> j & 1]
        while len(pending) > lanes:             # a full beat leaves once an element follows it
            out.append({"data": pending[:lanes], "count": lanes, "last": 0})
            pending = pending[lanes:]
        if r["last"]:
            out.append({"data": pending + [0] * (lanes - len(pending)), "count": len(pending),
                        "last": 1})
            pending = []
    return out


@pytest.mark.parametrize("lanes", [1, 4, 16])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_compactor(lanes, gap, stall):
    seed = SEED + lanes + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    full = (1 << lanes) - 1
    rows = []
    for _ in range(12):                         # packets: none kept, all kept, random
        kind = rng.choice(["none", "all", "random", "random"])
        for _ in range(rng.randrange(1, 5)):
            keep = {"none": 0, "all": full}.get(kind, rng.randrange(1 << lanes))
            rows.append({"data": [rng.randrange(1, 256) for _ in range(lanes)], "keep": keep,
                         "last": 0})
        rows[-1]["last"] = 1
    want = compacted(rows, lanes)
    dut = Compactor(unsigned(8), lanes)
    res = run_streams(dut, sources={"i": rows}, sinks={"o": len(want)}, gap=gap, stall=stall,
                      rng=rng, quiet=6, max_cycles=50 * len(rows))
    assert res["beats"]["o"] == want
    if gap == stall == 0:
        # the first output beat: compactor_latency after the row that completes it
        acc, kept = res["accepted"]["i"], 0
        for r, t in zip(rows, acc, strict=True):
            kept += bin(r["keep"]).count("1")
            if kept > lanes or r["last"]:
                assert res["seen"]["o"][0] == t + compactor_latency(lanes)
                break
    assert dut.latency == compactor_latency(lanes)


@pytest.mark.parametrize("make,exc,msg", [
    (lambda: ValueOutput(value_width=1, key_width=8, index_width=4, lanes=4), ValueError,
     "value_width must be from 2"),
    (lambda: ValueOutput(value_width=8, key_width=6, index_width=4, lanes=4), ValueError,
     "key_width must be at least 8"),
    (lambda: ValueOutput(value_width=8, key_width=8, index_width=4, lanes=5), ValueError,
     "power of two"),
    (lambda: Compactor(unsigned(8), 3), ValueError, "power of two"),
    (lambda: Compactor("x", 4), TypeError, "shape-castable"),
])
def test_bad_parameters(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()
