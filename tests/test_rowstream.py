# amaranth: UnusedElaboratable=no
"""Widen and Narrow: rows keep their elements, order, lengths and ends under random gaps and
backpressure; one input beat a cycle when unstalled."""

import os
import random

import pytest
from amaranth.hdl import unsigned

from spatten.hw.common.rowstream import Narrow, Widen
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def rows_to_beats(rows, lanes):
    beats = []
    for row in rows:
        if not row:
            beats.append({"data": [0] * lanes, "count": 0, "last": 1})
        for lo in range(0, len(row), lanes):
            chunk = row[lo:lo + lanes]
            beats.append({"data": chunk + [0] * (lanes - len(chunk)), "count": len(chunk),
                          "last": int(lo + lanes >= len(row))})
    return beats


def beats_to_rows(beats):
    rows, cur = [], []
    for b in beats:
        assert 0 <= b["count"] <= len(b["data"])
        cur += b["data"][:b["count"]]
        if b["last"]:
            rows.append(cur)
            cur = []
        else:
            assert b["count"] == len(b["data"]), "a partial beat that is not a row's last"
    assert not cur
    return rows


def random_rows(rng, count, max_len, allow_empty):
    rows = []
    for _ in range(count):
        n = rng.randrange(0 if allow_empty else 1, max_len + 1)
        rows.append([rng.randrange(256) for _ in range(n)])
    return rows


@pytest.mark.parametrize("cls,a,b", [(Widen, 4, 16), (Widen, 1, 4), (Widen, 4, 4),
                                     (Narrow, 16, 4), (Narrow, 4, 1), (Narrow, 8, 8)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_rows_survive(cls, a, b, gap, stall):
    seed = SEED + a * 31 + b
    print("seed", seed)
    rng = random.Random(seed)
    rows = random_rows(rng, 40, 50, allow_empty=cls is Narrow)
    rows += [[7] * a, [8] * b, [9]]                      # exact multiples and a single element
    dut = cls(unsigned(8), in_lanes=a, out_lanes=b)
    beats = rows_to_beats(rows, a)
    want = rows_to_beats(rows, b)
    res = run_streams(dut, sources={"i": beats}, sinks={"o": len(want)}, gap=gap, stall=stall,
                      seed=seed)
    assert beats_to_rows(res["beats"]["o"]) == rows
    assert len(res["beats"]["o"]) == len(want)
    if gap == stall == 0.0 and cls is Widen:
        # one input beat per cycle: the input is never held up
        assert res["accepted"]["i"] == list(range(len(beats)))
    elif gap == stall == 0.0:
        # one output beat per cycle after the first register: the output is never idle
        assert res["seen"]["o"] == list(range(1, len(want) + 1))


def test_bad_parameters():
    with pytest.raises(ValueError, match="out_lanes >= in_lanes"):
        Widen(unsigned(8), in_lanes=8, out_lanes=4)
    with pytest.raises(ValueError, match="power of two"):
        Narrow(unsigned(8), in_lanes=6, out_lanes=2)
    with pytest.raises(TypeError, match="shape-castable"):
        Widen("x", in_lanes=1, out_lanes=2)


@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.5), (0.0, 0.7)])
def test_fork_every_copy_once(gap, stall):
    from spatten.hw.common.rowstream import Fork

    seed = SEED + int(stall * 10)
    print("seed", seed)
    beats = [random.Random(seed).randrange(256) for _ in range(200)]
    dut = Fork(unsigned(8), ways=3)
    res = run_streams(dut, sources={"i": beats}, sinks={"o0": 200, "o1": 200, "o2": 200},
                      gap=gap, stall=stall, seed=seed)
    for w in range(3):
        assert res["beats"][f"o{w}"] == beats
    if gap == stall == 0.0:
        assert res["accepted"]["i"] == list(range(200))
