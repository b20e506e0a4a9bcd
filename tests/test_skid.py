# amaranth: UnusedElaboratable=no
"""SkidBuffer: nothing lost, duplicated or reordered under random gaps and backpressure;
latency 1; and (formally) the output obeys the stream rules for all time.

Seeds: ``SPATTEN_SEED`` overrides the fixed default; every randomized test prints its seed.
"""

import os
import random

import pytest
from amaranth.hdl import unsigned

from spatten.hw.common.skid import SkidBuffer
from spatten.sim.infra.amaranth_tb import run_streams
from spatten.sim.infra.formal import check_stream_rules, formal_tools_missing

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def run(beats, gap, stall, seed):
    """(beats taken from o, cycles i accepted a beat, cycles o gave one); `run_streams` also
    checks the stream rules on o every cycle."""
    res = run_streams(SkidBuffer(unsigned(8)), sources={"i": beats}, sinks={"o": len(beats)},
                      gap=gap, stall=stall, seed=seed, max_cycles=20 * len(beats) + 50)
    return res["beats"]["o"], res["accepted"]["i"], res["seen"]["o"]


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.4, 0.4)])
def test_in_order_under_stress(gap, stall):
    seed = SEED + int(gap * 10) + 100 * int(stall * 10)
    print(f"seed {seed} (SPATTEN_SEED={SEED})")
    beats = [random.Random(seed).randrange(256) for _ in range(300)]
    got, accepted_at, seen_at = run(beats, gap, stall, seed)
    assert got == beats
    if gap == stall == 0.0:
        assert accepted_at == list(range(300))
        assert seen_at == [c + 1 for c in accepted_at]      # latency 1, one beat per cycle


def test_bad_shape():
    with pytest.raises(TypeError, match="shape-castable"):
        SkidBuffer("nope")


@pytest.mark.skipif(formal_tools_missing() is not None, reason=formal_tools_missing() or "")
def test_stream_rules_proved():
    r = check_stream_rules("rules_skid", SkidBuffer(unsigned(4)), "o", mode="prove", depth=4)
    print(f"{r.name}: {r.status} in {r.seconds:.1f} s")
    assert r.status == "PASS"              # check_stream_rules raises unless PASS; said here too
