# amaranth: UnusedElaboratable=no
"""Value pruning's serializer (`hw/topk/radix_serializer.py`) in the Amaranth simulator: flagged
rows of P keys in, their kept keys out as (index, key) pairs S a beat, lowest lane first; random
input gaps and output backpressure; rows that keep none, all, one; one lane; S = P; the beat formed
in the cycle the row is presented (latency 0); bad parameters. Set SPATTEN_SEED to change the
seed."""

import os
import random

import pytest
from amaranth import unsigned

from spatten.hw.topk.radix_serializer import SERIALIZER_LATENCY, KeptSerializer
from spatten.sim.infra.amaranth_tb import run_streams

SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


def expected(rows, lanes, out_lanes):
    beats = []
    for r in rows:
        kept = [{"index": r["row"] * lanes + j, "key": r["keys"][j]}
                for j in range(lanes) if r["keep"] >> j & 1]
        chunks = [kept[i:i + out_lanes] for i in range(0, len(kept), out_lanes)] or [[]]
        for n, chunk in enumerate(chunks):
            beats.append({"data": chunk + [{"index": 0, "key": 0}] * (out_lanes - len(chunk)),
                          "count": len(chunk),
                          "last": int(r["last"] and n == len(chunks) - 1)})
    return beats


def random_rows(rng, lanes, rows, n):
    full = (1 << lanes) - 1
    return [{"keys": [rng.randrange(1, 256) for _ in range(lanes)],
             "keep": rng.choice([0, full, 1 << rng.randrange(lanes), rng.randrange(1 << lanes)]),
             "row": rng.randrange(rows), "last": rng.randrange(2)} for _ in range(n)]


@pytest.mark.parametrize("lanes,out_lanes", [(8, 4), (16, 4), (4, 1), (1, 1), (4, 4)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5), (0.3, 0.3)])
def test_serializer(lanes, out_lanes, gap, stall):
    seed = SEED + lanes * 3 + out_lanes + int(gap * 10) + int(stall * 100)
    print("seed", seed)
    rng = random.Random(seed)
    rows = random_rows(rng, lanes, 6, 40)
    dut = KeptSerializer(key_shape=unsigned(8), lanes=lanes, out_lanes=out_lanes, rows=6,
                         index_width=8)
    want = expected(rows, lanes, out_lanes)
    res = run_streams(dut, sources={"i": rows}, sinks={"o": len(want)}, gap=gap, stall=stall,
                      rng=rng, quiet=4)
    assert res["beats"]["o"] == want
    if gap == stall == 0:
        # a row's beats leave on consecutive cycles, the last in the cycle the row is taken
        per_row = [max(1, -(-bin(r["keep"]).count("1") // out_lanes)) for r in rows]
        lasts = [sum(per_row[:i + 1]) - 1 + SERIALIZER_LATENCY for i in range(len(rows))]
        assert res["seen"]["o"] == list(range(len(want)))
        assert res["accepted"]["i"] == lasts


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"lanes": 4, "out_lanes": 8}, ValueError, "out_lanes must not exceed lanes"),
    ({"lanes": 6, "out_lanes": 2}, ValueError, "power of two"),
    ({"lanes": 4, "out_lanes": 2, "index_width": 2}, ValueError, "index_width must be at least"),
    ({"lanes": 4, "out_lanes": 2, "rows": 0}, ValueError, "rows must be at least 1"),
])
def test_bad_parameters(kwargs, exc, msg):
    args = {"key_shape": unsigned(8), "rows": 4, "index_width": 6, **kwargs}
    with pytest.raises(exc, match=msg):
        KeptSerializer(**args)
