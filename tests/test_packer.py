# amaranth: UnusedElaboratable=no
"""BeatPacker against a transaction model and a cycle model, in Amaranth's simulator.

Seeds: ``SPATTEN_SEED`` overrides the fixed default; each test's seed is it plus a number
derived from the test's id (stable across runs), printed.
"""

import os
import random
import zlib

import pytest
from amaranth.hdl import signed, unsigned

from spatten.hw.common.packer import BeatPacker
from spatten.sim.infra.amaranth_tb import run_streams, to_py

ALL_LANES = (1, 2, 4, 8, 16, 32)
SEED = int(os.environ.get("SPATTEN_SEED", "2021"))


# ---------------------------------------------------------------------------------------------
# Models


def pack(beats, lanes):
    """Transaction model: items of each packet re-cut into beats of `lanes` items."""
    out, items = [], []
    for b in beats:
        items += b["data"][:b["count"]]
        if b["last"]:
            cuts = [items[k:k + lanes] for k in range(0, len(items), lanes)] or [[]]
            for n, cut in enumerate(cuts):
                out.append({"data": cut + [0] * (lanes - len(cut)), "count": len(cut),
                            "last": int(n == len(cuts) - 1)})
            items = []
    return out


class CycleModel:
    """The timing of the BeatPacker docstring, one call of `step` per clock cycle."""

    def __init__(self, lanes):
        self.lanes = lanes
        self.items = []          # residual, at most `lanes` items
        self.flush = False       # residual is the tail of a packet
        self.o = None            # output register: payload dict, or None when not valid

    def outputs(self, o_ready):
        """(i.ready, o payload or None) in the current cycle, before the clock edge."""
        free = self.o is None or o_ready
        return free and not self.flush, self.o

    def step(self, i_beat, o_ready):
        """Clock edge. `i_beat`: the payload presented with i.valid high, or None."""
        lanes = self.lanes
        i_ready, _ = self.outputs(o_ready)
        if not (self.o is None or o_ready):
            return

        def beat(items, last):
            return {"data": items + [0] * (lanes - len(items)), "count": len(items),
                    "last": int(last)}

        if self.flush:
            self.o, self.items, self.flush = beat(self.items, True), [], False
        elif i_beat is not None and i_ready:
            items = self.items + i_beat["data"][:i_beat["count"]]
            if i_beat["last"] and len(items) <= lanes:
                self.o, self.items = beat(items, True), []
            elif len(items) > lanes:
                self.o, self.items = beat(items[:lanes], False), items[lanes:]
                self.flush = bool(i_beat["last"])
            else:
                self.o, self.items = None, items
        else:
            self.o = None


class PipelinedCycleModel:
    """The BeatPacker: a register stage S in front of a one-stage packer M (`CycleModel`)."""

    def __init__(self, lanes):
        self.s = None            # the beat held in S, or None
        self.m = CycleModel(lanes)

    def outputs(self, o_ready):
        m_ready, out = self.m.outputs(o_ready)
        return self.s is None or m_ready, out

    def step(self, i_beat, o_ready):
        i_ready, _ = self.outputs(o_ready)
        m_ready, _ = self.m.outputs(o_ready)
        took = self.s is not None and m_ready
        self.m.step(self.s, o_ready)
        if took:
            self.s = None
        if i_beat is not None and i_ready:
            self.s = i_beat


# ---------------------------------------------------------------------------------------------
# Harness: the DUT and the cycle model in lockstep


def run_packer(dut, beats, *, rng, gap=0.0, stall=0.0):
    """Feeds `beats` through `run_streams` (which checks the stream rules on o); checks every
    cycle against the cycle model (i.ready, o.valid, o.payload) and the beats taken from o
    against `pack`. Returns ([(cycle, payload)] taken from o, [i.ready per cycle])."""
    lanes = dut.lanes
    n_out = len(pack(beats, lanes))
    model = PipelinedCycleModel(lanes)
    sent = 0                    # beats dut.i has taken

    def watch(ctx, cycle):
        nonlocal sent
        i_ready, o_valid, o_ready = (ctx.get(dut.i.ready), ctx.get(dut.o.valid),
                                     ctx.get(dut.o.ready))
        m_ready, m_out = model.outputs(o_ready)
        assert i_ready == m_ready, f"cycle {cycle}: i.ready {i_ready}, model {m_ready}"
        assert o_valid == (m_out is not None), f"cycle {cycle}: o.valid {o_valid}"
        if o_valid:
            payload = to_py(ctx.get(dut.o.payload))
            assert payload == m_out, f"cycle {cycle}: o {payload}, model {m_out}"
        presenting = ctx.get(dut.i.valid)
        model.step(beats[sent] if presenting else None, o_ready)
        sent += presenting and i_ready

    res = run_streams(dut, sources={"i": beats}, sinks={"o": n_out}, rng=rng, gap=gap,
                      stall=stall, watch=watch,
                      max_cycles=50 + 3 * (len(beats) + n_out) * (1 + int(10 * max(gap, stall))))
    assert sent == len(beats), f"{sent}/{len(beats)} beats in after the last output"
    assert res["beats"]["o"] == pack(beats, lanes)
    return list(zip(res["seen"]["o"], res["beats"]["o"], strict=True)), res["ready"]["i"]


def mk(lanes, counts_lasts, rng, width=8):
    """Beats from (count, last) pairs; lanes from `count` up carry garbage (must be ignored)."""
    return [{"data": [rng.randrange(1, 1 << width) for _ in range(lanes)], "count": c,
             "last": int(last)} for c, last in counts_lasts]


def random_packets(rng, lanes, n_beats):
    pairs = []
    for _ in range(n_beats):
        r = rng.random()
        c = 0 if r < 0.15 else lanes if r < 0.3 else rng.randrange(lanes + 1)
        pairs.append((c, rng.random() < 0.25))
    pairs.append((rng.randrange(lanes + 1), True))
    return mk(lanes, pairs, rng)


@pytest.fixture
def seed(request):
    s = SEED + zlib.crc32(request.node.name.encode()) % 100_000
    print(f"seed {s} (SPATTEN_SEED={SEED})")
    return s


# ---------------------------------------------------------------------------------------------
# Tests


def test_exact_timing_lanes_4():
    """The cycles stated in the docstring, with o never stalled and the input always valid."""
    rng = random.Random(0)
    beats = mk(4, [(3, 0), (3, 1),      # 6 items: full beat at t+2, remainder at t+3
                   (0, 1),              # empty packet: one beat count 0, last 1
                   (2, 0), (2, 1),      # 4 items: one full beat with last, no empty beat
                   (1, 0), (1, 0), (1, 1),
                   (4, 0), (0, 0), (0, 1),  # a full beat waits until the packet's end is known
                   (4, 0), (1, 1)], rng)    # ... or until an item beyond it arrives
    outputs, ready_log = run_packer(BeatPacker(unsigned(8), 4), beats, rng=rng)
    # Accepts in cycles 0, 1, 2, (3: i.ready low while M flushes the split last beat of cycle 1
    # and S holds the beat of cycle 2), 4..14; the last split (cycle 14) is followed by nothing.
    assert ready_log == [1, 1, 1, 0] + [1] * 13
    assert [(c, p["count"], p["last"]) for c, p in outputs] == \
        [(3, 4, 0), (4, 2, 1), (5, 0, 1), (7, 4, 1), (10, 3, 1), (13, 4, 1), (15, 4, 0), (16, 1, 1)]


@pytest.mark.parametrize("lanes", ALL_LANES)
def test_packet_edge_cases(lanes, seed):
    rng = random.Random(seed)
    L = lanes
    pairs = [
        (0, 1),                                  # empty packet
        (0, 0), (0, 0), (0, 1),                  # empty beats, then an empty last beat
        (L, 1),                                  # one full beat
        (L, 0), (L, 0), (0, 1),                  # multiple of lanes, empty last beat
        (L, 0), (L, 1),                          # multiple of lanes
        (1, 0), (L, 1),                          # split last beat: L and 1
        (L - 1 if L > 1 else 1, 0), (L, 1),      # split last beat (L - 1 residual)
        (1, 1), (1, 0), (0, 0), (1, 1),          # tiny packets
    ]
    pairs += [(1, 0)] * (2 * L - 1) + [(1, 1)]  # 2L items one by one
    beats = mk(L, pairs, rng)
    run_packer(BeatPacker(unsigned(8), L), beats, rng=rng)
    run_packer(BeatPacker(unsigned(8), L), beats, rng=rng, gap=0.3, stall=0.4)


@pytest.mark.parametrize("lanes,n", [(1, 150), (2, 150), (4, 150), (8, 120), (16, 100), (32, 80)])
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.5, 0.1), (0.1, 0.6), (0.4, 0.4)])
def test_random_packets(lanes, n, gap, stall, seed):
    rng = random.Random(seed)
    beats = random_packets(rng, lanes, n)
    outputs, ready_log = run_packer(BeatPacker(unsigned(8), lanes), beats, rng=rng, gap=gap,
                                    stall=stall)
    if gap == stall == 0.0:
        # Unstalled: i.ready is low only while M flushes a split last beat and S already holds
        # the next beat (so not after the final beat).
        splits, fill = 0, 0
        for n, b in enumerate(beats):
            total = fill + b["count"]
            if b["last"]:
                splits += total > lanes and n < len(beats) - 1
                fill = 0
            else:
                fill = total - lanes if total > lanes else total
        assert ready_log.count(0) == splits


def test_signed_payload(seed):
    rng = random.Random(seed)
    lanes = 4
    beats = [{"data": [rng.randrange(-8, 8) for _ in range(lanes)],
              "count": rng.randrange(lanes + 1), "last": int(rng.random() < 0.3)}
             for _ in range(60)]
    beats[-1]["last"] = 1
    run_packer(BeatPacker(signed(4), lanes), beats, rng=rng, gap=0.2, stall=0.2)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"payload_shape": unsigned(8), "lanes": 0}, ValueError, "power of two"),
    ({"payload_shape": unsigned(8), "lanes": 12}, ValueError, "not 12"),
    ({"payload_shape": unsigned(8), "lanes": "4"}, TypeError, "integer"),
    ({"payload_shape": 3.5, "lanes": 4}, TypeError, "shape-castable"),
    ({"payload_shape": unsigned(0), "lanes": 4}, ValueError, "at least 1 bit"),
])
def test_parameter_validation(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        BeatPacker(**kwargs)


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_zero_above_count(lanes, seed):
    """With zero_above_count=True (input lanes from count up are zero, as the zero eliminator
    makes them) the packer behaves exactly as the masking one, stalls included."""
    rng = random.Random(seed)
    beats = random_packets(rng, lanes, 100)
    for b in beats:
        b["data"] = [x if j < b["count"] else 0 for j, x in enumerate(b["data"])]
    run_packer(BeatPacker(unsigned(8), lanes, zero_above_count=True), beats, rng=rng,
               gap=0.3, stall=0.3)
    with pytest.raises(TypeError, match="bool"):
        BeatPacker(unsigned(8), lanes, zero_above_count=1)
